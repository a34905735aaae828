package host_test

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// attackLog collects the attack plugin's reports (forwarded from its stderr through the host's log).
type attackLog struct {
	mu      sync.Mutex
	results map[string]attackResult
	done    chan struct{}
	once    sync.Once
	inner   slog.Handler
}

type attackResult struct {
	ok    bool
	err   string
	errno syscall.Errno
}

func (h *attackLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *attackLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *attackLog) WithGroup(string) slog.Handler            { return h }
func (h *attackLog) Handle(ctx context.Context, r slog.Record) error {
	switch r.Message {
	case "attack done":
		h.once.Do(func() { close(h.done) })
	case "attack":
		var name string
		var res attackResult
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "attempt":
				name = a.Value.String()
			case "ok":
				res.ok = a.Value.String() == "true"
			case "err":
				res.err = a.Value.String()
			case "errno":
				n, _ := strconv.ParseFloat(a.Value.String(), 64)
				res.errno = syscall.Errno(int(n))
			}
			return true
		})
		h.mu.Lock()
		h.results[name] = res
		h.mu.Unlock()
	}
	return h.inner.Handle(ctx, r)
}

// agentHome is what the test process (standing in for the agent) exposes to a plugin with no sandbox:
// a home with a key event log, a key file, a PIN file, and a control socket that answers every line.
type agentHome struct {
	dir, control, key, pin string
	abstract               string // an abstract unix socket name
	accepted               atomic.Int32
}

func newAgentHome(t *testing.T) *agentHome {
	t.Helper()
	dir := t.TempDir()
	h := &agentHome{dir: dir, control: filepath.Join(dir, "control.sock"), key: filepath.Join(dir, "identity.key"),
		pin: filepath.Join(t.TempDir(), "pin")}
	for p, c := range map[string]string{filepath.Join(dir, "kel.jsonl"): "{}\n", h.key: "secret key", h.pin: "1234"} {
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("unix", h.control)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	h.abstract = "custos-attack-" + strconv.Itoa(os.Getpid()) + "-" + filepath.Base(dir)
	al, err := net.Listen("unix", "@"+h.abstract)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = al.Close() })
	go func() {
		for {
			c, err := al.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			go func() {
				defer c.Close()
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					_, _ = c.Write([]byte("{\"ok\":true}\n"))
				}
			}()
		}
	}()
	return h
}

// runAttack starts the attack plugin with mode and returns its reports once it said it was done.
func runAttack(t *testing.T, mode sandbox.Mode, mod ...func(*host.Config)) (*agentHome, map[string]attackResult, sandbox.Protections) {
	t.Helper()
	home := newAgentHome(t)
	al := &attackLog{results: map[string]attackResult{}, done: make(chan struct{}), inner: hosttest.Logger(t).Handler()}
	cfg := hosttest.Config(t, "tcp", bins["attack"])
	cfg.Logger = slog.New(al)
	cfg.Sandbox = mode
	cfg.Env = []string{"ATTACK_HOME=" + home.dir, "ATTACK_PID=" + strconv.Itoa(os.Getpid()), "ATTACK_CONTROL=" + home.control,
		"ATTACK_CONTROL_STATUS=status", "ATTACK_CONTROL_GRANT=grant", "ATTACK_KEY=" + home.key, "ATTACK_PIN=" + home.pin,
		"ATTACK_ABSTRACT=" + home.abstract}
	for _, m := range mod {
		m(&cfg)
	}
	h := hosttest.Start(t, cfg)
	select { // the attack's last report (a guard, not a timing assertion: the plugin reports within ms)
	case <-al.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the attack plugin did not report that it was done")
	}
	al.mu.Lock()
	defer al.mu.Unlock()
	return home, al.results, h.T.Sandbox()
}

var attempts = []string{"control_status", "control_grant", "read_home", "read_kel", "read_key", "read_pin",
	"read_environ", "read_mem", "ptrace", "exec_sh", "abstract_socket", "capabilities", "write_home"}

