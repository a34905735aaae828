package host_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/transporttest"
)

var bins map[string]string

func TestMain(m *testing.M) {
	if bin := os.Getenv(capDaemonEnv); bin != "" { // TestSandboxCapableDaemonDropsUID's daemon: no build
		bins = map[string]string{"attack": bin}
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "cxbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = hosttest.Build(dir, "transport-tcp")
	if err == nil {
		var p string
		p, err = hosttest.BuildPath(dir, "evil", "github.com/custos-agent/custos/transports/host/testdata/evil")
		bins["evil"] = p
	}
	if err == nil {
		var p string
		p, err = hosttest.BuildPath(dir, "attack", "github.com/custos-agent/custos/transports/host/testdata/attack")
		bins["attack"] = p
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func tcpHost(t *testing.T, mod ...func(*host.Config)) *hosttest.Host {
	t.Helper()
	cfg := hosttest.Config(t, "tcp", bins["transport-tcp"])
	for _, f := range mod {
		f(&cfg)
	}
	return hosttest.Start(t, cfg)
}

func TestExchangeBothWays(t *testing.T) {
	a, b := tcpHost(t), tcpHost(t)
	ca, cb := hosttest.Pair(t, a, b, "127.0.0.1:0")

	// What each side learns about the other comes from the verified binding.
	if got := cb.PeerAgentID(); got != a.ID {
		t.Errorf("dialer sees peer %s, want %s", got, a.ID)
	}
	if got := ca.PeerAgentID(); got != b.ID {
		t.Errorf("listener sees peer %s, want %s", got, b.ID)
	}
	if ca.Transport() != "tcp" || cb.Transport() != "tcp" {
		t.Errorf("transport names %q %q", ca.Transport(), cb.Transport())
	}
	if !strings.HasPrefix(ca.RemoteAddr(), "127.0.0.1:") {
		t.Errorf("listener's remote address %q", ca.RemoteAddr())
	}
	bb, err := binding.Decode(ca.PeerBinding())
	if err != nil || bb.AgentID != b.ID || !bb.Key.Equal(ca.PeerKey()) {
		t.Errorf("peer binding %+v, %v", bb, err)
	}

	frames := [][]byte{{}, []byte("x"), transporttest.Frame(1024), transporttest.Frame(64 << 10), transporttest.Frame(transports.MaxFrameSize)}
	transporttest.Exchange(t, cb, ca, frames)
	transporttest.Exchange(t, ca, cb, frames)

	ctx := context.Background()
	if err := cb.WriteFrame(ctx, make([]byte, transports.MaxFrameSize+1)); !errors.Is(err, transports.ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v, want ErrFrameTooLarge", err)
	}
	// A clean close reaches the other side as io.EOF, after the frames already sent.
	if err := cb.WriteFrame(ctx, []byte("last")); err != nil {
		t.Fatal(err)
	}
	_ = cb.Close()
	f, err := ca.ReadFrame(ctx)
	if err != nil || string(f) != "last" {
		t.Fatalf("last frame: %q %v", f, err)
	}
	if err := transporttest.ExpectEnd(t, ca, 10*time.Second); !errors.Is(err, io.EOF) {
		t.Errorf("after the peer closed: %v, want io.EOF", err)
	}
	if err := cb.WriteFrame(ctx, []byte("after close")); !errors.Is(err, transports.ErrClosed) {
		t.Errorf("write after close: %v, want ErrClosed", err)
	}
}

func TestWrongExpectedIDRefused(t *testing.T) {
	a, b := tcpHost(t), tcpHost(t)
	other := hosttest.NewAuthority(t).AgentID()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := b.T.Dial(ctx, l.Addrs()[0], other)
	if !errors.Is(err, host.ErrPeerMismatch) {
		t.Fatalf("dial pinning another agent: %v, %v; want ErrPeerMismatch", c, err)
	}
	if !strings.Contains(err.Error(), a.ID) || !strings.Contains(err.Error(), other) {
		t.Errorf("error should name both the peer's and the expected ID: %v", err)
	}
	select {
	case rerr := <-b.Refused:
		if !errors.Is(rerr, host.ErrPeerMismatch) {
			t.Errorf("observer got %v", rerr)
		}
	case <-time.After(5 * time.Second):
		t.Error("observer was not told about the refused peer")
	}
	// The connection was closed on the dialer's side: the listener's end (if it got one) ends.
	if ca, err := l.Accept(ctx); err == nil {
		if err := transporttest.ExpectEnd(t, ca, 10*time.Second); err == nil {
			t.Error("listener's end stayed open")
		}
	}
	if _, err := b.T.Dial(ctx, l.Addrs()[0], ""); err == nil || !strings.Contains(err.Error(), "expected agent ID is required") {
		t.Errorf("dial without a pin: %v", err)
	}
}

// processesRunning lists the PIDs whose executable is path.
func processesRunning(t *testing.T, path string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		if exe, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
}

func TestPluginFileRefused(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/transport-tcp"
	copyFile(t, bins["transport-tcp"], good, 0o755)
	goodSum, err := host.FileSHA256(good)
	if err != nil {
		t.Fatal(err)
	}
	evilSum, err := host.FileSHA256(bins["evil"])
	if err != nil {
		t.Fatal(err)
	}
	loose := dir + "/loose"
	copyFile(t, bins["transport-tcp"], loose, 0o777)
	// Modified after its checksum was configured: one byte appended.
	modified := dir + "/modified"
	copyFile(t, bins["transport-tcp"], modified, 0o755)
	modifiedSum, err := host.FileSHA256(modified)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := os.OpenFile(modified, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mf.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	_ = mf.Close()
	// Owned by another non-root user, who could replace it (issue 12 finding 9).
	foreign := dir + "/foreign"
	copyFile(t, bins["transport-tcp"], foreign, 0o755)
	foreignSum, err := host.FileSHA256(foreign)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(foreign, 4242, 4242); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name    string
		path    string
		sum     string
		wantErr error
		wantMsg []string
	}{
		{"checksum mismatch", good, evilSum, host.ErrChecksum, []string{good, goodSum, evilSum, "not started"}},
		{"relative path", "transport-tcp", goodSum, host.ErrBadPluginFile, []string{"not absolute"}},
		{"unclean path", dir + "/../" + filepathBase(dir) + "/transport-tcp", goodSum, host.ErrBadPluginFile, []string{"not clean"}},
		{"world-writable file", loose, goodSum, host.ErrBadPluginFile, []string{"writable by group or others"}},
		{"bad digest text", good, "abc", nil, []string{"64 hex digits"}},
		{"modified after its checksum was configured", modified, modifiedSum, host.ErrChecksum, []string{modified, modifiedSum, "not started"}},
		{"owned by another user", foreign, foreignSum, host.ErrBadPluginFile, []string{foreign, "owned by uid 4242", "neither root nor the agent's uid"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.path == foreign && os.Geteuid() != 0 {
				t.Skip("giving a file to another user needs root")
			}
			cfg := hosttest.Config(t, "tcp", bins["transport-tcp"])
			cfg.Path, cfg.SHA256 = tc.path, tc.sum
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tr, err := host.Start(ctx, cfg)
			if err == nil {
				_ = tr.Close()
				t.Fatal("started")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if pids := processesRunning(t, tc.path); len(pids) != 0 {
				t.Errorf("plugin processes running from %s: %v", tc.path, pids)
			}
		})
	}
}

func filepathBase(p string) string { return p[strings.LastIndex(p, "/")+1:] }

func TestHostEnvironmentNotInherited(t *testing.T) {
	t.Setenv("CUSTOS_PASSPHRASE", "hunter2-passphrase-secret")
	t.Setenv("CUSTOS_PKCS11_PIN", "98765-pin-secret")
	h := tcpHost(t, func(c *host.Config) { c.Env = []string{"CUSTOS_PLUGIN_NOTE=visible"} })
	pid := h.T.PID()
	if pid == 0 {
		t.Fatal("no plugin PID")
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	allowed := map[string]bool{transports.MagicCookieKey: true, "PLUGIN_MIN_PORT": true, "PLUGIN_MAX_PORT": true,
		"PLUGIN_PROTOCOL_VERSIONS": true, "PLUGIN_CLIENT_CERT": true, "PLUGIN_UNIX_SOCKET_DIR": true, "CUSTOS_PLUGIN_NOTE": true,
		transports.DataFDEnv: true} // the data plane's control socket (a descriptor number)
	seen := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		seen[k] = true
		if !allowed[k] {
			t.Errorf("plugin environment has %q, which the host did not give it", k)
		}
		if strings.Contains(kv, "secret") {
			t.Errorf("plugin environment leaks %q", kv)
		}
	}
	// Proof that this is the plugin's environment, with what the host did pass.
	if !seen[transports.MagicCookieKey] || !seen["CUSTOS_PLUGIN_NOTE"] || !seen["PLUGIN_CLIENT_CERT"] {
		t.Errorf("plugin environment lacks the handshake/AutoMTLS/configured variables: %v", env)
	}
	// Nor does it share the host's stdin.
	if in, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/0", pid)); err != nil || in != "/dev/null" {
		t.Errorf("plugin stdin is %q (%v), want /dev/null", in, err)
	}
}

func TestRestartAfterSIGKILL(t *testing.T) {
	a, b := tcpHost(t), tcpHost(t)
	ca, cb := hosttest.Pair(t, a, b, "127.0.0.1:0")
	transporttest.Exchange(t, cb, ca, [][]byte{[]byte("before")})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addrBefore := l.Addrs()[0]

	oldPID := a.T.PID()
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ev host.RestartEvent
	select {
	case ev = <-a.Restarts:
	case <-time.After(20 * time.Second):
		t.Fatal("no restart within 20s")
	}
	if ev.Restarts != 1 || a.T.Restarts() != 1 || ev.PID == oldPID || ev.PID != a.T.PID() || ev.Cause == nil {
		t.Errorf("restart event %+v (counter %d, old pid %d, pid now %d)", ev, a.T.Restarts(), oldPID, a.T.PID())
	}
	// The old connection died with the process, on both sides.
	if err := transporttest.ExpectEnd(t, ca, 10*time.Second); err == nil {
		t.Error("old connection survived the plugin")
	}
	if err := transporttest.ExpectEnd(t, cb, 10*time.Second); err == nil {
		t.Error("peer's old connection survived")
	}
	// The listener was re-opened where it was, and a new connection works both ways.
	if got := l.Addrs()[0]; got != addrBefore {
		t.Errorf("listener moved from %s to %s", addrBefore, got)
	}
	nb, err := b.T.Dial(ctx, addrBefore, a.ID)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	defer nb.Close()
	na, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	transporttest.Exchange(t, nb, na, [][]byte{[]byte("after"), transporttest.Frame(100 << 10)})
	transporttest.Exchange(t, na, nb, [][]byte{[]byte("back")})
}

// TestCrashReportedWhenRestartFails: a plugin killed while its binary no longer matches the pinned
// checksum cannot be restarted; the crash is still reported at once (Observer.PluginCrashed, with the
// dead PID and the time it was found dead), and no restart is (issue 17: plugin.crashed was written only
// after a successful restart).
func TestCrashReportedWhenRestartFails(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "transport-tcp")
	raw, err := os.ReadFile(bins["transport-tcp"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	a := hosttest.Start(t, hosttest.Config(t, "tcp", bin))
	// The binary changes on disk (an upgrade without re-pinning, or tampering): every relaunch is refused.
	// (A new file renamed over the old one, as a package manager does: the running executable is busy.)
	if err := os.WriteFile(bin+".new", append(raw, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	pid := a.T.PID()
	before := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-a.Crashes:
		if ev.Transport != "tcp" || ev.PID != pid || ev.Cause == nil || ev.At.Before(before) || time.Since(ev.At) > 20*time.Second {
			t.Fatalf("crash event %+v (killed pid %d at %v)", ev, pid, before)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no crash reported within 20s while the restart fails")
	}
	select {
	case f := <-a.StartFailures: // each refused launch is reported (audited as plugin.start_failed)
		if f.Transport != "tcp" || f.Path != bin || f.Attempt != 1 || !errors.Is(f.Err, host.ErrChecksum) {
			t.Fatalf("start failure %+v", f)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the refused restart was not reported")
	}
	select {
	case ev := <-a.Restarts:
		t.Fatalf("restarted with a binary that does not match its checksum: %+v", ev)
	case <-time.After(time.Second):
	}
	// Pinning the new file's checksum (Update) while the plugin is down starts it at once.
	sum, err := host.FileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.T.Update(ctx, bin, sum); err != nil {
		t.Fatalf("update while the plugin is down: %v", err)
	}
	if a.T.PID() == 0 || a.T.PID() == pid {
		t.Fatalf("pid after the update: %d", a.T.PID())
	}
}

// TestUpdateBinary: Transport.Update replaces the plugin binary without restarting the host: a file that
// does not match the given checksum changes nothing; a matching one is started at once, the listener is
// re-opened where it was, the restart is reported as an update (not counted as a restart), and new
// connections work; a new binary that does not start is refused with ErrUpdateFailed and the previous
// binary runs again.
func TestUpdateBinary(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(bins["transport-tcp"])
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) (string, string) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		sum, err := host.FileSHA256(p)
		if err != nil {
			t.Fatal(err)
		}
		return p, sum
	}
	v1, sum1 := write("transport-tcp-1", raw)
	v2, sum2 := write("transport-tcp-2", append(append([]byte(nil), raw...), 0)) // another build: another digest
	broken, sumBroken := write("transport-tcp-broken", []byte("#!/bin/sh\nexit 3\n"))
	a, b := hosttest.Start(t, hosttest.Config(t, "tcp", v1)), tcpHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addr := l.Addrs()[0]
	pid1 := a.T.PID()

	if err := a.T.Update(ctx, v2, sum1); !errors.Is(err, host.ErrChecksum) || a.T.PID() != pid1 {
		t.Fatalf("update with the wrong checksum: %v (pid %d, was %d)", err, a.T.PID(), pid1)
	}
	if err := a.T.Update(ctx, v2, sum2); err != nil {
		t.Fatalf("update: %v", err)
	}
	select {
	case ev := <-a.Restarts:
		if !ev.Updated || ev.SHA256 != sum2 || ev.PreviousSHA256 != sum1 || ev.Path != v2 || ev.PID == pid1 || ev.PID != a.T.PID() {
			t.Fatalf("restart event of the update: %+v (old pid %d)", ev, pid1)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no restart event for the update")
	}
	if a.T.Restarts() != 0 || l.Addrs()[0] != addr {
		t.Fatalf("after the update: %d restarts counted, listener at %s (was %s)", a.T.Restarts(), l.Addrs()[0], addr)
	}
	select {
	case ev := <-a.Crashes:
		t.Fatalf("an update reported as a crash: %+v", ev)
	default:
	}
	nb, err := b.T.Dial(ctx, addr, a.ID)
	if err != nil {
		t.Fatalf("dial after the update: %v", err)
	}
	defer nb.Close()
	na, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer na.Close()
	transporttest.Exchange(t, nb, na, [][]byte{[]byte("after the update")})

	// A binary that does not start: refused, and v2 runs again.
	pid2 := a.T.PID()
	if err := a.T.Update(ctx, broken, sumBroken); !errors.Is(err, host.ErrUpdateFailed) {
		t.Fatalf("update to a binary that does not start: %v", err)
	}
	select {
	case ev := <-a.Restarts:
		if ev.Updated || ev.SHA256 != sum2 || ev.PID == pid2 {
			t.Fatalf("restart after the failed update: %+v", ev)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the previous binary was not started again")
	}
	if l.Addrs()[0] != addr {
		t.Fatalf("listener moved to %s", l.Addrs()[0])
	}
}

func TestBackPressure(t *testing.T) {
	a, b := tcpHost(t), tcpHost(t)
	ca, cb := hosttest.Pair(t, a, b, "127.0.0.1:0")
	frame := transporttest.Frame(256 << 10)
	// Nobody reads on a: the writer must block once the windows and socket buffers are full.
	written := 0
	for ; written < 512; written++ { // 128 MiB would be far beyond every buffer on the path
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := cb.WriteFrame(ctx, frame)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("write %d: %v, want a deadline while the reader is stalled", written, err)
			}
			break
		}
	}
	if written == 512 {
		t.Fatal("writer never blocked: no back-pressure")
	}
	t.Logf("writer blocked after %d frames (%d KiB in flight)", written, written*len(frame)>>10)
	// The reader drains everything in order; then the writer continues.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < written; i++ {
		f, err := ca.ReadFrame(ctx)
		if err != nil || len(f) != len(frame) {
			t.Fatalf("drain %d: %d bytes, %v", i, len(f), err)
		}
	}
	transporttest.Exchange(t, cb, ca, [][]byte{[]byte("still alive")})
}

func TestBindingRenewedBeforeExpiry(t *testing.T) {
	short := func(c *host.Config) {
		a, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Authority = a
	}
	a, b := tcpHost(t, short), tcpHost(t, short)
	time.Sleep(4 * time.Second) // the first bindings have expired by now
	ca, cb := hosttest.Pair(t, a, b, "127.0.0.1:0")
	transporttest.Exchange(t, cb, ca, [][]byte{[]byte("renewed")})
	if _, err := b.Authority.Verify(context.Background(), "tcp", ca.PeerBinding(), ca.PeerKey()); err != nil {
		t.Errorf("binding presented after renewal does not verify: %v", err)
	}
}

func TestMisbehavingPlugin(t *testing.T) {
	tests := []struct {
		mode    string
		op      string // start, listen, dial, read
		wantErr error
		wantMsg string
	}{
		{"badproof", "start", host.ErrPluginMisbehaved, "did not prove possession"},
		{"badname", "start", host.ErrPluginMisbehaved, `says it is transport "udp"`},
		{"dhtserver", "start", host.ErrPluginMisbehaved, "server mode, answering lookups, though the host asked for client mode"},
		{"hangconfigure", "start", context.DeadlineExceeded, "configure"},
		{"badaddr", "listen", host.ErrPluginMisbehaved, "control character"},
		{"manyaddrs", "listen", host.ErrPluginMisbehaved, "1000 addresses"},
		{"nobinding", "dial", host.ErrPluginMisbehaved, "without a peer binding"},
		{"forged", "dial", host.ErrBadBinding, "names another key"},
		{"shortkey", "dial", host.ErrPluginMisbehaved, "peer key of 16 bytes"},
		{"badremote", "dial", host.ErrPluginMisbehaved, "remote address"},
		{"bigbinding", "dial", host.ErrPluginMisbehaved, "peer binding of"},
		{"hangdial", "dial", context.DeadlineExceeded, "dial"},
		{"flood", "read", nil, "without credit"},
		// On the data plane (a socket per connection instead of a gRPC stream).
		{"dataoversize", "read", transports.ErrFrameTooLarge, "5242880 bytes"},
		{"datanoend", "read", transports.ErrDataBroken, "without the end marker"},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := hosttest.Config(t, "tcp", bins["evil"])
			cfg.Env = []string{"EVIL_MODE=" + tc.mode}
			cfg.CallTimeout, cfg.DialTimeout = time.Second, time.Second
			if tc.mode == "dhtserver" { // the agent lacks discover_peers (self.lookup.answer): client mode
				cfg.AnswerLookups = func(context.Context) bool { return false }
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var err error
			tr, serr := host.Start(ctx, cfg)
			if tc.op == "start" {
				err = serr
				if serr == nil {
					_ = tr.Close()
				}
			} else {
				if serr != nil {
					t.Fatalf("start: %v", serr)
				}
				defer tr.Close()
				id := cfg.Authority.(*hosttest.IdentityAuthority).AgentID()
				switch tc.op {
				case "listen":
					_, err = tr.Listen(ctx, "127.0.0.1:0")
				case "dial":
					_, err = tr.Dial(ctx, "127.0.0.1:4000", id)
				case "read":
					var c *host.Conn
					c, err = tr.Dial(ctx, "127.0.0.1:4000", id)
					if err != nil {
						t.Fatalf("dial: %v", err)
					}
					// Not reading (so granting no credit) while the plugin floods: the frames beyond the
					// initial window are a violation that ends the connection.
					time.Sleep(time.Second)
					err = transporttest.ExpectEnd(t, c, 10*time.Second)
				}
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
		})
	}
}

// A plugin that stops answering (SIGSTOP: alive but hung) fails its health check and is replaced.
func TestHungPluginReplaced(t *testing.T) {
	a := tcpHost(t, func(c *host.Config) { c.CallTimeout = 500 * time.Millisecond })
	pid := a.T.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(pid, syscall.SIGCONT) }()
	select {
	case ev := <-a.Restarts:
		if ev.PID == pid || !strings.Contains(ev.Cause.Error(), "health check") {
			t.Errorf("restart event %+v", ev)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("hung plugin not replaced within 20s")
	}
	// The stopped process was killed, not left behind.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			break
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
			break // zombie until reaped: killed
		}
		if time.Now().After(deadline) {
			t.Fatalf("hung plugin process %d still alive", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on the replacement: %v", err)
	}
	_ = l.Close()
}

func TestSupervisor(t *testing.T) {
	s := host.NewSupervisor()
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := hosttest.Config(t, "tcp", bins["transport-tcp"])
	tr, err := s.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second tcp transport: %v", err)
	}
	if got, ok := s.Transport("tcp"); !ok || got != tr {
		t.Errorf("Transport(tcp) = %v, %v", got, ok)
	}
	if n := s.Names(); len(n) != 1 || n[0] != "tcp" {
		t.Errorf("names %v", n)
	}
	if r := s.Restarts(); r["tcp"] != 0 {
		t.Errorf("restarts %v", r)
	}
	pid := tr.PID()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Dial(ctx, "127.0.0.1:1", "x"); !errors.Is(err, host.ErrUnavailable) {
		t.Errorf("dial after close: %v", err)
	}
	if len(processesRunning(t, bins["transport-tcp"])) > 0 {
		// Other tests may run plugins from the same binary; check this PID only.
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
				t.Errorf("plugin %d still running after Close", pid)
			}
		}
	}
	if _, err := s.Start(ctx, cfg); !errors.Is(err, host.ErrUnavailable) {
		t.Errorf("start after close: %v", err)
	}
}

// TestNoDiscoveryOnTCP: a transport without a DHT says so (ErrNoDiscovery) for puts and lookups.
func TestNoDiscoveryOnTCP(t *testing.T) {
	a := tcpHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.T.PutRecord(ctx, "/custos/x", []byte("r")); !errors.Is(err, host.ErrNoDiscovery) {
		t.Errorf("put on tcp: %v, want ErrNoDiscovery", err)
	}
	if _, err := a.T.FindRecord(ctx, "/custos/x", time.Second); !errors.Is(err, host.ErrNoDiscovery) {
		t.Errorf("find on tcp: %v, want ErrNoDiscovery", err)
	}
}
