package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// fakeDHT is a transport's DHT for the logic tests of the service (the real one, in the libp2p plugin,
// is tested in transports/libp2p and test/e2e): it keeps what is put, answers finds from a map, and can
// fail the first puts.
type fakeDHT struct {
	name string
	none bool // no DHT: host.ErrNoDiscovery

	mu       sync.Mutex
	puts     [][]byte
	failFor  int
	answer   map[string][]byte
	putEvent chan struct{}
}

func (f *fakeDHT) Name() string { return f.name }

func (f *fakeDHT) PutRecord(_ context.Context, key string, v []byte) error {
	if f.none {
		return fmt.Errorf("%s: %w", f.name, host.ErrNoDiscovery)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failFor > 0 {
		f.failFor--
		return errors.New("failed to find any peer in table")
	}
	f.puts = append(f.puts, v)
	select {
	case f.putEvent <- struct{}{}:
	default:
	}
	return nil
}

func (f *fakeDHT) FindRecord(_ context.Context, key string, _ time.Duration) ([]byte, error) {
	if f.none {
		return nil, fmt.Errorf("%s: %w", f.name, host.ErrNoDiscovery)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.answer[key]
	if !ok {
		return nil, errors.New("routing: not found")
	}
	return v, nil
}

func (f *fakeDHT) last(t *testing.T) *Record {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.puts) == 0 {
		return nil
	}
	r, err := Decode(f.puts[len(f.puts)-1])
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type fakeListener struct {
	mu    sync.Mutex
	addrs []string
}

func (l *fakeListener) Addrs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.addrs)
}

func (l *fakeListener) set(a ...string) {
	l.mu.Lock()
	l.addrs = a
	l.mu.Unlock()
}

type fixture struct {
	id   *agenttest.Identity
	svc  *Service
	dht  *fakeDHT
	tcp  *fakeDHT
	lp2p *fakeListener
	reg  *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	dm, err := delegation.NewManager(ctx, delegation.Config{Identity: id.Current(), State: id.State})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{id: id, dht: &fakeDHT{name: "libp2p", answer: map[string][]byte{}, putEvent: make(chan struct{}, 16)},
		tcp: &fakeDHT{name: "tcp", none: true}, reg: prometheus.NewRegistry(),
		lp2p: &fakeListener{addrs: []string{"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWOne"}}}
	tcpL := &fakeListener{addrs: []string{"127.0.0.1:7000"}}
	f.svc, err = New(Config{Self: id.ID(), OwnLog: func() *identity.Log { return &id.Log }, Keys: dm.Current, Logs: openCache(t),
		Networks: func() []Network {
			return []Network{{T: f.dht, Listeners: []Listener{f.lp2p}}, {T: f.tcp, Listeners: []Listener{tcpL}}}
		}, CheckInterval: 20 * time.Millisecond, Registerer: f.reg})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func waitPut(t *testing.T, f *fakeDHT, what string, cond func(r *Record) bool) *Record {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if r := f.last(t); r != nil && cond(r) {
			return r
		}
		select {
		case <-f.putEvent:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no publication: %s", what)
		}
	}
}

// TestPublisher: the record is published at start with every transport's addresses and the libp2p peer
// ID, verifies, and is published again with a higher sequence when an address changes (a plugin restart);
// a transport without a DHT is skipped, and a failed put (no peer known yet) is retried.
func TestPublisher(t *testing.T) {
	f := newFixture(t)
	f.dht.failFor = 1
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { f.svc.Run(rctx); close(done) }()
	r1 := waitPut(t, f.dht, "first record", func(*Record) bool { return true })
	if r1.PeerID != "12D3KooWOne" || len(r1.Addrs) != 2 || r1.AddrsOf("tcp")[0] != "127.0.0.1:7000" {
		t.Errorf("first record %+v", r1)
	}
	if _, err := Verify(r1.Encode(), Key(f.id.ID().String()), openCache(t), time.Now()); err != nil {
		t.Errorf("the published record does not verify: %v", err)
	}
	f.lp2p.set("/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWTwo")
	r2 := waitPut(t, f.dht, "record after the address change", func(r *Record) bool { return r.PeerID == "12D3KooWTwo" })
	if r2.Seq <= r1.Seq || !Better(r2, r1) {
		t.Errorf("the new record's sequence %d is not above %d", r2.Seq, r1.Seq)
	}
	if got := testutil.ToFloat64(f.svc.m.publications.WithLabelValues("error")); got != 1 {
		t.Errorf("failed publications counted %v, want 1", got)
	}
	cancel()
	<-done
}

