package host_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports/host"
)

// syncBuffer is a log sink the supervisor's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPluginStoppedOnlyByItsHost (ADR 0088): a plugin process leads a process group of its own (a
// signal to the daemon's group does not reach it), ignores SIGTERM (systemd's KillMode=control-group
// sends it to every process of the service), and once the transport drains, a plugin that dies is not
// restarted.
func TestPluginStoppedOnlyByItsHost(t *testing.T) {
	var logs syncBuffer
	a := tcpHost(t, func(c *host.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	pid := a.T.PID()
	pgid, err := syscall.Getpgid(pid)
	if err != nil || pgid != pid {
		t.Errorf("plugin %d is in process group %d (%v), want its own (%d); the test's group is %d", pid, pgid, err, pid, syscall.Getpgrp())
	}
	if ign := sigIgnored(t, pid); ign&(1<<(uint(syscall.SIGTERM)-1)) == 0 {
		t.Errorf("plugin %d does not ignore SIGTERM (SigIgn %#x)", pid, ign)
	}

	a.T.Drain()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "not restarted") {
		if time.Now().After(deadline) {
			t.Fatalf("no report of the dead plugin within 20s:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case ev := <-a.Restarts:
		t.Fatalf("plugin restarted during the drain: %+v", ev)
	default:
	}
	if n := a.T.Restarts(); n != 0 {
		t.Fatalf("%d restarts during the drain, want 0", n)
	}
	if strings.Contains(logs.String(), "transport plugin is down; restarting") {
		t.Fatalf("the supervisor began a restart during the drain:\n%s", logs.String())
	}
}

// sigIgnored reads the ignored-signal mask of process pid from /proc.
func sigIgnored(t *testing.T, pid int) uint64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no SigIgn in /proc/%d/status", pid)
	return 0
}
