package tasks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// buildHostile builds testdata/hostile (static, no race detector: its memory limit is the point) into a
// directory of its own, and returns the binary's path.
func buildHostile(t *testing.T) string {
	t.Helper()
	k := sandbox.ProbeKernel()
	for _, n := range sandbox.All() {
		if n == sandbox.UIDDrop {
			continue
		}
		if !kernelHas(k, n) {
			testenv.Missing(t, "sandbox protection "+n, "run on a Linux kernel with user namespaces, Landlock and seccomp")
		}
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		testenv.Missing(t, "the go tool", "put go in PATH")
	}
	dir, err := os.MkdirTemp("", "hostile-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "hostile")
	cmd := exec.Command(goTool, "build", "-o", bin, "./testdata/hostile")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hostile: %v\n%s", err, out)
	}
	return bin
}

func kernelHas(k sandbox.Kernel, name string) bool {
	switch name {
	case sandbox.Landlock:
		return k.LandlockABI > 0
	case sandbox.Seccomp:
		return k.SeccompErr == ""
	case sandbox.NoNewPrivs:
		return k.NoNewPrivsErr == ""
	}
	return k.UserNSErr == ""
}

// running lists the pids whose executable is bin.
func running(bin string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && strings.TrimSuffix(l, " (deleted)") == bin {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestConfinedHandlerFailsEachAttack (issue 16): a malicious exec handler, confined with the defaults,
// tries one thing per task; each fails, with the reason asserted, and this process (the agent) keeps
// running handlers afterwards.
func TestConfinedHandlerFailsEachAttack(t *testing.T) {
	bin := buildHostile(t)
	binDir := filepath.Dir(bin)
	// The agent's home, readable by anyone as far as file permissions go: only the confinement can keep
	// the handler out.
	home, err := os.MkdirTemp("", "hostile-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	_ = os.Chmod(home, 0o755)
	secret := filepath.Join(home, "state.db")
	if err := os.WriteFile(secret, []byte("peer addresses and task data"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	workRoot := t.TempDir()
	_ = os.Chmod(workRoot, 0o755)
	run := func(t *testing.T, e Exec) ([]byte, error) {
		t.Helper()
		e.Path, e.WorkRoot = bin, workRoot
		if err := e.Check(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return e.Run(ctx, nil)
	}
	wantFail := func(t *testing.T, out []byte, err error, code reason.Code, text string) {
		t.Helper()
		if err == nil {
			t.Fatalf("the attack succeeded: %q", out)
		}
		var le *LimitError
		if code != "" && (!errors.As(err, &le) || le.Code != code) {
			t.Fatalf("err %v, want a LimitError %s", err, code)
		}
		if !errors.Is(err, ErrExec) || !strings.Contains(err.Error(), text) {
			t.Fatalf("err %v, want ErrExec mentioning %q", err, text)
		}
	}

	t.Run("network", func(t *testing.T) {
		out, err := run(t, Exec{Args: []string{"net", ln.Addr().String()}})
		wantFail(t, out, err, "", "network is unreachable")
		select {
		case <-accepted:
			t.Fatal("the listener accepted a connection from the handler")
		default:
		}
	})
	t.Run("network allowed by the configuration", func(t *testing.T) {
		// The same handler with network: true reaches the listener: the namespace is what stopped it.
		out, err := run(t, Exec{Args: []string{"net", ln.Addr().String()}, Network: true})
		if err != nil || string(out) != "CONNECTED\n" {
			t.Fatalf("out %q err %v", out, err)
		}
		<-accepted
	})
	t.Run("read the agent's home", func(t *testing.T) {
		out, err := run(t, Exec{Args: []string{"read", secret}})
		wantFail(t, out, err, "", "no such file or directory")
	})
	t.Run("read the agent's home when it is mounted", func(t *testing.T) {
		// Even a path the configuration binds read-only is only what it names: the home's sibling is not.
		out, err := run(t, Exec{Args: []string{"read", secret}, ReadPaths: []string{binDir}})
		wantFail(t, out, err, "", "no such file or directory")
	})
	t.Run("keep files and processes after the task", func(t *testing.T) {
		outside := filepath.Join(home, "planted")
		out, err := run(t, Exec{Args: []string{"keep", outside}, ReadPaths: []string{binDir}})
		if err != nil || !strings.Contains(string(out), "KEPT") || !strings.Contains(string(out), "SPAWNED") {
			t.Fatalf("out %q err %v, want it to have written in its work directory and spawned", out, err)
		}
		if strings.Contains(string(out), "WROTE OUTSIDE") {
			t.Fatal("the handler wrote outside its work directory")
		}
		if _, err := os.Stat(outside); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s exists after the task (%v)", outside, err)
		}
		if ents, _ := os.ReadDir(workRoot); len(ents) != 0 {
			t.Fatalf("the work directory is left behind: %v", ents)
		}
		for i := 0; i < 500 && len(running(bin)) > 0; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if p := running(bin); len(p) > 0 {
			t.Fatalf("the handler's process outlived its task: %v", p)
		}
	})
	t.Run("fork bomb", func(t *testing.T) {
		// 200 processes (bounded, so that a broken limit does not bomb the test machine): over the limit
		// of 32 processes and threads together, the fork fails well before.
		out, err := run(t, Exec{Args: []string{"fork", "200"}, ReadPaths: []string{binDir}, Limits: ExecLimits{Processes: 32}})
		wantFail(t, out, err, reason.HandlerProcessLimit, "limit of 32 processes")
		n, i := -1, strings.Index(err.Error(), "after ")
		if i >= 0 {
			_, _ = fmt.Sscanf(err.Error()[i:], "after %d processes", &n)
		}
		if n < 0 || n >= 32 {
			t.Fatalf("the fork bomb started %d processes under a limit of 32: %v", n, err)
		}
		if p := running(bin); len(p) > 0 {
			time.Sleep(200 * time.Millisecond)
			if p = running(bin); len(p) > 0 {
				t.Fatalf("children of the fork bomb are still running: %v", p)
			}
		}
	})
	t.Run("memory past its limit", func(t *testing.T) {
		out, err := run(t, Exec{Args: []string{"mem", "1024"}, Limits: ExecLimits{Memory: 128 << 20}})
		wantFail(t, out, err, reason.HandlerMemoryLimit, "memory limit of 134217728 bytes")
	})
	t.Run("CPU time past its limit", func(t *testing.T) {
		out, err := run(t, Exec{Args: []string{"cpu"}, Limits: ExecLimits{CPUTime: time.Second}, Timeout: time.Minute})
		wantFail(t, out, err, reason.HandlerCPULimit, "CPU-time limit of 1s")
	})
	t.Run("the agent keeps running handlers", func(t *testing.T) {
		e := Exec{Path: lookPath(t, "cat"), WorkRoot: workRoot}
		out, err := e.Run(context.Background(), []byte("still here"))
		if err != nil || string(out) != "still here" {
			t.Fatalf("out %q err %v", out, err)
		}
	})
}

// TestConfinedWorkRootOfAPrivateHome: the agent's work root is in its 0700 home, which a handler running
// under another uid cannot traverse; the confined work directory is made in a 0711 counterpart instead,
// removed after the task, and RemoveWorkDirs (at start) removes both roots.
func TestConfinedWorkRootOfAPrivateHome(t *testing.T) {
	buildHostile(t) // skips (or fails under CI) without the sandbox's protections
	home := t.TempDir()
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	workRoot := filepath.Join(home, "work")
	if err := os.Mkdir(workRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	e := Exec{Path: lookPath(t, "sh"), Args: []string{"-c", "pwd; cat; echo x > f; ls"}, WorkRoot: workRoot, Env: []string{"PATH=/usr/bin:/bin"}}
	out, err := e.Run(context.Background(), []byte("in\n"))
	if err != nil || string(out) != "/work\nin\nf\n" {
		t.Fatalf("out %q err %v", out, err)
	}
	alt := confinedWorkRoot(workRoot)
	fi, err := os.Lstat(alt)
	if err != nil || fi.Mode().Perm() != 0o711 {
		t.Fatalf("confined work root %s: %v %v", alt, fi, err)
	}
	if ents, _ := os.ReadDir(alt); len(ents) != 0 {
		t.Fatalf("work directory left behind in %s: %v", alt, ents)
	}
	if err := os.Mkdir(filepath.Join(alt, "task-left"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := RemoveWorkDirs(workRoot); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{workRoot, alt} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after RemoveWorkDirs (%v)", d, err)
		}
	}
}
