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

	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host/sandbox"
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
// directory is a fresh empty directory removed when the task ends, the process runs in its own process
// group, is killed with the whole group at the timeout, and dies with the agent (SIGKILL on parent death).
//
// Unless Sandbox is Off the command runs confined like a transport plugin (transports/host/sandbox,
// ADR 0082): its own user, mount, PID and (without Network) network namespaces, a read-only root with
// only the system's programs and libraries, ReadPaths and the work directory (its only writable place,
// nothing executable there), no capabilities, no_new_privs, Landlock, seccomp, and the resource limits
// of Limits. A command over a limit fails its task with a LimitError naming the limit's reason code.
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
	// Sandbox is the confinement mode: "" or required (a protection the kernel lacks fails the task),
	// best-effort, or off (unconfined, as the agent's own user).
	Sandbox sandbox.Mode
	// Network lets the command use the host's network (default: none at all).
	Network bool
	// ReadPaths are host files or directories the command may read and execute besides the system's
	// programs and libraries.
	ReadPaths []string
	// Limits bound the command's resources; zero fields take the defaults (DefaultLimits).
	Limits ExecLimits
	// Kernel is what the kernel offers (nil: probed at the first run).
	Kernel *sandbox.Kernel
}

// ExecLimits are a confined command's resource limits.
type ExecLimits struct {
	// CPUTime bounds the CPU time of each of its processes (default: the timeout).
	CPUTime time.Duration
	// Memory bounds each process's data memory (heap; default 512 MiB).
	Memory int64
	// Processes bounds its processes and threads together (default 64).
	Processes int
	// FileSize bounds the size of a file it writes (default 64 MiB).
	FileSize int64
}

// Defaults of ExecLimits (CPUTime defaults to the timeout).
const (
	DefaultExecMemory    = 512 << 20
	DefaultExecProcesses = 64
	DefaultExecFileSize  = 64 << 20
	execOpenFiles        = 256
)

// LimitReasons are the codes a LimitError carries (the start of a failed result's error text).
var LimitReasons = []reason.Code{reason.HandlerCPULimit, reason.HandlerMemoryLimit, reason.HandlerProcessLimit,
	reason.HandlerFileLimit, reason.HandlerSandbox}

// LimitError: a confined command exceeded one of its limits (or could not be confined). Its text, signed
// into the failed result, starts with the reason code.
type LimitError struct {
	Code   reason.Code
	Detail string
}

func (e *LimitError) Error() string { return string(e.Code) + ": " + e.Detail }

