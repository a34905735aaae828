// Command hostile is a malicious exec handler for the confinement tests of agent/tasks: each mode tries
// one thing a confined handler must not manage, prints what it got to stdout and exits 0 when it
// succeeded, or prints the error to stderr and exits 1.
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: hostile MODE [ARG]"))
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "net": // connect to a listener of the host
		c, err := net.DialTimeout("tcp", arg, 2*time.Second)
		if err != nil {
			fail(err)
		}
		c.Close()
		fmt.Println("CONNECTED")
	case "read": // read a file of the agent's home
		b, err := os.ReadFile(arg)
		if err != nil {
			fail(err)
		}
		fmt.Printf("READ %s\n", b)
	case "keep": // leave files behind: in the work directory, outside it, and a process that outlives the task
		if err := os.WriteFile("kept", []byte("x"), 0o644); err != nil {
			fail(err)
		}
		if err := os.WriteFile(arg, []byte("x"), 0o644); err == nil {
			fmt.Println("WROTE OUTSIDE")
		}
		if err := os.MkdirAll("sub/dir", 0o755); err != nil {
			fail(err)
		}
		c := exec.Command(os.Args[0], "sleep")
		if err := c.Start(); err == nil {
			fmt.Println("SPAWNED", c.Process.Pid)
		}
		fmt.Println("KEPT")
	case "sleep":
		time.Sleep(time.Hour)
	case "fork": // a fork bomb: start children until the kernel refuses
		n, _ := strconv.Atoi(arg)
		var kids []*exec.Cmd
		for i := 0; i < n; i++ {
			c := exec.Command(os.Args[0], "sleep")
			if err := c.Start(); err != nil {
				fail(fmt.Errorf("after %d processes: %w", i, err))
			}
			kids = append(kids, c)
		}
		fmt.Println("FORKED", len(kids))
	case "mem": // allocate (and touch) up to ARG MiB
		n, _ := strconv.Atoi(arg)
		var keep [][]byte
		for i := 0; i < n; i += 16 {
			b := make([]byte, 16<<20)
			for j := range b {
				if j%4096 == 0 {
					b[j] = 1
				}
			}
			keep = append(keep, b)
		}
		fmt.Println("ALLOCATED", len(keep)*16, "MiB")
	case "cpu": // spin
		x := 0
		for {
			x++
		}
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}
