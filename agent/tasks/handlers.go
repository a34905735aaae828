package tasks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Handler runs one task locally. Run returns the output, or an error that becomes a failed result (the
// error's sentence is signed into the result). When ctx is cancelled because the agent is shutting down,
// Run must stop and return ctx's error: the task is then not finished and runs again at the next start.
type Handler interface {
	Run(ctx context.Context, input []byte) ([]byte, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, input []byte) ([]byte, error)

// Run calls f.
func (f HandlerFunc) Run(ctx context.Context, input []byte) ([]byte, error) { return f(ctx, input) }

// Echo returns its input (for demos and tests).
func Echo() Handler {
	return HandlerFunc(func(_ context.Context, in []byte) ([]byte, error) { return append([]byte(nil), in...), nil })
}

// SHA256 returns the lowercase hex SHA-256 digest of its input (64 characters, no newline).
func SHA256() Handler {
	return HandlerFunc(func(_ context.Context, in []byte) ([]byte, error) {
		sum := sha256.Sum256(in)
		return []byte(hex.EncodeToString(sum[:])), nil
	})
}

// Exec runs a configured command for each task: the task input on stdin, the result from stdout. No
// shell is involved (the path and arguments are executed as given), the environment is exactly Env
// (nothing of the agent's own environment, which may hold secret sources, is passed on), the working
// directory is a fresh empty directory, the process runs in its own process group, is killed with the
// whole group at the timeout, and dies with the agent (SIGKILL on parent death).
type Exec struct {
	// Path is the absolute path of the program.
	Path string
	// Args are its arguments (argv[1:]).
	Args []string
	// Env is its whole environment ("KEY=VALUE").
	Env []string
	// Timeout bounds one run (default 60 s).
	Timeout time.Duration
	// WorkRoot is where per-run working directories are made (default os.TempDir()).
	WorkRoot string
}

// ErrExec: the command failed (exit status, timeout, output too large).
var ErrExec = errors.New("command failed")

// Check validates the configuration.
func (e *Exec) Check() error {
	if !filepath.IsAbs(e.Path) || filepath.Clean(e.Path) != e.Path {
		return fmt.Errorf("exec handler: command %q must be a clean absolute path (no shell, no PATH lookup)", e.Path)
	}
	st, err := os.Stat(e.Path)
	if err != nil {
		return fmt.Errorf("exec handler: command %s: %w", e.Path, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("exec handler: command %s is not an executable file", e.Path)
	}
	for _, kv := range e.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("exec handler: environment entry %q is not KEY=VALUE", kv)
		}
	}
	if e.Timeout < 0 {
		return fmt.Errorf("exec handler: negative timeout %v", e.Timeout)
	}
	return nil
}

// limitedBuffer keeps at most max bytes and notes whether more were written.
type limitedBuffer struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	max      int
	overflow bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.max - b.buf.Len()
	if len(p) > room {
		b.overflow = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

// Run implements Handler.
func (e *Exec) Run(ctx context.Context, input []byte) ([]byte, error) {
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	root := e.WorkRoot
	if root == "" {
		root = os.TempDir()
	}
	dir, err := os.MkdirTemp(root, "task-")
	if err != nil {
		return nil, fmt.Errorf("exec handler: working directory: %w", err)
	}
	defer os.RemoveAll(dir)
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.Command(e.Path, e.Args...)
	cmd.Env = append([]string{}, e.Env...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(input)
	stdout := &limitedBuffer{max: MaxOutput}
	stderr := &limitedBuffer{max: 2048}
	// Own pipes, not cmd's: cmd.Wait then returns when the command exits, whoever else holds its output,
	// and the read ends are closed here after the kill (see finish).
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("exec handler: pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("exec handler: pipe: %w", err)
	}
	defer outR.Close()
	defer errR.Close()
	inodes := []uint64{inode(outR), inode(errR)}
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	startErr := cmd.Start()
	outW.Close()
	errW.Close()
	if startErr != nil {
		return nil, fmt.Errorf("%w: start %s: %v", ErrExec, e.Path, startErr)
	}
	copied := make(chan struct{}, 2)
	for _, c := range []struct {
		r *os.File
		b *limitedBuffer
	}{{outR, stdout}, {errR, stderr}} {
		go func() {
			_, _ = io.Copy(c.b, c.r)
			copied <- struct{}{}
		}()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
		finish(cmd.Process.Pid, nil, inodes, copied, outR, errR)
	case <-rctx.Done():
		finish(cmd.Process.Pid, descendants(cmd.Process.Pid), inodes, copied, outR, errR)
		<-done
		if ctx.Err() != nil {
			return nil, ctx.Err() // the agent is stopping: not a result
		}
		return nil, fmt.Errorf("%w: %s timed out after %v", ErrExec, e.Path, timeout)
	}
	if werr != nil {
		msg := strings.TrimSpace(stderr.buf.String())
		if msg != "" {
			return nil, fmt.Errorf("%w: %s: %v: %s", ErrExec, e.Path, werr, msg)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrExec, e.Path, werr)
	}
	if stdout.overflow {
		return nil, fmt.Errorf("%w: %s wrote more than %d bytes to stdout", ErrExec, e.Path, MaxOutput)
	}
	return stdout.buf.Bytes(), nil
}

// execWaitDelay bounds how long the output readers may take after the kill before their pipes are
// closed under them.
const execWaitDelay = 2 * time.Second

// finish ends a run: it kills the command's process group (after a normal exit too: what it left
// behind in its group goes), the descendants found while it ran (those that left the group with
// setsid), and then, while anything still holds the output pipes, every process holding them; the
// pipes' read ends are closed after at most execWaitDelay whatever happened, so nothing holds the task.
func finish(pid int, desc []int, inodes []uint64, copied <-chan struct{}, pipes ...*os.File) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	killAll(desc)
	n := 0
	grace := time.NewTimer(50 * time.Millisecond) // the readers of a command that exited cleanly finish at once
	defer grace.Stop()
wait:
	for n < len(pipes) {
		select {
		case <-copied:
			n++
		case <-grace.C:
			break wait
		}
	}
	if n == len(pipes) {
		return // both pipes at EOF: no writer left
	}
	killAll(pipeHolders(inodes))
	deadline := time.NewTimer(execWaitDelay)
	defer deadline.Stop()
	for n < len(pipes) {
		select {
		case <-copied:
			n++
		case <-deadline.C:
			for _, p := range pipes {
				_ = p.Close()
			}
			for n < len(pipes) {
				<-copied
				n++
			}
		}
	}
}

// Registry maps handler names to handlers. It is replaced as a whole on reload (see Engine.SetHandlers).
type Registry map[string]Handler

// Names lists the registered handler names (unsorted).
func (r Registry) Names() []string {
	out := make([]string, 0, len(r))
	for n := range r {
		out = append(out, n)
	}
	return out
}
