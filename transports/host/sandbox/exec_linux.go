package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Task handlers (issue 16, ADR 0082) are confined by the same trampoline as the transport plugins, with
// what a handler needs instead of a socket directory: its arguments, one writable work directory (its
// working directory, /work inside the new root, nothing executable in it), read-only system programs and
// libraries (so that a shell-script handler can run coreutils) plus the paths its configuration names,
// /dev/null and the other harmless character devices, a network namespace of its own without network
// (unless its configuration allows the network), fork and exec allowed by seccomp, and resource limits
// (setrlimit: CPU time, data memory, processes, file size, open files). Everything else is the plugins':
// user, mount and PID namespaces, no capabilities, no_new_privs, Landlock, seccomp, the checked
// descriptor.

// WorkFD is the descriptor, in the child, of the handler's work directory: the caller opens the
// directory and passes it as cmd.ExtraFiles[1] (ExtraFiles[0], descriptor 3, is the handler binary).
const WorkFD = 4

// WorkPath is the work directory's path inside the handler's root (its working directory).
const WorkPath = "/work"

// Limits are a handler's resource limits (setrlimit); zero leaves a limit as the daemon's.
type Limits struct {
	// CPUSeconds: RLIMIT_CPU (soft; the hard limit is one second more). SIGXCPU, then SIGKILL.
	CPUSeconds uint64 `json:"cpu_seconds,omitempty"`
	// DataBytes: RLIMIT_DATA, the private writable memory (heap) of each process.
	DataBytes uint64 `json:"data_bytes,omitempty"`
	// Processes: RLIMIT_NPROC, processes and threads of the handler's user in its namespace.
	Processes uint64 `json:"processes,omitempty"`
	// FileBytes: RLIMIT_FSIZE, the largest file it may write.
	FileBytes uint64 `json:"file_bytes,omitempty"`
	// OpenFiles: RLIMIT_NOFILE.
	OpenFiles uint64 `json:"open_files,omitempty"`
}

// ExecConfinement is what Options.Exec adds for a task handler.
type ExecConfinement struct {
	// WorkDir is the host path of the work directory (ExtraFiles[1] is it, opened); it is lent to the
	// handler's uid when that differs from the daemon's.
	WorkDir string
	// Args are the handler's arguments (argv[1:]).
	Args []string
	// Network keeps the host's network; false gives the handler a network namespace without network.
	Network bool
	// ReadPaths are host files or directories the handler may read and execute (besides the system's
	// programs and libraries).
	ReadPaths []string
	// Limits are set before the handler is executed.
	Limits Limits
}

func (e *ExecConfinement) workDir() string {
	if e == nil {
		return ""
	}
	return e.WorkDir
}

// execSpec is the trampoline's part of an ExecConfinement.
type execSpec struct {
	Args     []string `json:"args"`
	Limits   Limits   `json:"limits"`
	ExecDirs []string `json:"exec_dirs"` // read and execute
	Devices  []string `json:"devices"`
	Mounted  bool     `json:"mounted"` // the work directory is at WorkPath in a new root
}

// systemDirs are the system's programs and libraries, read-only and executable for handlers.
var systemDirs = []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/libexec", "/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32"}

// devices are the character devices a handler may open.
var devices = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}

// plan fills the trampoline's spec for a handler.
func (e *ExecConfinement) plan(s *spec) {
	x := &execSpec{Args: append([]string(nil), e.Args...), Limits: e.Limits}
	have := map[string]bool{}
	for _, d := range s.ReadDirs {
		have[d] = true
	}
	for _, l := range s.Symlinks {
		have[l[0]] = true
	}
	for _, d := range append(append([]string(nil), systemDirs...), e.ReadPaths...) {
		fi, err := os.Lstat(d)
		switch {
		case err != nil, have[d]:
		case fi.Mode()&os.ModeSymlink != 0:
			if t, err := os.Readlink(d); err == nil && slices.Contains(systemDirs, d) {
				s.Symlinks = append(s.Symlinks, [2]string{d, t})
			} else if r, err := filepath.EvalSymlinks(d); err == nil && !have[r] {
				x.ExecDirs = append(x.ExecDirs, r)
				have[r] = true
			}
		default:
			x.ExecDirs = append(x.ExecDirs, d)
		}
		have[d] = true
	}
	for _, d := range devices {
		if fi, err := os.Stat(d); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			x.Devices = append(x.Devices, d)
		}
	}
	s.ReadFiles = nil // name-service files: a handler without network has no use for them
	if e.Network {
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols"} {
			if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
				s.ReadFiles = append(s.ReadFiles, f)
			}
		}
	}
	s.Exec = x
}

