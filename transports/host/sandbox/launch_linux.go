package sandbox

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// DefaultUser is the account plugins run as when the daemon may change uid (root, or CAP_SETUID,
// CAP_SETGID and CAP_CHOWN) and none is configured.
const DefaultUser = "custos-transport"

// nobody is the fallback uid/gid when DefaultUser does not exist.
const nobody = 65534

// uidDropCaps are the capabilities a non-root daemon needs to run its plugins under another uid: set
// the user namespace's uid and gid maps to that account, and give it the per-launch socket directory.
var uidDropCaps = []struct {
	n    int
	name string
}{{unix.CAP_SETUID, "CAP_SETUID"}, {unix.CAP_SETGID, "CAP_SETGID"}, {unix.CAP_CHOWN, "CAP_CHOWN"}}

// privilege is how this daemon may change its plugins' uid.
type privilege struct {
	root    bool   // euid 0
	capable bool   // not root, but CAP_SETUID, CAP_SETGID and CAP_CHOWN are effective
	partial string // not root, some of those effective but not all: what is missing
}

// may reports whether plugins run under another uid than the daemon's.
func (p privilege) may() bool { return p.root || p.capable }

// daemonPrivilege reads the effective capabilities of this thread's process (capget).
func daemonPrivilege() privilege {
	if os.Geteuid() == 0 {
		return privilege{root: true}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return privilege{}
	}
	var have, missing []string
	for _, c := range uidDropCaps {
		if data[c.n/32].Effective&(1<<(uint(c.n)%32)) != 0 {
			have = append(have, c.name)
		} else {
			missing = append(missing, c.name)
		}
	}
	switch {
	case len(missing) == 0:
		return privilege{capable: true}
	case len(have) > 0:
		return privilege{partial: strings.Join(have, ", ") + " without " + strings.Join(missing, ", ")}
	}
	return privilege{}
}

// trampolineArg0 is the argv[0] that makes this package's init run the trampoline.
const trampolineArg0 = "custos-transport-sandbox"

// maxReport bounds what the host reads from the trampoline's status pipe.
const maxReport = 64 << 10

// ProbeKernel reports what this kernel offers a plugin sandbox.
func ProbeKernel() Kernel {
	var k Kernel
	if v, err := ll.LandlockGetABIVersion(); err != nil {
		k.LandlockErr = "landlock_create_ruleset: " + err.Error()
	} else {
		k.LandlockABI = v
	}
	if _, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0); err != nil {
		k.SeccompErr = "prctl(PR_GET_SECCOMP): " + err.Error()
	}
	if _, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err != nil {
		k.NoNewPrivsErr = "prctl(PR_GET_NO_NEW_PRIVS): " + err.Error()
	}
	k.UserNSErr = probeUserNS()
	return k
}

func probeUserNS() string {
	if _, err := os.Stat("/proc/self/ns/user"); err != nil {
		return "the kernel has no user namespaces"
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return "user.max_user_namespaces is 0"
	}
	if os.Geteuid() != 0 {
		if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && strings.TrimSpace(string(b)) == "0" {
			return "kernel.unprivileged_userns_clone is 0 and the daemon is not root"
		}
	}
	return ""
}

// Options describe one sandboxed launch.
type Options struct {
	Mode Mode
	// Kernel is the probe result (ProbeKernel, or a simulated kernel in tests).
	Kernel Kernel
	// User is the account for the plugin when the daemon is root or holds CAP_SETUID, CAP_SETGID and
	// CAP_CHOWN ("" = DefaultUser if it exists, else uid/gid 65534). It must be empty otherwise.
	User string
	// SocketDir is go-plugin's per-launch socket directory: the plugin's only writable place.
	SocketDir string
	// BindPorts, when non-nil, are the only TCP ports the plugin may bind (0 = an ephemeral port).
	BindPorts []uint16
	// Path is the plugin's configured path (its argv[0], and its Landlock rule without a mount namespace).
	Path string
	// Exec, when set, confines a task handler instead of a transport plugin (ConfineExec; issue 16).
	Exec *ExecConfinement
}

