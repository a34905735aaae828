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
	fmt.Fprintln(os.Stderr, string(b))
}

func main() {
	attack()
	b, _ := json.Marshal(map[string]any{"@level": "info", "@message": "attack done"})
	fmt.Fprintln(os.Stderr, string(b))
	plugin.Serve(tcp.New(plugin.Logger(tcp.Name)))
}

func attack() {
	home := os.Getenv("ATTACK_HOME")
	pid, _ := strconv.Atoi(os.Getenv("ATTACK_PID"))

	// The control socket: connect, then a status request and a grant request (one JSON line each).
	for _, req := range []string{"status", "grant"} {
		report("control_"+req, control(os.Getenv("ATTACK_CONTROL"), os.Getenv("ATTACK_CONTROL_"+strings.ToUpper(req))))
	}
	// The home directory and the secrets in it or named by the configuration.
	_, err := os.ReadDir(home)
	report("read_home", err)
	for _, f := range []struct{ name, path string }{{"read_kel", filepath.Join(home, "kel.jsonl")},
		{"read_key", os.Getenv("ATTACK_KEY")}, {"read_pin", os.Getenv("ATTACK_PIN")}} {
		_, err := os.ReadFile(f.path)
		report(f.name, err)
	}
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
	// Writing into the home.
	report("write_home", os.WriteFile(filepath.Join(home, "pwned"), []byte("pwned"), 0o600))
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