// Unwrap makes a LimitError an ErrExec.
func (e *LimitError) Unwrap() error { return ErrExec }

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
	if _, err := sandbox.ParseMode(string(e.Sandbox)); err != nil {
		return fmt.Errorf("exec handler: %w", err)
	}
	for _, p := range e.ReadPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("exec handler: read path %q must be a clean absolute path", p)
		}
	}
	if l := e.Limits; l.CPUTime < 0 || l.Memory < 0 || l.Processes < 0 || l.FileSize < 0 {
		return fmt.Errorf("exec handler: negative limit in %+v", l)
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
	} else if e.Sandbox != sandbox.Off && !traversable(root) {
		// A confined command may run under another uid (the agent as root): its work directory must
		// be reachable by path (the new root binds it) through directories anyone may traverse.
		var err error
		if root, err = confinedRoot(root); err != nil {
			return nil, fmt.Errorf("exec handler: working directory: %w", err)
		}
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
	cmd.Stdin = bytes.NewReader(input)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	launch, limits, err := e.confine(cmd, dir, timeout)
	if err != nil {
		return nil, err
	}
	defer launch.Cleanup()
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
	startErr := launch.Start(cmd)
	outW.Close()
	errW.Close()
	for _, f := range cmd.ExtraFiles[:min(2, len(cmd.ExtraFiles))] {
		_ = f.Close() // the binary and the work directory, now the child's
	}
	if startErr != nil {
		launch.Abort()
		return nil, fmt.Errorf("%w: start %s: %v", ErrExec, e.Path, startErr)
	}
	if launch != nil {
		if _, err := launch.Started(rctx); err != nil {
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			return nil, &LimitError{Code: reason.HandlerSandbox, Detail: fmt.Sprintf("%s could not be confined: %v", e.Path, err)}
		}
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
		if launch != nil {
			if le := limitExceeded(cmd.ProcessState, limits, msg); le != nil {
				return nil, le
			}
		}
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

// confine wraps cmd in the sandbox (nil Launch when Sandbox is Off) and returns the limits applied.
func (e *Exec) confine(cmd *exec.Cmd, dir string, timeout time.Duration) (*sandbox.Launch, sandbox.Limits, error) {
	mode, err := sandbox.ParseMode(string(e.Sandbox))
	if err != nil {
		return nil, sandbox.Limits{}, err
	}
	if mode == sandbox.Off {
		cmd.Dir = dir
		return nil, sandbox.Limits{}, nil
	}
	l := e.Limits
	if l.CPUTime <= 0 {
		l.CPUTime = timeout
	}
	if l.Memory <= 0 {
		l.Memory = DefaultExecMemory
	}
	if l.Processes <= 0 {
		l.Processes = DefaultExecProcesses
	}
	if l.FileSize <= 0 {
		l.FileSize = DefaultExecFileSize
	}
	limits := sandbox.Limits{CPUSeconds: uint64(max(1, (l.CPUTime+time.Second-1)/time.Second)), DataBytes: uint64(l.Memory),
		Processes: uint64(l.Processes), FileBytes: uint64(l.FileSize), OpenFiles: execOpenFiles}
	k := e.Kernel
	if k == nil {
		pk := sandbox.ProbeKernel()
		k = &pk
	}
	bin, err := os.Open(e.Path)
	if err != nil {
		return nil, limits, fmt.Errorf("%w: %s: %v", ErrExec, e.Path, err)
	}
	wd, err := os.Open(dir)
	if err != nil {
		bin.Close()
		return nil, limits, fmt.Errorf("%w: work directory: %v", ErrExec, err)
	}
	cmd.ExtraFiles = []*os.File{bin, wd} // descriptors 3 and sandbox.WorkFD
	launch, err := sandbox.Wrap(cmd, sandbox.Options{Mode: mode, Kernel: *k, Path: e.Path, Exec: &sandbox.ExecConfinement{
		WorkDir: dir, Args: e.Args, Network: e.Network, ReadPaths: e.ReadPaths, Limits: limits}})
	if err != nil {
		bin.Close()
		wd.Close()
		return nil, limits, &LimitError{Code: reason.HandlerSandbox, Detail: fmt.Sprintf("%s was not started: %v", e.Path, err)}
	}
	if cmd.SysProcAttr != nil {
		cmd.SysProcAttr.Setpgid = true
	}
	return launch, limits, nil
}

// limitExceeded says which limit a confined command that failed ran into, nil if none. CPU time and file
// size end the process with a signal the kernel sends at the limit; memory and processes make the
// allocation or the fork fail inside the command, which is recognised by what it reported (the Go
// runtime's and the C library's wording).
func limitExceeded(st *os.ProcessState, l sandbox.Limits, stderr string) *LimitError {
	if st == nil {
		return nil
	}
	cpu := st.UserTime() + st.SystemTime()
	ws, _ := st.Sys().(syscall.WaitStatus)
	low := strings.ToLower(stderr)
	switch {
	case ws.Signaled() && (ws.Signal() == syscall.SIGXCPU || ws.Signal() == syscall.SIGKILL && cpu >= time.Duration(l.CPUSeconds)*time.Second):
		return &LimitError{Code: reason.HandlerCPULimit, Detail: fmt.Sprintf("the handler used its CPU-time limit of %ds (killed by %v)", l.CPUSeconds, ws.Signal())}
	case ws.Signaled() && ws.Signal() == syscall.SIGXFSZ:
		return &LimitError{Code: reason.HandlerFileLimit, Detail: fmt.Sprintf("the handler wrote past its file-size limit of %d bytes", l.FileBytes)}
	case strings.Contains(low, "out of memory") || strings.Contains(low, "cannot allocate memory"):
		return &LimitError{Code: reason.HandlerMemoryLimit, Detail: fmt.Sprintf("the handler ran out of its memory limit of %d bytes: %s", l.DataBytes, clipText(stderr, 200))}
	case strings.Contains(low, "resource temporarily unavailable") && (strings.Contains(low, "fork") || strings.Contains(low, "clone") ||
		strings.Contains(low, "thread") || strings.Contains(low, "process")):
		return &LimitError{Code: reason.HandlerProcessLimit, Detail: fmt.Sprintf("the handler reached its limit of %d processes: %s", l.Processes, clipText(stderr, 200))}
	}
	return nil
}

// traversable reports whether every directory from / to dir lets anyone search it (o+x).
func traversable(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == "/" {
			return true
		}
	}
}

// confinedWorkRoot is where confined commands' work directories are made when WorkRoot cannot be
// traversed by another uid (the agent's home is 0700): a directory of the system's temporary directory
// named after WorkRoot, so that RemoveWorkDirs finds what a crashed agent left there.
func confinedWorkRoot(workRoot string) string {
	sum := sha256.Sum256([]byte(workRoot))
	return filepath.Join(os.TempDir(), "custos-work-"+hex.EncodeToString(sum[:8]))
}

// confinedRoot makes (or checks) confinedWorkRoot: a real directory of this process's uid, mode 0711,
// so that nobody else can have placed it or a symbolic link there.
func confinedRoot(workRoot string) (string, error) {
	dir := confinedWorkRoot(workRoot)
	if err := os.Mkdir(dir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s is not a directory of uid %d: remove it", dir, os.Geteuid())
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", err
	}
	return dir, nil
}

// RemoveWorkDirs removes the work directories commands of a previous run left behind (the agent calls it
// at start): workRoot and its confined counterpart.
func RemoveWorkDirs(workRoot string) error {
	if err := os.RemoveAll(workRoot); err != nil {
		return err
	}
	dir := confinedWorkRoot(workRoot)
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == os.Geteuid() {
			return os.RemoveAll(dir)
		}
	}
	return nil
}
