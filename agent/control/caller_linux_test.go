package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/custos-agent/custos/agent/rbac"
)

// runHelper starts the test binary as a control-socket client (helperMain) with an empty environment,
// as a transport plugin is started; started, if set, sees the helper's pid before the helper may call.
// It returns what the calling process printed.
func runHelper(t *testing.T, exe string, cred *syscall.Credential, mode, sock, op string, started func(pid int)) helperResult {
	t.Helper()
	cmd := exec.Command(exe, helperArg, mode, sock, op)
	cmd.Env = []string{}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if started != nil {
		started(cmd.Process.Pid)
	}
	_, _ = io.WriteString(in, "go\n")
	_ = in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %s: %v\n%s", mode, err, errOut.String())
	}
	var res helperResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.PID == 0 {
		t.Fatalf("helper %s printed %q (%v)\nstderr: %s", mode, out.String(), err, errOut.String())
	}
	return res
}

// The control socket serves people, not plugins (issue 11): a caller that is a transport plugin process, or
// descends from one, is refused before its request is read, with a reason naming the plugin, and the refusal
// is reported to the audit hook with the caller's pid. Callers that are not in a plugin's process tree,
// started the same way, are served.
func TestRefusesPluginProcessesAndDescendants(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var pmu sync.Mutex
	var plugins []int
	register := func(pid int) {
		pmu.Lock()
		plugins = append(plugins, pid)
		pmu.Unlock()
	}
	var ran atomic.Int32
	path, recs, mu := start(t, func(c *Config) {
		c.RefuseCaller = RefusePluginProcesses(func() []int {
			pmu.Lock()
			defer pmu.Unlock()
			return append([]int(nil), plugins...)
		})
		// Stands in for grant.issue / key.rotate: a mutating operation that must not run for a plugin.
		c.Ops["grant"] = Op{Permission: rbac.CtlGrant, Mutating: true, Fn: func(context.Context, rbac.Cred, json.RawMessage) (any, error) {
			ran.Add(1)
			return map[string]bool{"issued": true}, nil
		}}
	})

	cases := []struct {
		name     string
		mode     string
		register bool
		refused  bool
		why      string // %d: the registered pid
	}{
		{"the plugin process itself", "call", true, true, "is transport plugin process %d"},
		{"a grandchild of the plugin process", "spawn", true, true, "descends from transport plugin process %d"},
		{"a process outside every plugin's tree", "call", false, false, ""},
		{"a grandchild outside every plugin's tree", "spawn", false, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := ran.Load()
			var registered int
			res := runHelper(t, exe, nil, c.mode, path, "grant", func(pid int) {
				if c.register {
					registered = pid
					register(pid)
				}
			})
			if !c.refused {
				if !res.OK || ran.Load() != before+1 {
					t.Fatalf("caller pid %d: %+v (operation ran %d times), want it served", res.PID, res, ran.Load()-before)
				}
				return
			}
			want := fmt.Sprintf(c.why, registered)
			if res.OK || res.Code != CodeDenied || !strings.Contains(res.Message, want) || !strings.Contains(res.Message, "not plugins") {
				t.Fatalf("caller pid %d: %+v, want code %s naming %q", res.PID, res, CodeDenied, want)
			}
			if ran.Load() != before {
				t.Fatal("the operation ran for a plugin process")
			}
			if c.mode == "spawn" && res.PID == registered {
				t.Fatalf("the caller was the registered process, not its child")
			}
			mu.Lock()
			defer mu.Unlock()
			var audited bool
			for _, r := range *recs {
				if r.cred.PID == int32(res.PID) && r.op == "" && CodeOf(r.err) == CodeDenied && strings.Contains(r.err.Error(), want) {
					audited = true
				}
			}
			if !audited {
				t.Fatalf("no refusal of pid %d reported to the audit hook: %+v", res.PID, *recs)
			}
		})
	}
	// The daemon's own process (an in-process caller) is not a plugin either.
	if err := Call(context.Background(), path, "grant", nil, nil); err != nil {
		t.Fatalf("in-process caller: %v", err)
	}
}

