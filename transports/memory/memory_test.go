package memory_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/memory"
	"github.com/custos-agent/custos/transports/transporttest"
)

// TestConformance runs the transport conformance suite on the in-memory transport. It declares no
// capability: it has no plugin process (the Process cases are skipped, saying so).
func TestConformance(t *testing.T) {
	transporttest.Run(t, transporttest.Factory{Name: memory.Name, ListenAddr: "",
		New: func(*testing.T) transporttest.Network { return &network{n: memory.NewNetwork()} }})
}

// network gives each endpoint of one case a fresh agent ID on one memory.Network.
type network struct {
	n    *memory.Network
	next int
}

func (w *network) Endpoint(*testing.T) transporttest.Endpoint {
	w.next++
	tr := w.n.Endpoint(fmt.Sprintf("agent-%d", w.next))
	return transporttest.EndpointOf[*memory.Conn, *memory.Listener](tr.AgentID(), tr)
}

func (w *network) OtherAgentID(*testing.T) string { return "agent-other" }

// Open counts the connection ends not yet closed.
func TestOpenCountsEnds(t *testing.T) {
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
	if n.Open() != 2 {
		t.Errorf("%d ends open, want 2", n.Open())
	}
	_ = ca.Close()
	_ = cb.Close()
	if n.Open() != 0 {
		t.Errorf("%d ends open after both closed", n.Open())
	}
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
