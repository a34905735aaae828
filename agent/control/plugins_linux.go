package control

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/custos-agent/custos/agent/rbac"
)

// The control socket serves people, not plugins (issue 11, threat model section 2). The first wall is the
// plugin sandbox (a filesystem view without the home); this is the second: the server asks, for every
// caller, whether its process is a transport plugin or descends from one, and refuses it when so.

// userHZ is the unit of /proc/<pid>/stat's start time (USER_HZ, 100 on every Linux architecture Go
// supports but alpha).
const userHZ = 100

// maxAncestry bounds the walk up a caller's ancestry (a process tree is rarely more than a few dozen deep;
// deeper is refused rather than walked for ever).
const maxAncestry = 4096

// maxRetries bounds the re-reads of a process whose parent changed under the walk (it exited).
const maxRetries = 8

// RefusePluginProcesses returns a Config.RefuseCaller that refuses a caller whose process is one of
// plugins() (the live transport plugin processes) or descends from one, found by walking the caller's
// ancestry in /proc (each process's parent, up to pid 1).
//
// Races and pid reuse: SO_PEERCRED gives the pid at connect time. The caller must have started no later
// than the check (a younger process at that pid is a reuse: the caller exited, refused), a parent must have
// started no later than its child (else the parent's pid was reused: the child's parent is read again), and
// the caller must still be the same process after the walk. A caller that cannot be checked (it exited, its
// /proc entry is unreadable, its ancestry is deeper than maxAncestry) is refused while plugins run.
//
// What it cannot see: a plugin's descendant that was orphaned (its parent exited, so the kernel made init
// or a subreaper its parent) no longer descends from the plugin; the plugin sandbox's PID namespace, whose
// init is the plugin's side, keeps orphans inside the plugin's tree. A caller in no PID namespace the daemon
// sees (pid 0: outside the daemon's namespace) cannot be a plugin, whose processes all live below the
// daemon.
func RefusePluginProcesses(plugins func() []int) func(rbac.Cred) (bool, string) {
	return func(c rbac.Cred) (bool, string) {
		if c.PID <= 0 {
			return false, ""
		}
		set := map[int]bool{}
		for _, p := range plugins() {
			if p > 0 {
				set[p] = true
			}
		}
		if len(set) == 0 {
			return false, ""
		}
		now, err := bootTicks()
		if err != nil {
			return true, fmt.Sprintf("caller pid %d cannot be checked (%v)%s", c.PID, err, refusedSuffix)
		}
		return checkAncestry(int(c.PID), set, now)
	}
}

const refusedSuffix = ": the control socket serves people, not plugins"

// checkAncestry walks caller's ancestry looking for one of plugins; now is the time of the check in
// /proc start-time ticks.
func checkAncestry(caller int, plugins map[int]bool, now uint64) (bool, string) {
	first, err := readStat(caller)
	if err != nil {
		return true, fmt.Sprintf("caller pid %d cannot be checked (%v)%s", caller, err, refusedSuffix)
	}
	if first.start > now {
		return true, fmt.Sprintf("caller pid %d exited before it could be checked (its pid belongs to a younger process)%s", caller, refusedSuffix)
	}
	cur, st := caller, first
	retries := 0
	for depth := 0; ; depth++ {
		if plugins[cur] {
			if cur == caller {
				return true, fmt.Sprintf("caller pid %d is transport plugin process %d%s", caller, cur, refusedSuffix)
			}
			return true, fmt.Sprintf("caller pid %d descends from transport plugin process %d%s", caller, cur, refusedSuffix)
		}
		if st.ppid <= 0 {
			break // pid 1, kthreadd, or a parent outside the daemon's PID namespace
		}
		if depth >= maxAncestry {
			return true, fmt.Sprintf("caller pid %d: ancestry deeper than %d processes%s", caller, maxAncestry, refusedSuffix)
		}
		parent, err := readStat(st.ppid)
		if err != nil || parent.start > st.start {
			// The parent exited (and perhaps its pid was reused) while we walked: read cur again, whose
			// parent is now its new one.
			if retries++; retries > maxRetries {
				return true, fmt.Sprintf("caller pid %d: its ancestry kept changing during the check%s", caller, refusedSuffix)
			}
			again, err := readStat(cur)
			if err != nil || again.start != st.start {
				return true, fmt.Sprintf("caller pid %d exited during the check%s", caller, refusedSuffix)
			}
			st = again
			depth--
			continue
		}
		cur, st = st.ppid, parent
	}
	// The caller must be the same process it was when the walk began.
	last, err := readStat(caller)
	if err != nil || last.start != first.start {
		return true, fmt.Sprintf("caller pid %d exited during the check%s", caller, refusedSuffix)
	}
	return false, ""
}

type procStat struct {
	ppid  int
	start uint64 // clock ticks after boot
}

// readStat reads a process's parent and start time from /proc/<pid>/stat. The command name (field 2) may
// hold spaces and parentheses: the fields are counted from the last ')'.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime).
	if len(f) < 20 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return procStat{ppid: ppid, start: start}, nil
}

// bootTicks is the time since boot in the unit of /proc/<pid>/stat's start time.
func bootTicks() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_BOOTTIME): %w", err)
	}
	return uint64(ts.Sec)*userHZ + uint64(ts.Nsec)/(1e9/userHZ), nil
}
