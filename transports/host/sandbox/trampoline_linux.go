package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// maxLandlockABI is the highest Landlock ABI this trampoline asks for (landlock.V7: filesystem, TCP
// ports, IPC scopes).
const maxLandlockABI = 7

// pluginFD is the descriptor of the checked plugin binary in the trampoline.
const pluginFD = 3

func init() {
	// Runs in every binary that links the transport host (the daemon, tests): the host re-executes
	// itself (/proc/self/exe) with this argv[0] to start a plugin inside the sandbox.
	if len(os.Args) == 3 && os.Args[0] == trampolineArg0 {
		trampoline()
	}
}

// trampoline never returns: it executes the plugin or exits.
func trampoline() {
	runtime.LockOSThread() // every per-thread step (no_new_privs, capabilities, Landlock) and the exec on one thread
	specFD, err1 := strconv.Atoi(os.Args[1])
	statusFD, err2 := strconv.Atoi(os.Args[2])
	if err1 != nil || err2 != nil || specFD < 3 || statusFD < 3 {
		os.Exit(126)
	}
	status := os.NewFile(uintptr(statusFD), "sandbox-status")
	fail := func(format string, args ...any) {
		fmt.Fprintf(status, "error "+format+"\n", args...)
		os.Exit(126)
	}
	syscall.CloseOnExec(statusFD)
	syscall.CloseOnExec(pluginFD)
	sf := os.NewFile(uintptr(specFD), "sandbox-spec")
	raw, err := io.ReadAll(io.LimitReader(sf, maxReport))
	_ = sf.Close()
	if err != nil {
		fail("read spec: %v", err)
	}
	var s spec
	if err := json.Unmarshal(raw, &s); err != nil {
		fail("decode spec: %v", err)
	}
	var p Protections
	if s.PIDNS {
		if os.Getpid() != 1 {
			fail("pidns: not in a new PID namespace (pid %d)", os.Getpid())
		}
		p.PIDNS = true
	}
	p.UserNS = s.UserNS
	rulesetFD, rulesetFlags := -1, uint32(0)
	if s.Landlock > 0 {
		var err error
		if rulesetFD, rulesetFlags, err = landlockRuleset(&s); err != nil {
			fail("landlock: %v", err)
		}
	}
	if s.Root != "" {
		if err := buildRoot(&s); err != nil {
			fail("mntns: %v", err)
		}
		p.MountNS = true
	}
	if s.Exec != nil {
		if err := s.Exec.enter(s.Root != ""); err != nil {
			fail("exec: %v", err)
		}
		p.Limits = s.Exec.Limits != (Limits{})
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			fail("no_new_privs: prctl: %v", err)
		}
		if v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil || v != 1 {
			fail("no_new_privs: not set after prctl (%d, %v)", v, err)
		}
		p.NoNewPrivs = true
	}
	if s.UserNS {
		if err := dropCaps(); err != nil {
			fail("caps_dropped: %v", err)
		}
		p.CapsDropped = true
	} else if err := clearCaps(); err != nil {
		// Without a user namespace, what a non-root daemon's ambient capabilities left to this
		// process (a uid change between two non-root uids keeps them) must not reach the plugin.
		fail("clear capabilities: %v", err)
	}
	if s.GroupSocket {
		unix.Umask(0o007)
	}
	if s.Landlock > 0 {
		if err := ll.LandlockRestrictSelf(rulesetFD, rulesetFlags); err != nil {
			fail("landlock: landlock_restrict_self: %v", err)
		}
		_ = unix.Close(rulesetFD)
		p.Landlock, p.LandlockNet = s.Landlock, s.NetRules
	}
	if s.Seccomp {
		apply := applySeccomp
		if s.Exec != nil {
			apply = applyExecSeccomp
		}
		if err := apply(); err != nil {
			fail("seccomp: %v", err)
		}
		p.Seccomp = true
	}
	rep, _ := json.Marshal(p)
	fmt.Fprintf(status, "ok %s\n", rep)
	argv0, err := unix.BytePtrFromString(s.Argv0)
	if err != nil {
		fail("exec: %v", err)
	}
	argv := []*byte{argv0}
	if s.Exec != nil {
		for _, a := range s.Exec.Args {
			b, err := unix.BytePtrFromString(a)
			if err != nil {
				fail("exec: argument: %v", err)
			}
			argv = append(argv, b)
		}
	}
	argv = append(argv, nil)
	envv := make([]*byte, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		b, err := unix.BytePtrFromString(kv)
		if err != nil {
			fail("exec: environment: %v", err)
		}
		envv = append(envv, b)
	}
	envv = append(envv, nil)
	empty, _ := unix.BytePtrFromString("")
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, pluginFD, uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])), unix.AT_EMPTY_PATH, 0)
	fail("exec plugin from its checked descriptor: %v", errno)
}