// TestFindVerifiesAnswers: a lookup returns only a record that verifies; what a plugin answers is judged
// again (a record of another agent under the key is refused and counted).
func TestFindVerifiesAnswers(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	other := newAgent(t, now.Add(-time.Minute), now.Add(time.Hour))
	third := newAgent(t, now.Add(-time.Minute), now.Add(time.Hour))
	good := other.record(t, 5, now.Add(30*time.Minute))
	f.dht.answer[Key(other.id.ID().String())] = good.Encode()
	f.dht.answer[Key(third.id.ID().String())] = good.Encode() // the wrong agent's record
	r, err := f.svc.Find(ctx, other.id.ID(), time.Second)
	if err != nil || r.Seq != 5 {
		t.Fatalf("find: %+v, %v", r, err)
	}
	if _, err := f.svc.Find(ctx, third.id.ID(), time.Second); !errors.Is(err, reason.RecordKeyMismatch) {
		t.Errorf("a record of another agent: %v, want record_key_mismatch", err)
	}
	if got := testutil.ToFloat64(f.svc.m.lookups.WithLabelValues("invalid")); got != 1 {
		t.Errorf("invalid lookups %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.svc.m.verdicts.WithLabelValues("record_key_mismatch")); got != 1 {
		t.Errorf("record_key_mismatch verdicts %v, want 1", got)
	}
}

// TestSelectRecord: the judge's select picks the highest valid sequence; invalid ones never win.
func TestSelectRecord(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	a := newAgent(t, now.Add(-time.Minute), now.Add(time.Hour))
	key := Key(a.id.ID().String())
	forged := a.record(t, 99, now.Add(30*time.Minute))
	forged.Addrs[0].Addr = "/ip4/203.0.113.1/tcp/1/p2p/x"
	vals := [][]byte{a.record(t, 3, now.Add(time.Hour)).Encode(), forged.Encode(), a.record(t, 7, now.Add(time.Minute)).Encode(), []byte("junk")}
	i, err := f.svc.SelectRecord(ctx, key, vals)
	if err != nil || i != 2 {
		t.Errorf("select: %d, %v; want 2 (sequence 7; the forged sequence 99 is invalid)", i, err)
	}
	if err := f.svc.ValidateRecord(ctx, key, vals[1]); reason.Of(err) != reason.BadSignature {
		t.Errorf("validate the forged record: %v, want bad_signature", err)
	}
	if _, err := f.svc.SelectRecord(ctx, key, vals[1:2]); err == nil {
		t.Error("select among only invalid records succeeded")
	}
}

// TestOpFind: the control handler refuses a bad ID and answers this agent's own record without a lookup.
func TestOpFind(t *testing.T) {
	f := newFixture(t)
	h := f.svc.Handlers()[api.OpPeersFind]
	call := func(a api.FindArgs) (any, error) {
		raw, _ := json.Marshal(a)
		return h(ctx, rbac.Cred{}, raw)
	}
	var ce *control.Error
	if _, err := call(api.FindArgs{ID: "nobody"}); !errors.As(err, &ce) || ce.Code != control.CodeBadRequest {
		t.Errorf("bad ID: %v, want bad_request", err)
	}
	if _, err := call(api.FindArgs{ID: f.id.ID().String(), TimeoutMS: 3_600_000}); !errors.As(err, &ce) || ce.Code != control.CodeBadRequest {
		t.Errorf("a one-hour timeout: %v, want bad_request", err)
	}
	if _, err := call(api.FindArgs{ID: f.id.ID().String()}); !errors.As(err, &ce) || ce.Code != control.CodeNotFound {
		t.Errorf("own record before publication: %v, want not_found", err)
	}
	if _, err := f.svc.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := call(api.FindArgs{ID: f.id.ID().String()})
	pr, ok := v.(api.PeerRecord)
	if err != nil || !ok || pr.AgentID != f.id.ID().String() || len(pr.Addrs) != 2 || pr.PeerID != "12D3KooWOne" {
		t.Errorf("own record: %+v, %v", v, err)
	}
}
