package tasks

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// The exec handler's processes are found through /proc: a command may start descendants that leave
// its process group (setsid) and so survive the group kill. Two kinds are found and killed: the
// descendants of the command while it still runs (by parent pid), and every process that still holds
// the write end of the task's output pipes (an escaped process that keeps stdout open would otherwise
// hold the task). An escaped descendant whose parent has exited and that closed its output is not
// found; docs/threat-model.md says so (run the agent in its own cgroup to bound that).

// descendants returns the pids of every descendant of pid, read from /proc/*/stat.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentPid(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	seen := map[int]bool{pid: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// parentPid reads the parent pid of p from /proc/p/stat (the field after the state, after the ')'
// that ends the command name, which may itself hold spaces and parentheses).
func parentPid(p int) (int, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "stat"))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(string(f[1]))
	return pp, err == nil
}

// pipeHolders returns the pids of the processes other than this one that hold a descriptor of one of
// the pipes (identified by their inodes).
func pipeHolders(inodes []uint64) []int {
	want := map[string]bool{}
	for _, ino := range inodes {
		want[fmt.Sprintf("pipe:[%d]", ino)] = true
	}
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil || p == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name(), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && want[l] {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// inode returns the inode of an open file (a pipe end).
func inode(f *os.File) uint64 {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	return st.Ino
}

func killAll(pids []int) {
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}
