package memory_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/memory"
)

func frame(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func exchange(t *testing.T, w, r *memory.Conn, frames [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for _, f := range frames {
			if err := w.WriteFrame(ctx, f); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, want := range frames {
		got, err := r.ReadFrame(ctx)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: %d bytes, %v; want %d bytes intact", i, len(got), err, len(want))
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
}

// The cases every transport passes (transports/internal/plugintest Common), on the in-memory one.
func TestFramesBothWays(t *testing.T) {
	ctx := context.Background()
	n := memory.NewNetwork()
	a, b := n.Endpoint("agent-a"), n.Endpoint("agent-b")
	l, err := a.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cb, err := b.Dial(ctx, l.Addrs()[0], a.AgentID())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cb.PeerAgentID() != "agent-a" || ca.PeerAgentID() != "agent-b" {
		t.Errorf("peer IDs %s / %s", cb.PeerAgentID(), ca.PeerAgentID())
	}
	if ca.Transport() != memory.Name || ca.RemoteAddr() == "" {
		t.Errorf("transport %q remote %q", ca.Transport(), ca.RemoteAddr())
	}
	frames := [][]byte{[]byte("hello"), {}, frame(1024), frame(64 << 10), frame(transports.MaxFrameSize)}
	exchange(t, cb, ca, frames)
	exchange(t, ca, cb, frames)
	if err := ca.WriteFrame(ctx, frame(transports.MaxFrameSize+1)); !errors.Is(err, transports.ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v, want ErrFrameTooLarge", err)
	}
	if err := ca.WriteFrame(ctx, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	_ = ca.Close()
	if f, err := cb.ReadFrame(ctx); err != nil || string(f) != "bye" {
		t.Fatalf("last frame %q, %v", f, err)
	}
	if _, err := cb.ReadFrame(ctx); !errors.Is(err, io.EOF) {
		t.Errorf("after close: %v, want io.EOF", err)
	}
	if _, err := ca.ReadFrame(ctx); !errors.Is(err, transports.ErrClosed) {
		t.Errorf("read on the closed end: %v, want ErrClosed", err)
	}
	_ = cb.Close()
	if n.Open() != 0 {
		t.Errorf("%d ends open after both closed", n.Open())
	}
}

func TestWrongExpectedIDRefused(t *testing.T) {
	ctx := context.Background()
	n := memory.NewNetwork()
	a, b := n.Endpoint("agent-a"), n.Endpoint("agent-b")
	l, err := a.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = b.Dial(ctx, l.Addrs()[0], "agent-other")
	if !errors.Is(err, transports.ErrPeerMismatch) || !strings.Contains(err.Error(), "agent-a") || !strings.Contains(err.Error(), "agent-other") {
		t.Fatalf("dial pinning another agent: %v; want ErrPeerMismatch naming both", err)
	}
	c, err := b.Dial(ctx, l.Addrs()[0], "agent-a")
	if err != nil {
		t.Fatalf("dial with the right pin: %v", err)
	}
	_ = c.Close()
}

// Faults on demand: injected dial failures in order, nothing listening, a broken network.
func TestFaults(t *testing.T) {
	ctx := context.Background()
	n := memory.NewNetwork()
	a, b := n.Endpoint("agent-a"), n.Endpoint("agent-b")
	l, err := a.Listen(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	n.FailDials(l.Addrs()[0], boom, nil)
	if _, err := b.Dial(ctx, l.Addrs()[0], ""); !errors.Is(err, memory.ErrRefused) || !errors.Is(err, boom) {
		t.Errorf("first injected failure: %v", err)
	}
	if _, err := b.Dial(ctx, l.Addrs()[0], ""); !errors.Is(err, memory.ErrRefused) || errors.Is(err, boom) {
		t.Errorf("second injected failure: %v", err)
	}
	cb, err := b.Dial(ctx, l.Addrs()[0], "")
	if err != nil {
		t.Fatalf("dial after the injected failures: %v", err)
	}
	ca, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.Dials(l.Addrs()[0]) != 3 || n.Open() != 2 {
		t.Errorf("dials %d, open %d; want 3, 2", n.Dials(l.Addrs()[0]), n.Open())
	}
	n.Break()
	if _, err := ca.ReadFrame(ctx); !errors.Is(err, transports.ErrClosed) {
		t.Errorf("read after Break: %v", err)
	}
	if err := cb.WriteFrame(ctx, []byte("x")); !errors.Is(err, transports.ErrClosed) {
		t.Errorf("write after Break: %v", err)
	}
	_ = l.Close()
	if _, err := b.Dial(ctx, l.Addrs()[0], ""); !errors.Is(err, memory.ErrRefused) {
		t.Errorf("dial with nothing listening: %v", err)
	}
}