// spec is what the host tells the trampoline (JSON over a pipe).
type spec struct {
	Root       string      `json:"root"` // empty directory to build the new root on; "" = no mount namespace
	UserNS     bool        `json:"userns"`
	PIDNS      bool        `json:"pidns"`
	Binds      []bindSpec  `json:"binds"`
	Symlinks   [][2]string `json:"symlinks"` // path, target
	SocketDir  string      `json:"socket_dir"`
	PluginPath string      `json:"plugin_path"` // the plugin for its Landlock rule
	Interp     string      `json:"interp"`
	ReadDirs   []string    `json:"read_dirs"`
	ReadFiles  []string    `json:"read_files"`
	Landlock   int         `json:"landlock"`
	BindPorts  []uint16    `json:"bind_ports"`
	NetRules   bool        `json:"net_rules"`
	Seccomp    bool        `json:"seccomp"`
	NoNewPrivs bool        `json:"no_new_privs"`
	Argv0      string      `json:"argv0"`
	UID        int         `json:"uid"`
	GID        int         `json:"gid"`
	UIDDrop    bool        `json:"uid_drop"`
	// GroupSocket: the socket directory is the plugin's, with the daemon's group (setgid); the plugin
	// runs with umask 007 so its socket is group-writable (a non-root daemon connects through its group).
	GroupSocket bool `json:"group_socket"`
	// Exec handlers (Options.Exec): see exec_linux.go.
	Exec *execSpec `json:"exec,omitempty"`
}

type bindSpec struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
	Dir bool   `json:"dir"`
	RW  bool   `json:"rw"`
	// Dev keeps device nodes usable (no nodev): /dev/null and the like for exec handlers.
	Dev bool `json:"dev,omitempty"`
}

// Launch is a prepared sandboxed start: call Wrap, start the command, then Wait.
type Launch struct {
	status    *os.File   // host end of the status pipe
	childEnds []*os.File // the child's ends, closed here once it started
	root      string     // mountpoint directory to remove after the process ended
	planned   Protections
	// lent: the socket directory was chowned to the plugin's uid by a non-root daemon; Cleanup gives it
	// back (the daemon removes it from the sticky temporary directory afterwards).
	lent string
	// userNS: the child is created in a new user namespace (its uid and gid maps are written by this
	// process, see Start).
	userNS bool
}