// buildRoot makes the new root: a tmpfs holding only s.Binds and s.Symlinks, read-only, pivoted into,
// the old root detached.
func buildRoot(s *spec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := s.Root
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("mount tmpfs root: %w", err)
	}
	for _, b := range s.Binds {
		dst := filepath.Join(root, b.Dst)
		if b.Dir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			_ = f.Close()
		}
		// Not recursive: nothing mounted below a source comes along (the socket directory holds the
		// new root's own mountpoint).
		if err := unix.Mount(b.Src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.Src, err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dst, &st); err != nil {
			return fmt.Errorf("statfs %s: %w", dst, err)
		}
		// Keep the flags locked by the original mount; add read-only, nosuid, nodev.
		flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID | unix.MS_NODEV)
		if b.Dev {
			flags &^= unix.MS_NODEV
		}
		for _, f := range [][2]int64{{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
			{unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME}} {
			if st.Flags&f[0] != 0 {
				flags |= uintptr(f[1])
			}
		}
		if !b.RW {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("", dst, "", flags, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", b.Dst, err)
		}
	}
	for _, l := range s.Symlinks {
		if err := os.Symlink(l[1], filepath.Join(root, l[0])); err != nil {
			return err
		}
	}
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("remount the root read-only: %w", err)
	}
	return nil
}

// dropCaps empties the bounding set and the capability sets of this thread, so that the plugin (root
// of its user namespace) executes with no capability at all, there or anywhere.
func dropCaps() error {
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return clearCaps()
}

// clearCaps empties the ambient, inheritable, permitted and effective sets of this thread (no
// capability needed; the bounding set needs CAP_SETPCAP, see dropCaps).
func clearCaps() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// landlockRuleset makes the ruleset this thread (which then executes the plugin) enforces: execute
// only the plugin and its loader, read only the libraries and name-service files, write only the socket
// directory; no signals or abstract unix sockets outside the sandbox; with NetRules, TCP bind only to
// BindPorts. Rules hold on inodes, so it is made from host paths before the root changes.
func landlockRuleset(s *spec) (int, uint32, error) {
	cfgs := []landlock.Config{landlock.V1, landlock.V2, landlock.V3, landlock.V4, landlock.V5, landlock.V6, landlock.V7}
	cfg := cfgs[min(s.Landlock, len(cfgs))-1]
	cfg.HandledAccessNet = 0
	var rules []landlock.Rule
	if s.NetRules {
		cfg.HandledAccessNet = ll.AccessNetBindTCP
		for _, port := range s.BindPorts {
			rules = append(rules, landlock.BindTCP(port))
		}
	}
	exe := landlock.AccessFSSet(ll.AccessFSExecute | ll.AccessFSReadFile)
	rd := landlock.AccessFSSet(ll.AccessFSReadFile | ll.AccessFSReadDir)
	rules = append(rules, landlock.PathAccess(exe, s.PluginPath))
	if s.Interp != "" {
		rules = append(rules, landlock.PathAccess(exe, s.Interp))
	}
	if len(s.ReadDirs) > 0 {
		rules = append(rules, landlock.PathAccess(rd, s.ReadDirs...))
	}
	for _, f := range s.ReadFiles {
		rules = append(rules, landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile), f))
	}
	if s.Exec != nil {
		rules = append(rules, s.Exec.landlockRules(cfg)...)
	}
	if s.SocketDir != "" {
		rules = append(rules, landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile|ll.AccessFSReadDir|ll.AccessFSWriteFile|
			ll.AccessFSMakeSock|ll.AccessFSMakeReg|ll.AccessFSRemoveFile|ll.AccessFSTruncate), s.SocketDir))
	}
	fd, flags, err := cfg.NewRulesetFD(rules...)
	if err != nil {
		return -1, 0, err
	}
	if fd < 0 {
		return -1, 0, fmt.Errorf("nothing to enforce at ABI %d", s.Landlock)
	}
	return fd, flags, nil
}

