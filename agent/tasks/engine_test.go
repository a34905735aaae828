package tasks

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// The engines below are real (bbolt on disk, real delegations, real signatures, real peer caches); only
// the session between them is replaced by an in-process queue per agent, so that the delivery logic
// (acknowledgements, retries, restarts, duplicates) can be driven and observed precisely.

type msg struct {
	from    string
	t       envelope.MessageType
	payload []byte
}

type testNet struct {
	mu     sync.Mutex
	agents map[string]*testAgent
	down   map[string]bool // agent ID -> unreachable
	drop   func(m msg, to string) bool
	// before, when set, runs at the start of every Send, outside the network's lock (a slow sender).
	before func(m msg, to string)
	sent   []msg
}

type testAgent struct {
	t     *testing.T
	net   *testNet
	ident *agenttest.Identity
	id    string
	dir   string
	db    *bbolt.DB
	cache *peers.Cache
	dm    *delegation.Manager
	store *Store
	eng   *Engine
	inbox chan msg
	quit  chan struct{}
	wg    sync.WaitGroup
	// cfg, when set, adjusts the engine's configuration before start.
	cfg func(*Config)
}

func newNet() *testNet { return &testNet{agents: map[string]*testAgent{}, down: map[string]bool{}} }

type netSender struct {
	n    *testNet
	from string
}

func (s netSender) Send(_ context.Context, peer string, t envelope.MessageType, payload []byte) error {
	m := msg{from: s.from, t: t, payload: append([]byte(nil), payload...)}
	s.n.mu.Lock()
	before := s.n.before
	s.n.mu.Unlock()
	if before != nil {
		before(m, peer)
	}
	s.n.mu.Lock()
	to := s.n.agents[peer]
	down := s.n.down[peer] || s.n.down[s.from] || to == nil || to.eng == nil
	drop := s.n.drop != nil && s.n.drop(m, peer)
	if !down {
		s.n.sent = append(s.n.sent, m)
	}
	s.n.mu.Unlock()
	if down {
		return ErrNoSession
	}
	if drop {
		return nil
	}
	select {
	case to.inbox <- m:
	case <-to.quit:
		return ErrNoSession
	}
	return nil
}

func (n *testNet) setDown(id string, down bool) {
	n.mu.Lock()
	n.down[id] = down
	n.mu.Unlock()
}

func (n *testNet) count(t envelope.MessageType, from string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.sent {
		if m.t == t && m.from == from {
			c++
		}
	}
	return c
}

func newAgent(t *testing.T, n *testNet) *testAgent {
	t.Helper()
	a := &testAgent{t: t, net: n, ident: agenttest.NewIdentity(t, keystore.Ed25519), dir: t.TempDir()}
	a.id = a.ident.ID().String()
	dm, err := delegation.NewManager(context.Background(), delegation.Config{Identity: a.ident.Current(), State: a.ident.State, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a.dm = dm
	t.Cleanup(dm.Close)
	a.open(t)
	n.mu.Lock()
	n.agents[a.id] = a
	n.mu.Unlock()
	return a
}

func (a *testAgent) open(t *testing.T) {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(a.dir, "state.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a.db = db
	if a.cache, err = peers.New(db); err != nil {
		t.Fatal(err)
	}
	if a.store, err = NewStore(db, WithBox(testBox(t))); err != nil {
		t.Fatal(err)
	}
}

func (a *testAgent) knows(b *testAgent) {
	a.t.Helper()
	if _, err := a.cache.UpdateLog(b.ident.ID(), &b.ident.Log); err != nil {
		a.t.Fatal(err)
	}
}

func (a *testAgent) start(t *testing.T, handlers Registry, retry time.Duration) {
	t.Helper()
	cfg := Config{LocalID: a.id, Store: a.store, Handlers: handlers, Keys: a.dm, Peers: a.cache,
		Sender: netSender{n: a.net, from: a.id}, RetryInterval: retry, Logger: testLogger(t)}
	if a.cfg != nil {
		a.cfg(&cfg)
	}
	eng, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.inbox, a.quit = make(chan msg, 64), make(chan struct{})
	a.net.mu.Lock()
	a.eng = eng
	a.net.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			select {
			case <-a.quit:
				return
			case m := <-a.inbox:
				if err := eng.Handle(context.Background(), m.from, m.t, m.payload); err != nil {
					t.Logf("%s handling %s from %s: %v", a.id[:16], m.t, m.from[:16], err)
				}
			}
		}
	}()
	if err := eng.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
}

// stop ends the engine and closes the database, as a process exit would (no drain).
func (a *testAgent) stop() {
	if a.eng == nil {
		return
	}
	a.net.mu.Lock()
	eng := a.eng
	a.eng = nil
	a.net.mu.Unlock()
	close(a.quit)
	a.wg.Wait()
	eng.Close()
	_ = a.db.Close()
}

func pair(t *testing.T, handlers Registry) (*testNet, *testAgent, *testAgent) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	a.start(t, nil, 50*time.Millisecond)
	b.start(t, handlers, 50*time.Millisecond)
	return n, a, b
}

