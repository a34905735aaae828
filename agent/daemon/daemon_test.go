package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testHome makes an agent home with a software identity (low work factor) and returns it opened.
func testHome(t *testing.T) (string, *custody.Custody) {
	t.Helper()
	home, err := os.MkdirTemp("", "cx") // the control socket path must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	pass := filepath.Join(home, "pass")
	if err := os.WriteFile(pass, []byte("test passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := custody.Options{Openers: map[string]keystore.OpenFunc{software.Scheme: software.Open}, Logger: quietLogger()}
	uri := software.Scheme + ":" + filepath.Join(home, custody.KeysDir) + "?passphrase-source=file:" + pass + "&work-factor=10"
	c, err := custody.Init(context.Background(), home, custody.InitRequest{Keystore: uri, Algorithm: keystore.Ed25519}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return home, c
}

func writeConfig(t *testing.T, path, body string) (*config.Config, string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, digest, err := config.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, digest
}

// TestDaemonWithoutTransports starts a daemon with no transports (no plugin processes) and drives it
// through its control socket: status, a task queued for an unreachable peer, a refused and an accepted
// reload, and a drained shutdown that leaves a sealed, verifying audit log.
func TestDaemonWithoutTransports(t *testing.T) {
	ctx := context.Background()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, "metrics: {address: \"127.0.0.1:0\"}\n")
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	// No process of the agent's uid may read its memory or environment (ADR 0040).
	if dumpable, err := sandbox.Dumpable(); err != nil || dumpable {
		t.Errorf("the daemon's process is dumpable (%v, %v)", dumpable, err)
	}
	sock := filepath.Join(home, ControlFile)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v %v", fi, err)
	}
	var st api.Status
	if err := control.Call(ctx, sock, api.OpStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.AgentID != cust.ID().String() || st.ConfigDigest != digest || st.Keystore != "file" || len(st.Sessions) != 0 ||
		!strings.HasPrefix(st.Metrics, "http://127.0.0.1:") || strings.Join(st.Handlers, ",") != "echo,sha256" {
		t.Fatalf("status %+v", st)
	}

	// A second daemon on the same home is refused before it touches anything.
	if _, err := Start(ctx, Options{Home: home, Config: cfg, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()}); err == nil ||
		!strings.Contains(err.Error(), "is locked by another process") {
		t.Fatalf("second daemon: %v", err)
	}

	// A task for a peer nobody can reach stays pending (recorded, not lost).
	peer, _ := testHome(t)
	peerID := mustID(t, peer)
	var v api.TaskView
	if err := control.Call(ctx, sock, api.OpTaskSubmit, api.SubmitArgs{To: peerID, Handler: "sha256", Input: []byte("x")}, &v); err != nil {
		t.Fatal(err)
	}
	if err := control.Call(ctx, sock, api.OpTaskGet, api.GetArgs{TaskID: v.TaskID, WaitMS: 200}, &v); err != nil || v.State != "pending" {
		t.Fatalf("task after a short wait: %+v %v", v, err)
	}
	err = control.Call(ctx, sock, api.OpTaskGet, api.GetArgs{TaskID: "AAAAAAAAAAAAAAAAAAAAAA"}, nil)
	if control.CodeOf(err) != control.CodeNotFound {
		t.Fatalf("unknown task: %v", err)
	}
	err = control.Call(ctx, sock, api.OpPeersConnect, api.ConnectArgs{Address: "127.0.0.1:1", ID: peerID}, nil)
	if control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), "transport tcp is not configured") {
		t.Fatalf("connect without transports: %v", err)
	}

	// The running daemon vouches for its audit head, and the log holds it (agentctl audit verify).
	var head audit.Head
	if err := control.Call(ctx, sock, api.OpAuditHead, nil, &head); err != nil || head.Seq == 0 {
		t.Fatalf("audit.head: %+v %v", head, err)
	}
	if rep, err := audit.VerifyRunning(filepath.Join(home, AuditDir), cust.Log(), head); err != nil || !rep.Live || rep.LastSeq < head.Seq {
		t.Fatalf("audit log while running, against the daemon's head: %+v %v", rep, err)
	}

	// An invalid configuration is refused and changes nothing.
	if err := os.WriteFile(cfgPath, []byte("handlers: {x: {builtin: nope}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = control.Call(ctx, sock, api.OpConfigReload, nil, nil)
	if control.CodeOf(err) != control.CodeBadRequest || !strings.Contains(err.Error(), "handlers.x.builtin") {
		t.Fatalf("bad reload: %v", err)
	}
	// A valid one is applied: handlers change at once, the metrics address needs a restart.
	writeConfig(t, cfgPath, "metrics: {address: \"127.0.0.1:0\", disabled: true}\nhandlers:\n  echo: {builtin: echo}\n  upper: {exec: {command: /usr/bin/tr, args: [a-z, A-Z]}}\n")
	var rr api.ReloadResult
	if err := control.Call(ctx, sock, api.OpConfigReload, nil, &rr); err != nil {
		t.Fatal(err)
	}
	if strings.Join(rr.Changed, ",") != "handlers.sha256,handlers.upper,metrics" || strings.Join(rr.NeedRestart, ",") != "metrics" ||
		rr.PreviousDigest != digest || rr.Digest == digest {
		t.Fatalf("reload result %+v", rr)
	}
	if err := control.Call(ctx, sock, api.OpStatus, nil, &st); err != nil || strings.Join(st.Handlers, ",") != "echo,upper" || st.Metrics == "" {
		t.Fatalf("status after reload: %+v %v", st, err)
	}

	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := d.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("control socket after shutdown: %v", err)
	}
	rep, err := audit.Verify(filepath.Join(home, AuditDir), cust.Log())
	if err != nil || !rep.Sealed {
		t.Fatalf("audit after shutdown: %+v %v", rep, err)
	}
	want := map[audit.EventType]bool{audit.ConfigLoaded: false, audit.AgentStarted: false, audit.AgentStopped: false, events.TaskSubmitted: false}
	var reloads []string
	err = audit.Query(ctx, filepath.Join(home, AuditDir), audit.Filter{}, func(e audit.Entry) error {
		if _, ok := want[e.Type]; ok {
			want[e.Type] = true
		}
		if e.Type == audit.ConfigChanged {
			reloads = append(reloads, string(e.Outcome))
		}
		if e.Type == events.ControlRequest && (e.Details["uid"] == nil || !strings.HasPrefix(e.Actor, "uid:")) {
			t.Errorf("control request record without the caller's uid: %+v", e.Record)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for typ, seen := range want {
		if !seen {
			t.Errorf("no %s record", typ)
		}
	}
	if strings.Join(reloads, ",") != "failure,success" {
		t.Errorf("config.changed outcomes %v, want failure then success", reloads)
	}
	// The submitted task survives the restart of the daemon (it is in state.db).
	cfg2, digest2, _ := config.LoadConfig(cfgPath)
	d2, err := Start(ctx, Options{Home: home, Config: cfg2, ConfigDigest: digest2, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Shutdown(context.Background())
	if err := control.Call(ctx, sock, api.OpTaskGet, api.GetArgs{TaskID: v.TaskID}, &v); err != nil || v.State != "pending" || v.To != peerID {
		t.Fatalf("task after restart: %+v %v", v, err)
	}
}

func mustID(t *testing.T, home string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(home, custody.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	l, err := identity.DecodeLog(b)
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	return st.ID.String()
}

func TestStartRefusesWrongPluginChecksum(t *testing.T) {
	home, cust := testHome(t)
	plugin := filepath.Join(home, "transport-fake")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\nexit 1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, _ := writeConfig(t, cfgPath, "transports:\n  - name: tcp\n    plugin: "+plugin+"\n    sha256: "+strings.Repeat("ab", 32)+"\n")
	_, err := Start(context.Background(), Options{Home: home, Config: cfg, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "plugin "+plugin) || !strings.Contains(err.Error(), "plugin checksum mismatch") {
		t.Fatalf("err %v", err)
	}
	for _, f := range []string{StateFile, AuditDir, ControlFile} {
		if _, err := os.Stat(filepath.Join(home, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists after a refused start (%v)", f, err)
		}
	}
}

// TestStartRefusesPluginWithoutRequiredSandbox simulates a kernel without Landlock: with the default
// transports[].sandbox (required) the daemon does not start the plugin and says which protection is
// missing and why.
func TestStartRefusesPluginWithoutRequiredSandbox(t *testing.T) {
	home, cust := testHome(t)
	plugin := filepath.Join(home, "transport-fake")
	if err := os.WriteFile(plugin, []byte("#!/bin/sh\nexit 1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	sum, err := host.FileSHA256(plugin)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, _ := writeConfig(t, cfgPath, "transports:\n  - name: tcp\n    plugin: "+plugin+"\n    sha256: "+sum+"\n")
	probe := func() sandbox.Kernel {
		k := sandbox.ProbeKernel()
		k.LandlockABI, k.LandlockErr = 0, "simulated: landlock_create_ruleset: ENOSYS"
		return k
	}
	_, err = Start(context.Background(), Options{Home: home, Config: cfg, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger(), SandboxProbe: probe})
	if !errors.Is(err, sandbox.ErrMissing) || !strings.Contains(err.Error(), "transport tcp") ||
		!strings.Contains(err.Error(), "landlock (simulated: landlock_create_ruleset: ENOSYS)") {
		t.Fatalf("err %v, want the missing landlock named", err)
	}
}

// startOwnAdmin starts a daemon (metrics off) that is its own administrator, shut down when the test ends,
// and returns it with its home, custody and control socket path.
func startOwnAdmin(t *testing.T) (*Daemon, string, *custody.Custody, string) {
	t.Helper()
	ctx := context.Background()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, "metrics: {disabled: true}\nauthorization: {admins: ["+cust.ID().String()+"]}\n")
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(ctx) })
	return d, home, cust, filepath.Join(home, ControlFile)
}