// TestSandboxStopsAttacks is the attack test of issue 11: a malicious plugin, launched through the real
// launcher with its checksum, tries from its first instruction to reach everything of the agent's.
// Every attempt fails, each for the reason the sandbox gives.
func TestSandboxStopsAttacks(t *testing.T) {
	home, res, prot := runAttack(t, sandbox.Required)
	want := map[string]syscall.Errno{
		"control_status": syscall.ENOENT, "control_grant": syscall.ENOENT, // not in the plugin's mount namespace
		"read_home": syscall.ENOENT, "read_kel": syscall.ENOENT, "read_key": syscall.ENOENT, "read_pin": syscall.ENOENT,
		"read_environ": syscall.ENOENT, "read_mem": syscall.ENOENT, // no /proc at all
		"ptrace":          syscall.EPERM, // seccomp
		"exec_sh":         syscall.EPERM, // fork refused by seccomp (and there is no /bin/sh in the plugin's root)
		"abstract_socket": syscall.EPERM, // Landlock's abstract unix socket scope
		"capabilities":    syscall.EPERM, // none: bounding set emptied, capset to zero
		"write_home":      syscall.ENOENT,
	}
	for _, a := range attempts {
		r, ok := res[a]
		if !ok {
			t.Errorf("%s: no report", a)
			continue
		}
		if r.ok {
			t.Errorf("%s: succeeded inside the sandbox", a)
			continue
		}
		if r.errno != want[a] {
			t.Errorf("%s: failed with %q (errno %d), want %v", a, r.err, int(r.errno), want[a])
		}
	}
	if n := home.accepted.Load(); n != 0 {
		t.Errorf("the control socket accepted %d connections from the sandboxed plugin", n)
	}
	if _, err := os.Stat(filepath.Join(home.dir, "pwned")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the plugin wrote into the home: %v", err)
	}
	for _, p := range sandbox.All() {
		if p == sandbox.UIDDrop && os.Geteuid() != 0 {
			continue
		}
		if !prot.Has(p) {
			t.Errorf("protection %s not reported (%s)", p, prot)
		}
	}
}

// TestSandboxOffAttacksSucceed is the same attack with the sandbox off: every attempt succeeds, so the
// test above can fail. (As root, which is how CI runs; an unprivileged agent's plugin could still do
// all but what root's powers add.)
func TestSandboxOffAttacksSucceed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the unconfined baseline is measured as root (CI runs as root)")
	}
	home, res, prot := runAttack(t, sandbox.Off)
	for _, a := range attempts {
		r, ok := res[a]
		if !ok {
			t.Errorf("%s: no report", a)
			continue
		}
		if !r.ok {
			t.Errorf("%s: failed without a sandbox: %s", a, r.err)
		}
	}
	if n := home.accepted.Load(); n != 2 {
		t.Errorf("the control socket accepted %d connections, want 2", n)
	}
	if !prot.Off {
		t.Errorf("protections %s, want off", prot)
	}
}