func wait(t *testing.T, e *Engine, id string) *Outbound {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o, err := e.Wait(ctx, id)
	if err != nil {
		t.Fatalf("task %s not final within 10s (state %v): %v", id, o, err)
	}
	return o
}

func TestSubmitSHA256ResultVerified(t *testing.T) {
	_, a, b := pair(t, Registry{"sha256": SHA256(), "echo": Echo()})
	input := []byte("the quick brown fox")
	o, err := a.eng.Submit(context.Background(), b.id, "sha256", input)
	if err != nil {
		t.Fatal(err)
	}
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutDone || got.Status != ResultOK {
		t.Fatalf("state %s status %s error %q", got.State, got.Status, got.Error)
	}
	_, doc, err := VerifyResult(got.Evidence, got.Delegation, a.logOf(b), Expect{TaskID: o.TaskID, Executor: b.id, Requester: a.id, Handler: "sha256", InputSHA256: HexSHA256(input)})
	if err != nil {
		t.Fatal(err)
	}
	if want := HexSHA256(input); string(doc.Output) != want {
		t.Fatalf("output %q, want %q", doc.Output, want)
	}
	// Third party: the evidence bundle verifies on its own, and a changed output does not.
	ev, err := NewEvidence(got.Evidence, got.Delegation, got.KeyEventLog)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := VerifyEvidence(ev); err != nil {
		t.Fatalf("third-party check: %v", err)
	}
	bad := *ev
	je, err := envelope.DecodeJSON([]byte(ev.Envelope))
	if err != nil {
		t.Fatal(err)
	}
	je.Payload.Data = bytes.Replace(je.Payload.Data, []byte(`"status":"ok"`), []byte(`"status":"OK"`), 1)
	bad.Envelope = string(je.EncodeJSON())
	if bad.Envelope == ev.Envelope {
		t.Fatal("test bug: the envelope was not changed")
	}
	if _, _, err := VerifyEvidence(&bad); !errors.Is(err, ErrInvalidResult) {
		t.Fatalf("third-party check of a changed envelope: %v, want ErrInvalidResult", err)
	}
	tampered := tamperEvidence(t, got.Evidence)
	if _, _, err := VerifyResult(tampered, got.Delegation, a.logOf(b), Expect{}); !errors.Is(err, ErrInvalidResult) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("tampered evidence: %v, want ErrInvalidResult", err)
	}
	// The executor forgot the task once the requester acknowledged the result.
	eventually(t, "executor record deleted after acknowledgement", func() bool {
		in, _ := b.store.Inbound(a.id, o.TaskID)
		return in == nil
	})
}

// tamperEvidence flips one byte of the signed document's output inside the binary envelope.
func tamperEvidence(t *testing.T, ev []byte) []byte {
	t.Helper()
	e, err := envelope.DecodeBinary(append([]byte(nil), ev...))
	if err != nil {
		t.Fatal(err)
	}
	e.Payload.Data = bytes.Replace(e.Payload.Data, []byte(`"status":"ok"`), []byte(`"status":"OK"`), 1)
	return e.EncodeBinary()
}