// binds are the handler's mounts in its new root (besides the plugins' libraries).
func (e *ExecConfinement) binds(s *spec) []bindSpec {
	s.Exec.Mounted = true
	var out []bindSpec
	for _, d := range s.Exec.ExecDirs {
		fi, err := os.Stat(d)
		if err != nil {
			continue
		}
		out = append(out, bindSpec{Src: d, Dst: d, Dir: fi.IsDir()})
	}
	for _, d := range s.Exec.Devices {
		out = append(out, bindSpec{Src: d, Dst: d, RW: true, Dev: true})
	}
	// (Wrap binds the name-service files too; without network Landlock does not let them be read.)
	// By path: a descriptor opened in the daemon's mount namespace cannot be the source of a bind in
	// the handler's (EINVAL).
	return append(out, bindSpec{Src: e.WorkDir, Dst: WorkPath, Dir: true, RW: true})
}

// landlockRules: read and execute the system's programs, libraries and the configured paths; read and
// write the devices; everything but execute in the work directory.
func (x *execSpec) landlockRules(cfg landlock.Config) []landlock.Rule {
	exe := landlock.AccessFSSet(ll.AccessFSExecute | ll.AccessFSReadFile | ll.AccessFSReadDir)
	var rules []landlock.Rule
	if len(x.ExecDirs) > 0 {
		rules = append(rules, landlock.PathAccess(exe, x.ExecDirs...))
	}
	for _, d := range x.Devices {
		rules = append(rules, landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile|ll.AccessFSWriteFile), d))
	}
	work := cfg.HandledAccessFS &^ landlock.AccessFSSet(ll.AccessFSExecute|ll.AccessFSIoctlDev)
	return append(rules, landlock.PathAccess(work, fmt.Sprintf("/proc/self/fd/%d", WorkFD)))
}

// enter runs in the trampoline after the new root is built: the working directory, the limits.
func (x *execSpec) enter(mounted bool) error {
	if mounted {
		if err := unix.Chdir(WorkPath); err != nil {
			return fmt.Errorf("chdir %s: %w", WorkPath, err)
		}
	} else if err := unix.Fchdir(WorkFD); err != nil {
		return fmt.Errorf("fchdir to the work directory: %w", err)
	}
	unix.CloseOnExec(WorkFD)
	set := func(res int, name string, soft, hard uint64) error {
		if soft == 0 {
			return nil
		}
		if err := unix.Setrlimit(res, &unix.Rlimit{Cur: soft, Max: hard}); err != nil {
			return fmt.Errorf("setrlimit %s %d: %w", name, soft, err)
		}
		return nil
	}
	l := x.Limits
	for _, r := range []struct {
		res        int
		name       string
		soft, hard uint64
	}{
		{unix.RLIMIT_CPU, "RLIMIT_CPU", l.CPUSeconds, l.CPUSeconds + 1},
		{unix.RLIMIT_DATA, "RLIMIT_DATA", l.DataBytes, l.DataBytes},
		{unix.RLIMIT_NPROC, "RLIMIT_NPROC", l.Processes, l.Processes},
		{unix.RLIMIT_FSIZE, "RLIMIT_FSIZE", l.FileBytes, l.FileBytes},
		{unix.RLIMIT_NOFILE, "RLIMIT_NOFILE", l.OpenFiles, l.OpenFiles},
		{unix.RLIMIT_CORE, "RLIMIT_CORE", 1, 1}, // no core dumps (1 byte: set, and nothing fits)
	} {
		if err := set(r.res, r.name, r.soft, r.hard); err != nil {
			return err
		}
	}
	return nil
}

// execAllowed is added to the plugins' allow-list for handlers: processes and programs (fork and exec,
// in the PID namespace), and more file calls.
var execAllowed = []string{"execve", "fork", "vfork", "setpgid", "setsid", "chmod", "rmdir", "symlink", "symlinkat",
	"link", "linkat", "truncate", "fallocate", "utime", "utimes", "futimesat", "getxattr", "lgetxattr", "fgetxattr",
	"setrlimit", "alarm", "dup3", "sync", "syncfs", "lchown", "fchown", "chown", "fchownat"}

// applyExecSeccomp is applySeccomp for handlers: the same allow-list plus execAllowed, clone without
// namespace flags (fork as well as threads), execveat of anything (Landlock decides what may be
// executed).
func applyExecSeccomp() error {
	info, err := arch.GetInfo("")
	if err != nil {
		return err
	}
	var names []string
	for _, n := range append(append([]string(nil), allowed...), execAllowed...) {
		if _, ok := info.SyscallNames[n]; ok && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	policy := seccomp.Policy{
		DefaultAction: seccomp.ActionErrno,
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: append(names, "execveat")},
			{Action: seccomp.ActionAllow, NamesWithCondtions: []seccomp.NameWithConditions{
				{Name: "clone", Conditions: seccomp.ArgumentConditions{
					{Argument: 0, Operation: seccomp.BitsNotSet, Value: cloneNSFlags},
				}},
				{Name: "socket", Conditions: seccomp.ArgumentConditions{
					{Argument: 2, Operation: seccomp.NotEqual, Value: ipprotoMPTCP},
				}},
			}},
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}
	return seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: policy})
}