// Wrap rewrites cmd, whose ExtraFiles[0] (descriptor 3 in the child) is the checked plugin binary, so
// that it starts through the trampoline. Mode Off leaves cmd alone and returns a nil Launch. With Mode
// Required, a protection the kernel lacks is a *MissingError and cmd is not touched.
func Wrap(cmd *exec.Cmd, o Options) (*Launch, error) {
	if o.Mode == Off {
		return nil, nil
	}
	if len(cmd.ExtraFiles) == 0 {
		return nil, errors.New("sandbox: the plugin binary must be descriptor 3")
	}
	if o.Mode != Required && o.Mode != BestEffort {
		return nil, fmt.Errorf("sandbox: unknown mode %q", o.Mode)
	}
	k := o.Kernel
	if o.Mode == Required {
		missing := map[string]string{}
		for _, n := range allNames {
			if n == UIDDrop {
				continue
			}
			if why := k.why(n); why != "" {
				missing[n] = why
			}
		}
		if len(missing) > 0 {
			return nil, &MissingError{Missing: missing}
		}
	}
	priv := daemonPrivilege()
	if o.Mode == Required && priv.partial != "" {
		return nil, &MissingError{Missing: map[string]string{UIDDrop: "the daemon (uid " + strconv.Itoa(os.Geteuid()) +
			") has " + priv.partial + "; running plugins under their own uid needs all three (configs/custos.service)"}}
	}
	uid, gid, err := plugUser(o.User, priv)
	if err != nil {
		return nil, err
	}
	// drop: the plugin runs under another host uid than the daemon's.
	drop := priv.may() && uid != os.Geteuid()
	useNS := k.why(UserNS) == ""
	s := &spec{UserNS: useNS, PIDNS: useNS, SocketDir: o.SocketDir, Argv0: o.Path, UID: uid, GID: gid,
		NoNewPrivs: k.why(NoNewPrivs) == "", Seccomp: k.why(Seccomp) == "", UIDDrop: drop,
		GroupSocket: drop && !priv.root && o.SocketDir != ""}
	if k.why(Landlock) == "" {
		s.Landlock = min(k.LandlockABI, maxLandlockABI)
		if o.BindPorts != nil && s.Landlock >= 4 {
			s.NetRules, s.BindPorts = true, append([]uint16(nil), o.BindPorts...)
		}
	}
	interp, err := elfInterp(cmd.ExtraFiles[0])
	if err != nil {
		return nil, fmt.Errorf("sandbox: read plugin %s: %w", o.Path, err)
	}
	s.Interp = interp
	// What a dynamically linked plugin needs to be loaded and to resolve names, read-only.
	var libDirs []string
	for _, d := range []string{"/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			if t, err := os.Readlink(d); err == nil {
				s.Symlinks = append(s.Symlinks, [2]string{d, t})
			}
		case fi.IsDir():
			libDirs = append(libDirs, d)
		}
	}
	var files []string
	for _, f := range []string{"/etc/ld.so.cache", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf",
		"/etc/gai.conf", "/etc/services", "/etc/protocols"} {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() {
			files = append(files, f)
		}
	}
	if interp == "" {
		libDirs = nil
	}
	s.ReadDirs, s.ReadFiles = libDirs, files
	if o.Exec != nil {
		s.NetRules, s.BindPorts = false, nil
		o.Exec.plan(s)
	}
	root := ""
	if useNS {
		// The new root's mountpoint lives in go-plugin's per-launch directory, which go-plugin removes
		// with the plugin.
		if o.SocketDir != "" {
			root = filepath.Join(o.SocketDir, ".root")
			err = os.Mkdir(root, 0o700)
		} else {
			root, err = os.MkdirTemp("", "custos-sandbox-")
		}
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		s.Root = root
		for _, d := range libDirs {
			s.Binds = append(s.Binds, bindSpec{Src: d, Dst: d, Dir: true})
		}
		for _, f := range files {
			src, err := filepath.EvalSymlinks(f)
			if err != nil {
				continue
			}
			s.Binds = append(s.Binds, bindSpec{Src: src, Dst: f})
		}
		if o.SocketDir != "" {
			s.Binds = append(s.Binds, bindSpec{Src: o.SocketDir, Dst: o.SocketDir, Dir: true, RW: true})
		}
		if o.Exec != nil {
			s.Binds = append(s.Binds, o.Exec.binds(s)...)
		}
	}
	// Landlock's rules hold on inodes: the trampoline makes them (from these host paths, the plugin's
	// from its checked descriptor) before it changes root, and enforces them after.
	s.PluginPath = "/proc/self/fd/3"
	lent := ""
	switch {
	case drop && priv.root:
		// The plugin's uid must reach its own directories; nothing else of the host's changes owner.
		for _, d := range []string{root, o.SocketDir, o.Exec.workDir()} {
			if d == "" {
				continue
			}
			if err := os.Chown(d, uid, gid); err != nil {
				cleanup(root)
				return nil, fmt.Errorf("sandbox: chown %s to the plugin's uid %d: %w", d, uid, err)
			}
		}
	case drop && o.Exec != nil:
		// A non-root daemon holding CAP_CHOWN lends the work directory like a socket directory.
		if err := os.Chmod(o.Exec.WorkDir, os.ModeSetgid|0o770); err != nil {
			cleanup(root)
			return nil, fmt.Errorf("sandbox: chmod %s: %w", o.Exec.WorkDir, err)
		}
		if err := os.Chown(o.Exec.WorkDir, uid, os.Getegid()); err != nil {
			cleanup(root)
			return nil, fmt.Errorf("sandbox: chown %s to the handler's uid %d: %w", o.Exec.WorkDir, uid, err)
		}
		s.GroupSocket = true
		lent = o.Exec.WorkDir
	case drop && o.SocketDir != "":
		// A non-root daemon (CAP_CHOWN, no DAC override) keeps reaching the directory through its
		// group: the plugin's uid owns it, the daemon's group has it, setgid so that the plugin's
		// socket is the daemon's group's too (the trampoline's umask 007 makes it group-writable).
		// Nothing else of the host's changes owner; the new root's mountpoint inside needs no access.
		if err := os.Chmod(o.SocketDir, os.ModeSetgid|0o770); err != nil {
			cleanup(root)
			return nil, fmt.Errorf("sandbox: chmod %s: %w", o.SocketDir, err)
		}
		if err := os.Chown(o.SocketDir, uid, os.Getegid()); err != nil {
			cleanup(root)
			return nil, fmt.Errorf("sandbox: chown %s to the plugin's uid %d: %w", o.SocketDir, uid, err)
		}
		lent = o.SocketDir
	}
	raw, err := json.Marshal(s)
	if err != nil {
		cleanup(root)
		return nil, err
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		cleanup(root)
		return nil, err
	}
	if _, err := specW.Write(raw); err != nil { // a few KiB: fits the pipe buffer
		_ = specW.Close()
		_ = specR.Close()
		cleanup(root)
		return nil, fmt.Errorf("sandbox: write spec: %w", err)
	}
	_ = specW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		_ = specR.Close()
		cleanup(root)
		return nil, err
	}
	specFD := 3 + len(cmd.ExtraFiles)
	cmd.ExtraFiles = append(cmd.ExtraFiles, specR, statusW)
	cmd.Path = "/proc/self/exe"
	cmd.Args = []string{trampolineArg0, strconv.Itoa(specFD), strconv.Itoa(specFD + 1)}
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	switch {
	case useNS:
		attr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID
		if o.Exec != nil && !o.Exec.Network {
			attr.Cloneflags |= syscall.CLONE_NEWNET // no interface but a loopback that is down
		}
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
		if priv.may() {
			// The daemon (root, or holding CAP_SETUID and CAP_SETGID, which writing a map to another
			// uid needs) stays its own host uid (unmapped there) until it switches to the namespace's
			// root, which is the plugin's unprivileged account; the daemon's supplementary groups are
			// dropped on the way.
			attr.GidMappingsEnableSetgroups = true
			attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
		}
	case drop:
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	cmd.SysProcAttr = attr
	// specR and statusW stay open in this process until the child has its copies (Started, Abort).
	l := &Launch{status: statusR, childEnds: []*os.File{specR, statusW}, root: root, lent: lent, userNS: useNS}
	l.planned = Protections{UserNS: s.UserNS, MountNS: s.Root != "", PIDNS: s.PIDNS, NoNewPrivs: s.NoNewPrivs,
		Seccomp: s.Seccomp, Landlock: s.Landlock, LandlockNet: s.NetRules, CapsDropped: s.UserNS, UID: uid, GID: gid, UIDDrop: s.UIDDrop}
	if o.Exec != nil {
		l.planned.NetNS = useNS && !o.Exec.Network
		l.planned.Limits = s.Exec.Limits != (Limits{})
	}
	if !priv.may() {
		l.planned.UID, l.planned.GID = os.Getuid(), os.Getgid()
	}
	return l, nil
}