// TestSandboxRequiredProtectionMissing simulates kernels lacking each protection: with sandbox
// "required" the plugin is not started and the error names the protection and why; "best-effort"
// starts it and reports what is missing.
func TestSandboxRequiredProtectionMissing(t *testing.T) {
	full := sandbox.ProbeKernel()
	tests := []struct {
		name    string
		kernel  func(k *sandbox.Kernel)
		missing []string
	}{
		{"no landlock", func(k *sandbox.Kernel) {
			k.LandlockABI, k.LandlockErr = 0, "simulated: landlock_create_ruleset: ENOSYS"
		}, []string{sandbox.Landlock}},
		{"no seccomp", func(k *sandbox.Kernel) { k.SeccompErr = "simulated: prctl: EINVAL" }, []string{sandbox.Seccomp}},
		{"no user namespaces", func(k *sandbox.Kernel) { k.UserNSErr = "simulated: user.max_user_namespaces is 0" },
			[]string{sandbox.UserNS, sandbox.MountNS, sandbox.PIDNS, sandbox.CapsDrop}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := full
			tc.kernel(&k)
			cfg := hosttest.Config(t, "tcp", bins["transport-tcp"])
			cfg.SandboxProbe = func() sandbox.Kernel { return k }
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			tr, err := host.Start(ctx, cfg)
			if err == nil {
				_ = tr.Close()
				t.Fatal("started with a required protection missing")
			}
			var me *sandbox.MissingError
			if !errors.Is(err, sandbox.ErrMissing) || !errors.As(err, &me) {
				t.Fatalf("error %v, want a sandbox.MissingError", err)
			}
			for _, p := range tc.missing {
				if _, ok := me.Missing[p]; !ok {
					t.Errorf("error %q does not name %s", err, p)
				}
			}
			if len(me.Missing) != len(tc.missing) {
				t.Errorf("missing %v, want exactly %v", me.Missing, tc.missing)
			}
			if pids := processesRunning(t, cfg.Path); len(pids) != 0 {
				t.Errorf("plugin processes running: %v", pids)
			}

			cfg.Sandbox = sandbox.BestEffort
			h := hosttest.Start(t, cfg)
			prot := h.T.Sandbox()
			for _, p := range tc.missing {
				if prot.Has(p) {
					t.Errorf("best-effort reports %s, which the kernel lacks (%s)", p, prot)
				}
			}
			if !prot.NoNewPrivs || prot.Off {
				t.Errorf("best-effort protections %s", prot)
			}
		})
	}
}

// capDaemonEnv names the attack plugin's path in the re-executed test binary of
// TestSandboxCapableDaemonDropsUID (and says that it is that child); capDaemonPartial says that the
// child holds CAP_SETUID and CAP_SETGID only.
const (
	capDaemonEnv     = "CUSTOS_TEST_CAP_DAEMON_PLUGIN"
	capDaemonPartial = "CUSTOS_TEST_CAP_DAEMON_PARTIAL"
)

// capDaemonUID is the unprivileged uid (and gid) the re-executed test binary runs as.
const capDaemonUID = 4242

// TestSandboxCapableDaemonDropsUID runs the real launcher as the shipped systemd unit runs the daemon
// (configs/custos.service): an unprivileged uid holding CAP_SETUID, CAP_SETGID and CAP_CHOWN as ambient
// capabilities. The test binary re-executes itself as that daemon (non-dumpable, as the daemon makes
// itself); there, the attack plugin is started with sandbox "required", and again with "best-effort" on
// a simulated kernel without user namespaces. Its process must run as the dedicated account
// (custos-transport, or 65534 when absent), not as the daemon's uid, with no capability, every attack
// failing and uid_drop reported. A daemon with CAP_SETUID and CAP_SETGID but not CAP_CHOWN (the unit as
// it was) is refused with sandbox "required", naming uid_drop and CAP_CHOWN.
func TestSandboxCapableDaemonDropsUID(t *testing.T) {
	if os.Getenv(capDaemonEnv) != "" {
		capDaemon(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("starting a daemon with ambient capabilities needs root (CI runs as root)")
	}
	// The plugin where the daemon's uid can open it (owned by root, like an installed plugin).
	dir, err := os.MkdirTemp("", "cxcap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	plug := filepath.Join(dir, "attack")
	copyFile(t, bins["attack"], plug, 0o755)
	for _, tc := range []struct {
		name string
		caps []uintptr
		env  string
	}{
		{"setuid setgid chown", []uintptr{unix.CAP_SETUID, unix.CAP_SETGID, unix.CAP_CHOWN}, ""},
		{"setuid setgid", []uintptr{unix.CAP_SETUID, unix.CAP_SETGID}, capDaemonPartial + "=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("/proc/self/exe", "-test.run", "^TestSandboxCapableDaemonDropsUID$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), capDaemonEnv+"="+plug, tc.env)
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Credential:  &syscall.Credential{Uid: capDaemonUID, Gid: capDaemonUID, Groups: []uint32{}},
				AmbientCaps: tc.caps,
				Pdeathsig:   syscall.SIGKILL,
			}
			out, err := cmd.CombinedOutput()
			t.Logf("the daemon (uid %d, ambient capabilities %s):\n%s", capDaemonUID, tc.name, out)
			if err != nil {
				t.Fatalf("the daemon's test failed: %v", err)
			}
			if !strings.Contains(string(out), "--- PASS: TestSandboxCapableDaemonDropsUID") {
				t.Fatal("the daemon's test did not pass")
			}
		})
	}
}