// allowed is the seccomp allow-list: what a Go transport plugin (runtime, cgo loader, network, the
// go-plugin unix socket) needs. Everything else fails with EPERM; clone3 fails with ENOSYS so the C
// library falls back to clone, whose flags the filter can check. Not on it, among others: ptrace,
// process_vm_readv/writev, mount, umount2, pivot_root, unshare, setns, bpf, keyctl, add_key,
// request_key, kexec_*, *_module, perf_event_open, userfaultfd, io_uring_*, execve, personality,
// chroot, setuid and the rest of the credential calls.
var allowed = []string{
	// memory, threads, scheduling, time
	"brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "mincore", "membarrier", "mlock", "munlock",
	"futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "arch_prctl",
	"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_getscheduler", "getpriority",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
	"timer_create", "timer_settime", "timer_gettime", "timer_delete", "setitimer", "getitimer",
	"timerfd_create", "timerfd_settime", "timerfd_gettime",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend", "rt_sigqueueinfo",
	"rt_tgsigqueueinfo", "sigaltstack", "tgkill", "tkill", "kill", "restart_syscall", "pause",
	"exit", "exit_group", "wait4", "waitid",
	"getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
	"getpgrp", "getpgid", "getsid", "uname", "sysinfo", "getrlimit", "prlimit64", "getrusage", "times", "getcpu",
	"getrandom", "prctl", "capget",
	// descriptors and files (Landlock and the mount namespace decide which)
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"close", "close_range", "dup", "dup2", "dup3", "fcntl", "ioctl", "lseek", "flock", "fsync", "fdatasync", "ftruncate",
	"open", "openat", "openat2", "creat", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
	"access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64", "getcwd", "chdir", "fchdir",
	"unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "fchmod", "fchmodat", "umask",
	"utimensat", "fadvise64", "sendfile", "splice", "tee", "copy_file_range", "memfd_create", "pipe", "pipe2",
	"eventfd2", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
	"poll", "ppoll", "select", "pselect6", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
	// network
	"socketpair", "connect", "accept", "accept4", "bind", "listen", "shutdown", "getsockname",
	"getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
}

// cloneThreadFlags: threads only (CLONE_THREAD set); fork and new namespaces are refused.
const cloneNSFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP

// ipprotoMPTCP is IPPROTO_MPTCP.
const ipprotoMPTCP = 262

func applySeccomp() error {
	info, err := arch.GetInfo("")
	if err != nil {
		return err
	}
	var names []string
	for _, n := range allowed {
		if _, ok := info.SyscallNames[n]; ok {
			names = append(names, n)
		}
	}
	policy := seccomp.Policy{
		DefaultAction: seccomp.ActionErrno, // EPERM
		Syscalls: []seccomp.SyscallGroup{
			{Action: seccomp.ActionAllow, Names: names},
			{Action: seccomp.ActionAllow, NamesWithCondtions: []seccomp.NameWithConditions{
				// threads: CLONE_THREAD set and no namespace flag
				{Name: "clone", Conditions: seccomp.ArgumentConditions{
					{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD},
					{Argument: 0, Operation: seccomp.BitsNotSet, Value: cloneNSFlags},
				}},
				// sockets, but not Multipath TCP, which Landlock's TCP port rules do not see (Go falls
				// back to TCP)
				{Name: "socket", Conditions: seccomp.ArgumentConditions{
					{Argument: 2, Operation: seccomp.NotEqual, Value: ipprotoMPTCP},
				}},
				// the one exec: the checked plugin descriptor, by AT_EMPTY_PATH
				{Name: "execveat", Conditions: seccomp.ArgumentConditions{
					{Argument: 0, Operation: seccomp.Equal, Value: pluginFD},
					{Argument: 4, Operation: seccomp.Equal, Value: unix.AT_EMPTY_PATH},
				}},
			}},
			{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS), Names: []string{"clone3"}},
		},
	}
	return seccomp.LoadFilter(seccomp.Filter{NoNewPrivs: true, Flag: seccomp.FilterFlagTSync, Policy: policy})
}
