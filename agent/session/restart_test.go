package session

import (
	"errors"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/reason"
)

// TestStoreAndForwardReplayAcrossRestart: store-and-forward envelopes accepted before a restart, one
// stamped in the very second of the restart and one 20 s in the future (inside the window), are refused
// when replayed after it: the restarted agent (its state.db reopened, a new replay cache) does not know
// their IDs (issue 12 item 4). A fresh envelope is accepted once the window after the restart has passed.
func TestStoreAndForwardReplayAcrossRestart(t *testing.T) {
	t0 := time.Now().Truncate(time.Second).Add(100 * time.Millisecond)
	clk := agenttest.NewClock(t0)
	a, b := newAgent(t, withClock(clk.Now)), newAgent(t, withClock(clk.Now))
	sa, sb := mustConnect(t, a, b)
	sa.Close()
	sb.Close()
	ds, err := a.peers.Delegations(b.ID().String())
	if err != nil || len(ds) == 0 {
		t.Fatalf("A has no delegation of B: %v", err)
	}
	ka, _ := a.mgr.Current(bg)
	seal := func(ts time.Time) *envelope.Envelope {
		e, err := envelope.SealHPKE(bg, envelope.NewHeader(a.ID().String(), b.ID().String(), envelope.TaskRequest, ts), []byte("job"), ds[0].KEM, ds[0].EncKey, ka.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	receiver := func(pc *peers.Cache, rc *replay.Cache) *envelope.Receiver {
		return &envelope.Receiver{LocalID: b.ID().String(), Resolver: pc, Replay: rc, Keys: func() []*suite.EncryptionKey {
			var out []*suite.EncryptionKey
			for _, k := range b.mgr.Live() {
				out = append(out, k.Encryption())
			}
			return out
		}}
	}
	sameSecond, future := seal(t0), seal(t0.Add(20*time.Second))
	before := receiver(b.peers, replay.New(replay.Config{Clock: clk.Now, Start: t0.Add(-time.Hour)}))
	for _, e := range []*envelope.Envelope{sameSecond, future} {
		if _, err := before.Receive(bg, e); err != nil {
			t.Fatalf("before the restart: %v", err)
		}
	}
	// The restart, within the same second: the peer cache reopened from disk, a new replay cache.
	if err := b.peers.Close(); err != nil {
		t.Fatal(err)
	}
	pc, err := peers.Open(b.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	clk.Advance(300 * time.Millisecond)
	after := receiver(pc, replay.New(replay.Config{Clock: clk.Now}))
	for name, e := range map[string]*envelope.Envelope{"same-second": sameSecond, "future-stamped": future} {
		if _, err := after.Receive(bg, e); !errors.Is(err, reason.StaleTimestamp) && !errors.Is(err, reason.ReplayedMessage) {
			t.Fatalf("%s envelope replayed after the restart: %v, want stale_timestamp or replayed_message", name, err)
		}
	}
	// Once the window after the restart has passed, a fresh envelope is accepted.
	clk.Advance(replay.DefaultWindow + time.Second)
	if _, err := after.Receive(bg, seal(clk.Now())); err != nil {
		t.Fatalf("a fresh envelope after the restart: %v", err)
	}
}
