package host_test

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports/host"
)

// lockedBuffer is a log destination the plugin's forwarding goroutine and the test share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var logKey = regexp.MustCompile(`(?:^| )([A-Za-z0-9_.@-]+)=`)

// TestLogLinesNameEachKeyOnce (issue 18, defect 7): the lines a plugin logs reach the daemon's log with
// each key once (the host adds transport=NAME; the plugin must not add it again), and "listening" is
// said once, by the daemon, not also by the plugin.
func TestLogLinesNameEachKeyOnce(t *testing.T) {
	var buf lockedBuffer
	h := tcpHost(t, func(c *host.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := h.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(buf.String(), `msg="transport configured"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the plugin's lines were not forwarded:\n%s", buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the plugin's lines after Listen
	text := buf.String()
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		seen := map[string]bool{}
		for _, m := range logKey.FindAllStringSubmatch(line, -1) {
			if seen[m[1]] {
				t.Errorf("key %s twice in: %s", m[1], line)
			}
			seen[m[1]] = true
		}
	}
	if n := strings.Count(text, `msg=listening`); n != 0 {
		t.Errorf("the plugin logs \"listening\" at info (%d lines); the daemon says it, once per transport:\n%s", n, text)
	}
}