func (a *testAgent) logOf(b *testAgent) identity.Log {
	l, _, ok, err := a.cache.Log(b.id)
	if err != nil || !ok {
		a.t.Fatalf("log of %s: %v %v", b.id, ok, err)
	}
	return l
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDuplicateRequestGetsStoredResult(t *testing.T) {
	var runs atomic.Int32
	counting := HandlerFunc(func(ctx context.Context, in []byte) ([]byte, error) {
		runs.Add(1)
		return SHA256().Run(ctx, in)
	})
	n, a, b := pair(t, Registry{"sha256": counting})
	// Results from b are dropped on the way (as if the session died), so a keeps retrying its request.
	var dropResults atomic.Bool
	dropResults.Store(true)
	n.mu.Lock()
	n.drop = func(m msg, _ string) bool { return m.t == envelope.TaskResult && dropResults.Load() }
	n.mu.Unlock()
	o, err := a.eng.Submit(context.Background(), b.id, "sha256", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "two result pushes (one per duplicate)", func() bool { return n.count(envelope.TaskResult, b.id) >= 2 })
	dropResults.Store(false)
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutDone {
		t.Fatalf("state %s", got.State)
	}
	if r := runs.Load(); r != 1 {
		t.Fatalf("handler ran %d times for one task ID, want 1 (duplicates must get the stored result)", r)
	}
	if n.count(envelope.TaskRequest, a.id) < 2 {
		t.Fatalf("the submitter sent the request %d times; the test needs a retry", n.count(envelope.TaskRequest, a.id))
	}
}

func TestUnknownHandlerFails(t *testing.T) {
	_, a, b := pair(t, Registry{"echo": Echo()})
	o, err := a.eng.Submit(context.Background(), b.id, "nope", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutFailed || got.ErrorCode != CodeUnknownHandler || !strings.Contains(got.Error, `no handler "nope"`) {
		t.Fatalf("state %s code %s error %q", got.State, got.ErrorCode, got.Error)
	}
}

func TestHandlerErrorIsSignedFailedResult(t *testing.T) {
	_, a, b := pair(t, Registry{"boom": HandlerFunc(func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("disk on fire")
	})})
	o, _ := a.eng.Submit(context.Background(), b.id, "boom", nil)
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutDone || got.Status != ResultFailed || got.Error != "disk on fire" {
		t.Fatalf("state %s status %s error %q", got.State, got.Status, got.Error)
	}
}

func TestPendingUntilPeerUp(t *testing.T) {
	n, a, b := pair(t, Registry{"echo": Echo()})
	n.setDown(b.id, true)
	o, err := a.eng.Submit(context.Background(), b.id, "echo", []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // three retry intervals with no session
	if got, _ := a.eng.Get(o.TaskID); got.State != OutPending {
		t.Fatalf("state %s without a session, want pending", got.State)
	}
	n.setDown(b.id, false)
	a.eng.PeerUp(b.id)
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutDone {
		t.Fatalf("state %s", got.State)
	}
}

func TestExecutorRestartResumesAcceptedTask(t *testing.T) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	a.start(t, nil, 50*time.Millisecond)
	started := make(chan struct{}, 4)
	blocking := HandlerFunc(func(ctx context.Context, in []byte) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	b.start(t, Registry{"slow": blocking}, 50*time.Millisecond)
	o, _ := a.eng.Submit(context.Background(), b.id, "slow", []byte("data"))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
	}
	// The executor acknowledged the task when it recorded it; the acknowledgement reaches the submitter
	// asynchronously, possibly after the handler started.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got, _ := a.eng.Get(o.TaskID)
		if rank[got.State] >= rank[OutAccepted] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("submitter state %s: the executor started the task but its acknowledgement never arrived", got.State)
		}
	}
	// "Crash": stop b without draining, reopen its database, run with a handler that finishes.
	n.setDown(b.id, true)
	b.stop()
	b.open(t)
	in, err := b.store.Inbound(a.id, o.TaskID)
	if err != nil || in == nil || in.State == InDone {
		t.Fatalf("after the crash the executor's record is %+v (%v); want an unfinished task", in, err)
	}
	b.start(t, Registry{"slow": SHA256()}, 50*time.Millisecond)
	n.setDown(b.id, false)
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutDone || got.Status != ResultOK {
		t.Fatalf("state %s status %s %q", got.State, got.Status, got.Error)
	}
	_, doc, err := VerifyResult(got.Evidence, got.Delegation, a.logOf(b), Expect{})
	if err != nil || string(doc.Output) != HexSHA256([]byte("data")) {
		t.Fatalf("result %q, %v", doc.Output, err)
	}
}

func TestDrainInterruptsAndKeepsTask(t *testing.T) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	a.start(t, nil, time.Hour)
	started := make(chan struct{}, 1)
	b.start(t, Registry{"slow": HandlerFunc(func(ctx context.Context, in []byte) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}), "fast": Echo()}, time.Hour)
	o, _ := a.eng.Submit(context.Background(), b.id, "slow", nil)
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if got := b.eng.Drain(ctx); got != 1 {
		t.Fatalf("Drain interrupted %d tasks, want 1", got)
	}
	in, _ := b.store.Inbound(a.id, o.TaskID)
	if in == nil || in.State == InDone {
		t.Fatalf("interrupted task record %+v, want unfinished", in)
	}
	// While draining, new requests are refused as busy (retryable), not failed.
	o2, _ := a.eng.Submit(context.Background(), b.id, "fast", nil)
	eventually(t, "busy answer", func() bool { got, _ := a.eng.Get(o2.TaskID); return got.ErrorCode == CodeBusy })
	if got, _ := a.eng.Get(o2.TaskID); Final(got.State) {
		t.Fatalf("busy made the task final (%s)", got.State)
	}
}

