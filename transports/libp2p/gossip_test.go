package libp2p_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host/hosttest"
)

// gossipJudge stands in for the core's verification of gossip (agent/discovery has its own tests): a
// message is valid when it starts with "good". It records what it was asked and by whom.
type gossipJudge struct {
	testJudge
	mu   sync.Mutex
	seen map[string][]string // message -> senders asked about
}

func (j *gossipJudge) ValidateGossip(_ context.Context, topic, from string, data []byte) (bool, error) {
	j.mu.Lock()
	j.seen[string(data)] = append(j.seen[string(data)], from)
	j.mu.Unlock()
	if topic != transports.TopicRevocations || !strings.HasPrefix(string(data), "good") {
		return false, errBad
	}
	return false, nil
}

var errBad = &badGossip{}

type badGossip struct{}

func (*badGossip) Error() string { return "bad_signature: not a good message" }

func (j *gossipJudge) asked(msg string) []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.seen[msg]...)
}

// TestGossipJudged (ADR 0091): two libp2p plugins (real processes) linked by an agent connection, and a
// raw gossipsub peer connected to the first only. Every message is judged by the receiving plugin's host
// before it goes further: a message the host accepts reaches the second plugin's host; one it rejects
// is never forwarded (the second host is never asked about it) and its sender's score falls below zero
// (the first plugin logs it). A message the host publishes through the plugin reaches the other one.
func TestGossipJudged(t *testing.T) {
	var logs0 lockedBuffer // plugin 0's log (through its host)
	judges := make([]*gossipJudge, 2)
	hosts := make([]*hosttest.Host, 2)
	for i := range hosts {
		judges[i] = &gossipJudge{testJudge: testJudge{refused: map[string]int{}}, seen: map[string][]string{}}
		cfg := hosttest.Config(t, "libp2p", bins["transport-libp2p"])
		cfg.Judge = judges[i]
		if i == 0 {
			cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs0, tlog{t}), nil))
		}
		hosts[i] = hosttest.Start(t, cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := hosts[0].T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := hosts[1].T.Dial(ctx, l.Addrs()[0], hosts[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	raw, _ := rawPeer(t, "noise")
	ps, err := pubsub.NewGossipSub(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(transports.TopicRevocations)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	ai, err := peer.AddrInfoFromString(l.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Connect(ctx, *ai); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the raw peer in the plugin's topic", func() bool { return len(topic.ListPeers()) > 0 })

	// The host publishes through plugin 1: plugin 0's host judges it, and the raw peer receives it.
	pub := func(at int, msg string) {
		t.Helper()
		var err error
		for range 50 { // until the plugins' meshes form
			if err = hosts[at].T.Publish(ctx, transports.TopicRevocations, []byte(msg)); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("publish %q: %v", msg, err)
	}
	time.Sleep(time.Second) // gossipsub heartbeat: the meshes form
	pub(1, "good from host 1")
	waitFor("plugin 0's host judging the host-published message", func() bool { return len(judges[0].asked("good from host 1")) > 0 })
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	m, err := sub.Next(rctx)
	rcancel()
	if err != nil || string(m.GetData()) != "good from host 1" {
		t.Fatalf("the raw peer did not receive the accepted message: %v", err)
	}

	// Raw peer → plugin 0: the good message is forwarded to plugin 1 (its host asked), the bad one not.
	// The good one goes first: once plugin 0 rejects the forged one the raw peer's score falls below
	// the graylist threshold and plugin 0 ignores whatever it sends next, good or not.
	if err := topic.Publish(ctx, []byte("good from the raw peer")); err != nil {
		t.Fatal(err)
	}
	waitFor("plugin 1's host judging the forwarded good message", func() bool { return len(judges[1].asked("good from the raw peer")) > 0 })
	if err := topic.Publish(ctx, []byte("forged revocation")); err != nil {
		t.Fatal(err)
	}
	waitFor("plugin 0's host judging the forged message", func() bool { return len(judges[0].asked("forged revocation")) > 0 })
	if got := judges[0].asked("forged revocation"); got[0] != raw.ID().String() {
		t.Fatalf("plugin 0's host was asked about the forged message by %v, want the raw peer %s", got, raw.ID())
	}
	time.Sleep(time.Second) // a forwarded good message took well under this to reach plugin 1's host
	if got := judges[1].asked("forged revocation"); len(got) != 0 {
		t.Fatalf("the forged message was forwarded to plugin 1 (its host was asked by %v)", got)
	}
	waitFor("plugin 0 scoring the raw peer down", func() bool {
		l := logs0.String()
		return strings.Contains(l, "gossip peer scored down") && strings.Contains(l, raw.ID().String())
	})
}

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

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // logging after the test ended
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
