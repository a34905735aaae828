package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/session/sessiontest"
)

// syncBuffer is a log sink the daemon's goroutines write concurrently.
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

// TestEventLogsMinimised: the log lines of events (here a refused handshake, logged by agent/events with
// the connection's remote address) go through the address minimisation of ADR 0082 like the daemon's
// own lines: the remote's /24, never its whole address, unless privacy.full_addresses is set.
func TestEventLogsMinimised(t *testing.T) {
	for _, full := range []bool{false, true} {
		ctx := context.Background()
		home, cust := testHome(t)
		cfgPath := filepath.Join(home, "agent.yaml")
		body := "metrics: {disabled: true}\n"
		if full {
			body += "privacy: {full_addresses: true}\n"
		}
		cfg, digest := writeConfig(t, cfgPath, body)
		var logs syncBuffer
		b, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Shutdown(ctx) })
		a, c := startBare(t), startBare(t)
		c1, c2 := net.Pipe()
		ch := make(chan error, 1)
		go func() { // the transport pinned c, a handshakes: refused by b
			s, err := session.Accept(ctx, sessiontest.NewNetConn(c2, 0), b.sessionConfig("test", "203.0.113.77:7400", c.ID().String()))
			if s != nil {
				s.Close()
			}
			ch <- err
		}()
		if s, err := session.Initiate(ctx, sessiontest.NewNetConn(c1, 0), a.sessionConfig("test", "pipe", ""), b.ID()); err == nil {
			s.Close()
			t.Fatal("the handshake was not refused")
		}
		if err := <-ch; err == nil {
			t.Fatal("the responder admitted the handshake")
		}
		out := logs.String()
		if !strings.Contains(out, "handshake failed") {
			t.Fatalf("no handshake failure logged:\n%s", out)
		}
		if whole := strings.Contains(out, "203.0.113.77"); whole != full {
			t.Fatalf("full_addresses %v: whole remote address in the log: %v\n%s", full, whole, out)
		}
		if !full && !strings.Contains(out, "203.0.113.0/24") {
			t.Fatalf("the remote's /24 is not in the log:\n%s", out)
		}
	}
}