func TestSubmitRefusesBadInput(t *testing.T) {
	_, a, b := pair(t, nil)
	cases := []struct {
		name, to, handler string
		input             []byte
		want              string
	}{
		{"bad id", "ed25519:nope", "echo", nil, "recipient"},
		{"self", a.id, "echo", nil, "is this agent"},
		{"bad handler", b.id, "Echo!", nil, "handler name"},
		{"too large", b.id, "echo", make([]byte, MaxInput+1), "exceeds the limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := a.eng.Submit(context.Background(), c.to, c.handler, c.input)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want %q", err, c.want)
			}
		})
	}
	if l, _ := a.eng.List(); len(l) != 0 {
		t.Fatalf("refused submissions were stored: %d", len(l))
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestUnacknowledgedResultsBounded: a requester that never acknowledges results cannot fill the
// executor's disk: finished inbound tasks count against a per-requester quota until acknowledged, are
// kept only for InboundRetention, and listings do not load their inputs.
func TestUnacknowledgedResultsBounded(t *testing.T) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	var now atomic.Int64
	now.Store(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	b.cfg = func(c *Config) {
		c.MaxUnacknowledged = 3
		c.InboundRetention = time.Hour
		c.Clock = func() time.Time { return time.Unix(0, now.Load()).UTC() }
	}
	// b's answers never reach a: a never acknowledges a result.
	n.mu.Lock()
	n.drop = func(_ msg, to string) bool { return to == a.id }
	n.mu.Unlock()
	a.start(t, nil, time.Hour)
	b.start(t, Registry{"echo": Echo()}, time.Hour) // the test runs retries itself
	input := bytes.Repeat([]byte("x"), 64<<10)
	request := func() string {
		id := NewTaskID()
		if err := b.eng.Handle(context.Background(), a.id, envelope.TaskRequest, (&Request{TaskID: id, Handler: "echo", Input: input}).Encode()); err != nil {
			t.Fatal(err)
		}
		return id
	}
	refusals := func() int {
		n.mu.Lock()
		defer n.mu.Unlock()
		c := 0
		for _, m := range n.sent {
			if m.t == envelope.ErrorResponse && m.from == b.id {
				if em, err := DecodeError(m.payload); err == nil && em.Code == CodeBusy && strings.Contains(em.Message, "not acknowledged") {
					c++
				}
			}
		}
		return c
	}
	done := func() int {
		ins, err := b.store.ListInbound()
		if err != nil {
			t.Fatal(err)
		}
		c := 0
		for _, in := range ins {
			if in.State == InDone {
				c++
			}
		}
		return c
	}
	for i := 0; i < 3; i++ {
		request()
	}
	eventually(t, "three finished tasks", func() bool { return done() == 3 })
	// The listing does not carry the stored inputs (the retry loop reads it at every interval).
	ins, err := b.store.ListInbound()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range ins {
		if in.Input != nil {
			t.Errorf("ListInbound loaded the %d-byte input of %s", len(in.Input), in.TaskID)
		}
		if full, err := b.store.Inbound(in.Requester, in.TaskID); err != nil || !bytes.Equal(full.Input, input) {
			t.Fatalf("Inbound(%s): %v", in.TaskID, err)
		}
	}
	// A fourth task while three results are unacknowledged: refused, not stored.
	fourth := request()
	if got := refusals(); got != 1 {
		t.Errorf("%d busy refusals naming unacknowledged results, want 1", got)
	}
	if in, _ := b.store.Inbound(a.id, fourth); in != nil {
		t.Errorf("the fourth task was stored (%s)", in.State)
		eventually(t, "the fourth task finished", func() bool { return done() == 4 })
	}
	// After InboundRetention the unacknowledged results are dropped and the requester may send again.
	now.Add(int64(2 * time.Hour))
	b.eng.retryOnce()
	if c := done(); c != 0 {
		t.Fatalf("%d finished tasks kept past the retention", c)
	}
	request()
	if got := refusals(); got > 1 {
		t.Fatalf("refused after the retention freed the quota (%d refusals)", got)
	}
}

// TestResultAcknowledgedBeforeWaitReturns: with as many submitters as the executor's MaxUnacknowledged,
// each submitting its next task as soon as Wait returns the last one done, no request is refused busy.
// Wait returns only after the acknowledgement of the result was handed to the sender, so a submitter's next
// request cannot overtake it on the session and find the executor still holding MaxUnacknowledged
// unacknowledged tasks (the ~120 s stalls of BenchmarkTasks: the request waited for the retry interval).
// The acknowledgements are slowed down here, as a descheduled receive loop would be, and a Wait started while
// one is on its way (the result stored, the acknowledgement not yet sent) must not return.
func TestResultAcknowledgedBeforeWaitReturns(t *testing.T) {
	const workers, tasks = 4, 16
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var refusedMu sync.Mutex
	var refused []Event
	b.cfg = func(c *Config) {
		c.MaxUnacknowledged = workers
		c.OnEvent = func(ev Event) {
			if ev.Kind == "refused" {
				refusedMu.Lock()
				refused = append(refused, ev)
				refusedMu.Unlock()
				cancel() // the task would wait for the retry interval (an hour here): stop now
			}
		}
	}
	a.start(t, nil, time.Hour)
	b.start(t, Registry{"echo": Echo()}, time.Hour)
	// While an acknowledgement is on its way (stored, not yet sent), a Wait for its task does not return.
	var earlyMu sync.Mutex
	var early []string
	eng := a.eng
	n.mu.Lock()
	n.before = func(m msg, _ string) {
		if m.t != envelope.TaskResponse || m.from != a.id {
			return
		}
		if r, err := DecodeResponse(m.payload); err == nil && r.Status == StatusResultReceived {
			wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			if o, err := eng.Wait(wctx, r.TaskID); err == nil {
				earlyMu.Lock()
				early = append(early, o.TaskID+" "+o.State)
				earlyMu.Unlock()
			}
			wcancel()
			time.Sleep(30 * time.Millisecond)
		}
	}
	n.mu.Unlock()
	var next atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= tasks {
				o, err := a.eng.Submit(ctx, b.id, "echo", []byte("x"))
				if err == nil {
					o, err = a.eng.Wait(ctx, o.TaskID)
				}
				if err == nil && o.State != OutDone {
					err = errors.New("task " + o.TaskID + " ended " + o.State + " " + o.ErrorCode)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	refusedMu.Lock()
	defer refusedMu.Unlock()
	for _, ev := range refused {
		t.Errorf("task %s refused %s: %v", ev.TaskID, ev.Status, ev.Err)
	}
	for err := range errs {
		t.Error(err)
	}
	if got := n.count(envelope.TaskRequest, a.id); got != tasks {
		t.Errorf("%d task requests sent for %d tasks, want no retry", got, tasks)
	}
	earlyMu.Lock()
	defer earlyMu.Unlock()
	for _, e := range early {
		t.Errorf("Wait returned task %s before its acknowledgement was sent", e)
	}
}

// TestAttributionReachesExecutor: a task submitted on behalf of a client carries the client's name to the
// executor, which records it with the task and reports it in its events (the audit records, ADR 0100);
// a bad attribution is refused at submission.
func TestAttributionReachesExecutor(t *testing.T) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	var mu sync.Mutex
	seen := map[string]string{}
	b.cfg = func(c *Config) {
		c.OnEvent = func(ev Event) {
			mu.Lock()
			seen[ev.Kind] = ev.OnBehalfOf
			mu.Unlock()
		}
	}
	a.start(t, nil, 50*time.Millisecond)
	b.start(t, Registry{"echo": Echo()}, 50*time.Millisecond)
	o, err := a.eng.SubmitTask(context.Background(), Submission{To: b.id, Handler: "echo", Input: []byte("x"), OnBehalfOf: "gw-key-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := wait(t, a.eng, o.TaskID); got.State != OutDone || got.OnBehalfOf != "gw-key-1" {
		t.Fatalf("state %s, on_behalf_of %q", got.State, got.OnBehalfOf)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, kind := range []string{"accepted", "started", "finished"} {
		if seen[kind] != "gw-key-1" {
			t.Errorf("executor event %s: on_behalf_of %q, want gw-key-1", kind, seen[kind])
		}
	}
	if _, err := a.eng.SubmitTask(context.Background(), Submission{To: b.id, Handler: "echo", OnBehalfOf: "Not Valid"}); err == nil {
		t.Error("a bad attribution was submitted")
	}
}