// The default authorizer (no Authorize configured) serves the daemon's own uid and root only (issue 21
// item 9). A caller of another uid, a child with dropped credentials, is refused with the reason, and the
// operation does not run. The socket's 0600 mode would stop it first: the test opens the socket to everyone
// so that the authorizer, the second wall, is what is tested.
func TestDefaultAuthorizerRefusesOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a child of another uid (CI runs as root)")
	}
	// The child runs as nobody: it needs a copy of the test binary it may execute.
	dir, err := os.MkdirTemp("", "cx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "control.test")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}

	var ran atomic.Int32
	path, recs, mu := start(t, func(c *Config) {
		c.Authorize = nil // the default
		c.Ops["grant"] = Op{Permission: rbac.CtlGrant, Mutating: true, Fn: func(context.Context, rbac.Cred, json.RawMessage) (any, error) {
			ran.Add(1)
			return nil, nil
		}}
	})
	if err := os.Chmod(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	res := runHelper(t, exe, &syscall.Credential{Uid: nobody, Gid: nobody}, "call", path, "grant", nil)
	want := fmt.Sprintf("uid %d may not use this agent's control socket", nobody)
	if res.OK || res.Code != CodeDenied || !strings.Contains(res.Message, want) {
		t.Fatalf("caller of uid %d: %+v, want code %s with %q", nobody, res, CodeDenied, want)
	}
	if ran.Load() != 0 {
		t.Fatal("the operation ran for a caller of another uid")
	}
	mu.Lock()
	var audited bool
	for _, r := range *recs {
		audited = audited || (r.cred.UID == nobody && r.cred.PID == int32(res.PID) && r.op == "grant" && CodeOf(r.err) == CodeDenied)
	}
	mu.Unlock()
	if !audited {
		t.Fatalf("the refusal was not reported to the audit hook: %+v", *recs)
	}
	// The daemon's own uid (root here) is served by the same default.
	if err := Call(context.Background(), path, "grant", nil, nil); err != nil || ran.Load() != 1 {
		t.Fatalf("own uid: %v (ran %d)", err, ran.Load())
	}
}

// A caller that cannot be checked is refused while plugins run: one that has exited (its /proc entry is
// gone), and one whose pid now belongs to a process younger than the check (the caller exited and its pid
// was reused: the process found there is not the one that connected).
func TestRefusesCallersThatCannotBeChecked(t *testing.T) {
	plugins := map[int]bool{1 << 30: true} // no such process: only the caller's own state decides
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	live := cmd.Process.Pid
	st, err := readStat(live)
	if err != nil {
		t.Fatal(err)
	}
	now, err := bootTicks()
	if err != nil {
		t.Fatal(err)
	}
	if st.start > now {
		t.Fatalf("start time %d after the boot clock %d: the units differ", st.start, now)
	}
	if refuse, why := checkAncestry(live, plugins, now); refuse {
		t.Fatalf("a live process outside every plugin's tree was refused: %s", why)
	}
	// The same process seen by a check that began before it started: its pid was reused.
	refuse, why := checkAncestry(live, plugins, st.start-1)
	if !refuse || !strings.Contains(why, fmt.Sprintf("caller pid %d exited before it could be checked", live)) {
		t.Fatalf("younger process at the caller's pid: refuse=%v %q", refuse, why)
	}
	_ = cmd.Process.Kill()
	_, _ = cmd.Process.Wait()
	refuse, why = checkAncestry(live, plugins, now)
	if !refuse || !strings.Contains(why, fmt.Sprintf("caller pid %d cannot be checked", live)) {
		t.Fatalf("exited caller: refuse=%v %q", refuse, why)
	}
	// Without plugins nothing is walked and nobody is refused.
	if refuse, why := RefusePluginProcesses(func() []int { return nil })(rbac.Cred{PID: int32(live)}); refuse {
		t.Fatalf("refused with no plugins running: %s", why)
	}
}
