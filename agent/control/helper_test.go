package control

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// helperArg, as the first argument of the test binary, makes it a control-socket client instead of a test
// run (the tests start it with an empty environment, as a transport plugin is started, so the mode cannot
// travel in the environment).
const helperArg = "control-helper"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(helperMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// helperResult is what a helper process prints: its pid and the outcome of its call.
type helperResult struct {
	PID     int    `json:"pid"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// helperMain runs one helper mode, after a line on stdin (the test's go-ahead, sent once it has registered
// the helper's pid):
//
//	call <socket> <op>   calls op on the control socket and prints a helperResult;
//	spawn <socket> <op>  starts "call <socket> <op>" as its own child (empty environment), whose output it
//	                     passes on, and waits for it: the caller is then a grandchild of the test.
func helperMain(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: control-helper call|spawn <socket> <op>")
		return 2
	}
	mode, sock, op := args[0], args[1], args[2]
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "helper: no go-ahead on stdin:", err)
		return 2
	}
	switch mode {
	case "call":
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := Call(ctx, sock, op, nil, nil)
		res := helperResult{PID: os.Getpid(), OK: err == nil}
		if err != nil {
			res.Code, res.Message = CodeOf(err), err.Error()
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return 0
	case "spawn":
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
		cmd := exec.Command(exe, helperArg, "call", sock, op)
		cmd.Env = []string{}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			return 2
		}
		_, _ = in.Write([]byte("go\n"))
		_ = in.Close()
		if err := cmd.Wait(); err != nil {
			fmt.Fprintln(os.Stderr, "helper: grandchild:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", mode)
	return 2
}