// Start starts cmd (rewritten by Wrap; a nil Launch starts it as it is). The uid and gid maps of a new
// user namespace are written by this process into /proc/<child>/uid_map, which the kernel gives to root
// when the process is non-dumpable (SetNonDumpable): a non-root daemon cannot open it then. So a
// non-root daemon is dumpable while it starts the child, and non-dumpable again once the child executed
// the trampoline (cmd.Start returns after that). While dumpable, a process of the daemon's uid could
// ptrace it only when its own permitted capabilities include the daemon's (a daemon holding
// CAP_SETUID, CAP_SETGID and CAP_CHOWN stays out of reach of its uid's other processes).
func (l *Launch) Start(cmd *exec.Cmd) error {
	if l == nil || !l.userNS || os.Geteuid() == 0 {
		return cmd.Start()
	}
	restore, err := dumpableWhile()
	if err != nil {
		return err
	}
	defer restore()
	return cmd.Start()
}

// Started waits for the trampoline's report once the command started: the protections applied, or why
// it failed (then the process is exiting and cmd.Wait reaps it). The status pipe reaches EOF when the
// plugin was executed (close-on-exec) or the trampoline exited.
func (l *Launch) Started(ctx context.Context) (Protections, error) {
	// Close this process's copies of the child's ends, so EOF means the child's copy is gone too.
	l.closeChildEnds()
	defer func() { _ = l.status.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		_ = l.status.SetReadDeadline(dl)
	} else {
		_ = l.status.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	sc := bufio.NewScanner(io.LimitReader(l.status, maxReport))
	var got *Protections
	var failure string
	for sc.Scan() {
		line := sc.Text()
		if msg, ok := strings.CutPrefix(line, "error "); ok {
			failure = msg
			continue
		}
		if raw, ok := strings.CutPrefix(line, "ok "); ok {
			var p Protections
			if err := json.Unmarshal([]byte(raw), &p); err != nil {
				failure = "unreadable report: " + err.Error()
				continue
			}
			got = &p
		}
	}
	if err := sc.Err(); err != nil && failure == "" {
		failure = "reading the report: " + err.Error()
	}
	if failure != "" {
		return Protections{}, fmt.Errorf("%w: %s", ErrFailed, failure)
	}
	if got == nil {
		return Protections{}, fmt.Errorf("%w: the trampoline ended without a report", ErrFailed)
	}
	got.UID, got.GID, got.UIDDrop = l.planned.UID, l.planned.GID, l.planned.UIDDrop
	got.NetNS = l.planned.NetNS
	if l.planned.Limits && !got.Limits {
		return Protections{}, fmt.Errorf("%w: limits were planned but not applied", ErrFailed)
	}
	// The trampoline fails rather than applying less than planned; check anyway.
	for _, n := range allNames {
		if l.planned.Has(n) && !got.Has(n) {
			return Protections{}, fmt.Errorf("%w: %s was planned but not applied", ErrFailed, n)
		}
	}
	return *got, nil
}

func (l *Launch) closeChildEnds() {
	for _, f := range l.childEnds {
		_ = f.Close()
	}
	l.childEnds = nil
}

// Abort releases a Launch whose command did not start.
func (l *Launch) Abort() {
	if l == nil {
		return
	}
	l.closeChildEnds()
	_ = l.status.Close()
	cleanup(l.root)
}

// Cleanup removes the launch's mountpoint directory (after the process ended).
func (l *Launch) Cleanup() {
	if l == nil {
		return
	}
	cleanup(l.root)
	if l.lent != "" {
		_ = os.Chown(l.lent, os.Geteuid(), os.Getegid())
		l.lent = ""
	}
}

func cleanup(root string) {
	if root != "" {
		_ = os.Remove(root)
	}
}

// plugUser resolves the plugin's host uid/gid: the configured or default account when the daemon may
// change uid, the daemon's own otherwise.
func plugUser(name string, priv privilege) (int, int, error) {
	if !priv.may() {
		if name != "" {
			return 0, 0, fmt.Errorf("sandbox: transports[].user %q needs the daemon to run as root or with CAP_SETUID, CAP_SETGID and CAP_CHOWN (it runs as uid %d without them; plugins run as that uid inside their own user namespace)", name, os.Geteuid())
		}
		return os.Getuid(), os.Getgid(), nil
	}
	explicit := name != ""
	if !explicit {
		name = DefaultUser
	}
	u, err := user.Lookup(name)
	if err != nil {
		if !explicit {
			return nobody, nobody, nil
		}
		if n, perr := strconv.Atoi(name); perr == nil && n > 0 {
			return n, n, nil
		}
		return 0, 0, fmt.Errorf("sandbox: transports[].user %q: %w (create it, e.g. with the sysusers entry, or name another unprivileged account)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 || gid == 0 {
		return 0, 0, fmt.Errorf("sandbox: transports[].user %q is root (uid %d gid %d); plugins must run unprivileged", name, uid, gid)
	}
	return uid, gid, nil
}

// dumpable counts the starts in progress that need this process dumpable (Launch.Start). Dumpability
// is a property of the whole process, so this is the one piece of process-wide state here.
var dumpable struct {
	mu    sync.Mutex
	n     int
	reset bool // the process was non-dumpable before the first of them
}

// dumpableWhile makes the process dumpable until restore is called (the last caller restores
// non-dumpable, if it was).
func dumpableWhile() (restore func(), err error) {
	dumpable.mu.Lock()
	defer dumpable.mu.Unlock()
	if dumpable.n == 0 {
		v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		if err != nil {
			return nil, fmt.Errorf("sandbox: prctl(PR_GET_DUMPABLE): %w", err)
		}
		dumpable.reset = v == 0
		if dumpable.reset {
			if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
				return nil, fmt.Errorf("sandbox: prctl(PR_SET_DUMPABLE, 1): %w", err)
			}
		}
	}
	dumpable.n++
	return func() {
		dumpable.mu.Lock()
		defer dumpable.mu.Unlock()
		dumpable.n--
		if dumpable.n == 0 && dumpable.reset {
			_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
		}
	}, nil
}

// elfInterp returns the plugin's ELF interpreter (dynamic loader), "" for a static binary.
func elfInterp(f *os.File) (string, error) {
	ef, err := elf.NewFile(f)
	if err != nil {
		return "", err
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(io.LimitReader(p.Open(), 4096))
			if err != nil {
				return "", err
			}
			return strings.TrimRight(string(b), "\x00"), nil
		}
	}
	return "", nil
}

// SetNonDumpable makes this process non-dumpable (PR_SET_DUMPABLE 0): no process of the same uid can
// ptrace it or read its /proc/<pid>/mem and environ, and it leaves no core dump. The agent calls it
// first thing.
func SetNonDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	return nil
}

// Dumpable reports whether this process is dumpable.
func Dumpable() (bool, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return v != 0, err
}
