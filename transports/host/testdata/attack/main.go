// Command attack is a deliberately malicious transport plugin for the sandbox's attack test (ADR 0040):
// the real TCP transport plus, from the first instruction of main, every attempt a compromised plugin
// would make on the agent that launched it. The targets come from its environment (the test tells it
// everything: the worst case); each attempt's outcome is one hclog JSON line on stderr, which the host
// forwards to its log:
//
//	{"@level":"info","@message":"attack","attempt":NAME,"ok":BOOL,"err":TEXT,"errno":NUMBER}
//
// and a final {"@message":"attack done"}.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	ctl "github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tcp"
)

func report(attempt string, err error) {
	m := map[string]any{"@level": "info", "@message": "attack", "attempt": attempt, "ok": err == nil, "err": "", "errno": 0}
	if err != nil {
		m["err"] = err.Error()
		var en syscall.Errno
		if errors.As(err, &en) {
			m["errno"] = int(en)
		}
	}
	b, _ := json.Marshal(m)
	fmt.Fprintln(stderr, string(b))
}

// stderr is the process's standard error as the host reads it (go-plugin's Serve redirects os.Stderr).
var stderr = os.Stderr

// Targets built in with -ldflags -X (the end-to-end test, where the daemon gives a plugin no
// environment); the ATTACK_* environment variables override them.
var (
	home       string // the agent's home
	outsidePID string // a process of the agent's uid outside the sandbox, when the agent's own pid is hidden
	subject    string // an agent ID to issue a grant to
)

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	go func() { // from the first instruction, while the plugin serves (and keeps trying)
		attack()
		b, _ := json.Marshal(map[string]any{"@level": "info", "@message": "attack done"})
		fmt.Fprintln(stderr, string(b))
	}()
	plugin.Serve(tcp.New(plugin.Logger(tcp.Name)))
}

func attack() {
	home := env("ATTACK_HOME", home)
	// The agent is this plugin's parent, unless a PID namespace hides it (then getppid is 0).
	pid := os.Getppid()
	if pid == 0 {
		pid, _ = strconv.Atoi(env("ATTACK_PID", outsidePID))
	}
	sock := env("ATTACK_CONTROL", filepath.Join(home, "control.sock"))

	// The control socket: connect, then a status request and a grant request.
	if os.Getenv("ATTACK_CONTROL_STATUS") != "" { // the host test's stand-in: one line each way
		for _, req := range []string{"status", "grant"} {
			report("control_"+req, control(sock, os.Getenv("ATTACK_CONTROL_"+strings.ToUpper(req))))
		}
	} else { // the real daemon's control protocol; its socket appears after the plugins started: retry
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			var c net.Conn
			if c, err = net.DialTimeout("unix", sock, 5*time.Second); err == nil {
				_ = c.Close()
			}
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		report("control_connect", err)
		report("control_status", realControl(sock, "status", struct{}{}))
		report("control_grant", realControl(sock, "grant.issue", map[string]any{"subject": subject, "role": "task_submitter"}))
	}
	// The home directory and the secrets in it or named by the configuration.
	_, err := os.ReadDir(home)
	report("read_home", err)
	_, err = os.ReadFile(filepath.Join(home, "kel.jsonl"))
	report("read_kel", err)
	report("read_key", readKey(env("ATTACK_KEY", ""), filepath.Join(home, "keys")))
	_, err = os.ReadFile(env("ATTACK_PIN", filepath.Join(home, "passphrase")))
	report("read_pin", err)
	// The agent's environment and memory.
	_, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	report("read_environ", err)
	report("read_mem", readMem(pid))
	report("ptrace", ptrace(pid))
	// A shell.
	report("exec_sh", shell())
	// An abstract unix socket of the host (not a file: no mount namespace hides it).
	if a := os.Getenv("ATTACK_ABSTRACT"); a != "" {
		c, err := net.Dial("unix", "@"+a)
		if err == nil {
			_ = c.Close()
		}
		report("abstract_socket", err)
	}
	// Capabilities (root's, or a user namespace's root's).
	report("capabilities", caps())
	// Writing into the home.
	report("write_home", os.WriteFile(filepath.Join(home, "pwned"), []byte("pwned"), 0o600))
}

// readKey reads the key file path, or the first file in the key directory dir.
func readKey(path, dir string) error {
	if path == "" {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				path = filepath.Join(dir, e.Name())
				break
			}
		}
		if path == "" {
			return errors.New("no key file")
		}
	}
	_, err := os.ReadFile(path)
	return err
}

// realControl makes the call op on the daemon's control socket; a failed connect is returned as such
// (with its errno).
func realControl(sock, op string, args any) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	_ = c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out json.RawMessage
	return ctl.Call(ctx, sock, op, args, &out)
}

// caps succeeds when this process holds any effective capability.
func caps() error {
	hdr := struct {
		version uint32
		pid     int32
	}{0x20080522, 0} // _LINUX_CAPABILITY_VERSION_3
	var data [2]struct{ effective, permitted, inheritable uint32 }
	if _, _, e := syscall.RawSyscall(syscall.SYS_CAPGET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return e
	}
	if data[0].effective == 0 && data[1].effective == 0 {
		return syscall.EPERM // none: report as refused
	}
	return nil
}

// shell runs /bin/sh -c 'exit 7' and checks it ran.
func shell() error {
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 7"}, &syscall.ProcAttr{Files: []uintptr{2, 2, 2}})
	if err != nil {
		return err
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		return err
	}
	if ws.ExitStatus() != 7 {
		return fmt.Errorf("shell exited with %v", ws)
	}
	return nil
}

// control connects to the control socket and sends one request line; success is any answer.
func control(path, req string) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) == "" {
		return errors.New("empty answer")
	}
	return nil
}

// readMem reads a byte of the first readable mapping of pid through /proc/pid/mem.
func readMem(pid int) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(maps), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.HasPrefix(fields[1], "r") {
			continue
		}
		lo, _, _ := strings.Cut(fields[0], "-")
		addr, err := strconv.ParseUint(lo, 16, 64)
		if err != nil {
			continue
		}
		b := make([]byte, 1)
		_, err = f.ReadAt(b, int64(addr))
		return err
	}
	return errors.New("no readable mapping")
}

// ptrace seizes pid (without stopping it); the tracing thread then exits, which detaches.
func ptrace(pid int) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, detaching
		_, _, e := syscall.Syscall6(syscall.SYS_PTRACE, 0x4206 /* PTRACE_SEIZE */, uintptr(pid), 0, 0, 0, 0)
		if e != 0 {
			done <- e
			return
		}
		done <- nil
	}()
	return <-done
}