// capDaemon is the re-executed side of TestSandboxCapableDaemonDropsUID.
func capDaemon(t *testing.T) {
	if os.Getuid() != capDaemonUID {
		t.Fatalf("running as uid %d, want %d", os.Getuid(), capDaemonUID)
	}
	if err := sandbox.SetNonDumpable(); err != nil { // as the daemon does first thing
		t.Fatal(err)
	}
	if os.Getenv(capDaemonPartial) != "" {
		cfg := hosttest.Config(t, "tcp", bins["attack"])
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		tr, err := host.Start(ctx, cfg)
		if err == nil {
			_ = tr.Close()
			t.Fatal("started without CAP_CHOWN, with sandbox required")
		}
		var me *sandbox.MissingError
		if !errors.As(err, &me) || me.Missing[sandbox.UIDDrop] == "" || !strings.Contains(err.Error(), "without CAP_CHOWN") {
			t.Fatalf("error %v, want a sandbox.MissingError naming uid_drop and CAP_CHOWN", err)
		}
		return
	}
	want := 65534
	if u, err := user.Lookup(sandbox.DefaultUser); err == nil {
		want, _ = strconv.Atoi(u.Uid)
	}
	noUserNS := func(c *host.Config) {
		c.SandboxProbe = func() sandbox.Kernel {
			k := sandbox.ProbeKernel()
			k.UserNSErr = "simulated: user.max_user_namespaces is 0"
			return k
		}
	}
	for _, tc := range []struct {
		name string
		mode sandbox.Mode
		mod  []func(*host.Config)
	}{
		{"required", sandbox.Required, nil},
		{"best-effort without user namespaces", sandbox.BestEffort, []func(*host.Config){noUserNS}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, res, prot := runAttack(t, tc.mode, tc.mod...)
			for _, a := range attempts {
				if r, ok := res[a]; !ok || r.ok {
					t.Errorf("%s: %+v (no report, or succeeded inside the sandbox)", a, r)
				}
			}
			if r := res["capabilities"]; r.errno != syscall.EPERM {
				t.Errorf("capabilities: %+v, want none (EPERM)", r)
			}
			checkPluginUID(t, want)
			if !prot.UIDDrop || prot.UID != want {
				t.Errorf("protections %s (uid_drop %v), want uid_drop with uid %d", prot, prot.UIDDrop, want)
			}
			if d, err := sandbox.Dumpable(); err != nil || d {
				t.Errorf("the daemon is dumpable after starting a plugin (%v, %v)", d, err)
			}
		})
	}
}

// checkPluginUID finds the plugin, this process's only child (the trampoline executed it), and checks
// its host uids in /proc/<pid>/status.
func checkPluginUID(t *testing.T, want int) {
	t.Helper()
	var plugins []int
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		var ppid int
		var uids []string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				uids = strings.Fields(v)
			}
		}
		if ppid != os.Getpid() {
			continue
		}
		plugins = append(plugins, pid)
		for i, u := range uids { // real, effective, saved, filesystem
			if n, _ := strconv.Atoi(u); n != want {
				t.Errorf("plugin pid %d: uid[%d] %d, want the dedicated uid %d (the daemon's uid is %d)", pid, i, n, want, os.Getuid())
			}
		}
	}
	if len(plugins) != 1 {
		t.Fatalf("plugin processes (children of the daemon): %v, want one", plugins)
	}
}
