package tasks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports/host/sandbox"
)

func lookPath(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found in /usr/bin or /bin", name)
	return ""
}

func TestExecHandler(t *testing.T) {
	sh := lookPath(t, "sh")
	cases := []struct {
		name    string
		exec    Exec
		input   string
		want    string
		wantErr string
	}{
		{"stdin to stdout", Exec{Path: lookPath(t, "cat")}, "hello", "hello", ""},
		{"minimal environment", Exec{Path: lookPath(t, "env"), Env: []string{"ONLY=this"}}, "", "ONLY=this\n", ""},
		{"no shell: arguments are literal", Exec{Path: lookPath(t, "echo"), Args: []string{"$HOME", ";", "ls"}}, "", "$HOME ; ls\n", ""},
		{"working directory is fresh and empty", Exec{Path: lookPath(t, "ls"), Args: []string{"-A"}}, "", "", ""},
		{"exit status with stderr", Exec{Path: sh, Args: []string{"-c", "echo broken >&2; exit 3"}}, "", "", "exit status 3: broken"},
		{"timeout kills the process group", Exec{Path: sh, Args: []string{"-c", "sleep 30 & sleep 30"}, Timeout: 200 * time.Millisecond}, "", "", "timed out after 200ms"},
		{"output limit", Exec{Path: sh, Args: []string{"-c", "head -c 600000 /dev/zero"}, Env: []string{"PATH=/usr/bin:/bin"}}, "", "", "more than 524288 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.exec.Check(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			out, err := c.exec.Run(context.Background(), []byte(c.input))
			if c.wantErr != "" {
				if !errors.Is(err, ErrExec) || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want ErrExec with %q", err, c.wantErr)
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("took %v: the process group was not killed", time.Since(start))
				}
				return
			}
			if err != nil || string(out) != c.want {
				t.Fatalf("out %q err %v, want %q", out, err, c.want)
			}
		})
	}
}

func TestExecCancelIsNotAResult(t *testing.T) {
	e := Exec{Path: lookPath(t, "sleep"), Args: []string{"30"}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	_, err := e.Run(ctx, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled (shutdown is not a task failure)", err)
	}
}

func TestExecCheck(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		e    Exec
		want string
	}{
		{"relative", Exec{Path: "sha256sum"}, "clean absolute path"},
		{"unclean", Exec{Path: "/usr/bin/../bin/cat"}, "clean absolute path"},
		{"missing", Exec{Path: filepath.Join(dir, "nope")}, "no such file"},
		{"not executable", Exec{Path: plain}, "not an executable file"},
		{"bad env", Exec{Path: lookPath(t, "cat"), Env: []string{"NOEQUALS"}}, "not KEY=VALUE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.e.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
}

func TestDecodeStrict(t *testing.T) {
	id := NewTaskID()
	cases := []struct {
		name string
		fn   func([]byte) error
		in   string
		want string
	}{
		{"request ok", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"` + id + `","handler":"echo","input":"aGk"}`, ""},
		{"unknown field", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"` + id + `","handler":"echo","input":"","x":1}`, "unknown field"},
		{"trailing data", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"` + id + `","handler":"echo","input":""} {}`, "trailing data"},
		{"padded base64", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"` + id + `","handler":"echo","input":"aGk="}`, "base64"},
		{"bad task id", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"abc","handler":"echo","input":""}`, "task ID"},
		{"bad handler", func(b []byte) error { _, err := DecodeRequest(b); return err }, `{"task_id":"` + id + `","handler":"../x","input":""}`, "handler name"},
		{"bad status", func(b []byte) error { _, err := DecodeResponse(b); return err }, `{"task_id":"` + id + `","status":"maybe"}`, "status"},
		{"result without evidence", func(b []byte) error { _, err := DecodeResultMessage(b); return err }, `{"task_id":"` + id + `","evidence":"","delegation":""}`, "without evidence"},
		{"error bad code", func(b []byte) error { _, err := DecodeError(b); return err }, `{"task_id":"` + id + `","code":"Bad Code","message":""}`, "error code"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.fn([]byte(c.in))
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want ErrMalformed with %q", err, c.want)
			}
		})
	}
}

func TestNewTaskIDNeverLooksLikeAFlag(t *testing.T) {
	for i := 0; i < 2000; i++ {
		id := NewTaskID()
		if err := CheckTaskID(id); err != nil || id[0] == '-' {
			t.Fatalf("task ID %q (%v)", id, err)
		}
	}
}

// procAlive reports whether pid runs (a zombie or a missing /proc entry is dead).
func procAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

// TestExecEscapedDescendantDoesNotHoldTheTask: a descendant that leaves the process group (setsid) and
// keeps stdout open neither outlives the task nor holds it: Run ends at the timeout (and when the
// command exits normally), the work directory is gone, the escaped process is dead.
func TestExecEscapedDescendantDoesNotHoldTheTask(t *testing.T) {
	sh := lookPath(t, "sh")
	setsid := lookPath(t, "setsid")
	escape := setsid + ` sh -c 'echo $$ > "$1"; exec sleep 600' sh "$1" &`                            // keeps stdout open
	escapeQuiet := setsid + ` sh -c 'exec >/dev/null 2>&1; echo $$ > "$1"; exec sleep 600' sh "$1" &` // closes it
	stayQuiet := `sh -c 'exec >/dev/null 2>&1; echo $$ > "$1"; exec sleep 600' sh "$1" &`             // in the group
	for _, tc := range []struct {
		name, spawn, tail, wantErr string
	}{
		{"timeout", escape, "exec sleep 600", "timed out after 1s"},
		{"normal exit", escape, "echo done", ""},
		{"timeout, the escaped process closed its output", escapeQuiet, "exec sleep 600", "timed out after 1s"},
		{"normal exit, a process left in the group", stayQuiet, "echo done", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			pidFile := filepath.Join(t.TempDir(), "escaped.pid")
			t.Cleanup(func() { // whatever happened, leave no process behind
				if b, err := os.ReadFile(pidFile); err == nil {
					if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && procAlive(pid) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			script := tc.spawn + `
while [ ! -s "$1" ]; do :; done
` + tc.tail
			// Unconfined: the escape needs the host's setsid and a pid file outside the work directory
			// (confined, the PID namespace ends every descendant with the command).
			e := Exec{Path: sh, Args: []string{"-c", script, "sh", pidFile}, Timeout: time.Second, WorkRoot: root,
				Env: []string{"PATH=/usr/bin:/bin"}, Sandbox: sandbox.Off}
			type res struct {
				out []byte
				err error
			}
			ch := make(chan res, 1)
			go func() { out, err := e.Run(context.Background(), nil); ch <- res{out, err} }()
			var r res
			select {
			case r = <-ch:
			case <-time.After(60 * time.Second):
				t.Fatal("the task is still running 60 s after its 1 s timeout: the escaped process holds it")
			}
			if tc.wantErr != "" {
				if !errors.Is(r.err, ErrExec) || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want ErrExec with %q", r.err, tc.wantErr)
				}
			} else if r.err != nil || string(r.out) != "done\n" {
				t.Fatalf("out %q err %v", r.out, r.err)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			// SIGKILL was sent before Run returned; give the kernel a moment to finish the process off.
			for i := 0; i < 1000 && procAlive(pid); i++ {
				time.Sleep(10 * time.Millisecond)
			}
			if procAlive(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("the escaped process %d is still running", pid)
			}
			if ents, _ := os.ReadDir(root); len(ents) != 0 {
				t.Fatalf("work directory left behind: %v", ents)
			}
		})
	}
}
