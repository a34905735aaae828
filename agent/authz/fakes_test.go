package authz

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// In-memory fakes of the interfaces Authz depends on: these tests need no bbolt, audit log or socket.

type fakeSelf struct{ id *agenttest.Identity }

func (s fakeSelf) ID() identity.ID       { return s.id.ID() }
func (s fakeSelf) State() identity.State { return s.id.State }
func (s fakeSelf) Log() identity.Log     { return s.id.Log }

// fakePeers keeps verified key event logs.
type fakePeers struct {
	mu   sync.Mutex
	logs map[string]identity.Log
}

func (p *fakePeers) State(id string) (identity.State, bool, error) {
	_, st, ok, err := p.Log(id)
	return st, ok, err
}

func (p *fakePeers) Log(id string) (identity.Log, identity.State, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.logs[id]
	if !ok {
		return identity.Log{}, identity.State{}, false, nil
	}
	st, err := l.Verify()
	return l, st, err == nil, err
}

func (p *fakePeers) UpdateLog(id identity.ID, l *identity.Log) (identity.State, error) {
	st, err := l.Verify()
	if err != nil {
		return identity.State{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.logs == nil {
		p.logs = map[string]identity.Log{}
	}
	p.logs[id.String()] = *l
	return st, nil
}

type fakeHeld struct {
	mu     sync.Mutex
	grants []rbac.Grant
}

func (h *fakeHeld) List() ([]rbac.Grant, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]rbac.Grant(nil), h.grants...), nil
}

func (h *fakeHeld) Put(g rbac.Grant) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.grants = append(h.grants, g)
	return nil
}

func (h *fakeHeld) Remove(id string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, g := range h.grants {
		if g.ID == id {
			h.grants = append(h.grants[:i], h.grants[i+1:]...)
			return true, nil
		}
	}
	return false, nil
}

type fakeStakes struct{ raw []byte }

func (s *fakeStakes) Load() ([]byte, error) { return s.raw, nil }
func (s *fakeStakes) Store(t consensus.StakeTable, force bool) (bool, int64, error) {
	s.raw = t.Encode()
	return false, 0, nil
}

// fakeRep holds levels set by hand, with the default level effects.
type fakeRep struct {
	mu      sync.Mutex
	levels  map[string]reputation.Level
	notices map[string]time.Time // issue time of the newest notice per peer (blocks_test.go)
}

func (r *fakeRep) Block(_ context.Context, id identity.ID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.levels == nil {
		r.levels = map[string]reputation.Level{}
	}
	r.levels[id.String()] = reputation.Blocked
	return nil
}

func (r *fakeRep) Level(id identity.ID) reputation.Level {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.levels[id.String()]; ok {
		return l
	}
	return reputation.New
}

func (r *fakeRep) Effects(l reputation.Level) reputation.Effects {
	return reputation.DefaultEffects()[l]
}

func (r *fakeRep) Admit(id identity.ID) error {
	if l := r.Level(id); r.Effects(l).RefuseHandshake {
		return fmt.Errorf("%w: %s is at trust level %s", reputation.ErrBlocked, id, l)
	}
	return nil
}

func (r *fakeRep) AddFeedback(context.Context, reputation.Feedback) (float64, error) { return 1, nil }
func (r *fakeRep) Sweep(context.Context) ([]reputation.Change, error)                { return nil, nil }

// fakeTasks has no tasks: nothing answers anything this agent sent.
type fakeTasks struct {
	mu      sync.Mutex
	handled []envelope.MessageType
}

func (f *fakeTasks) Handle(_ context.Context, _ string, t envelope.MessageType, _ []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handled = append(f.handled, t)
	return nil
}
func (f *fakeTasks) Inbound(string, string) (*tasks.Inbound, error) { return nil, nil }
func (f *fakeTasks) Outbound(string) (*tasks.Outbound, error) {
	return nil, errors.New("no such task")
}

type fakeMetrics struct {
	mu     sync.Mutex
	denied map[string]int
}

func (m *fakeMetrics) AccessDenied(code string, enforced bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.denied == nil {
		m.denied = map[string]int{}
	}
	m.denied[fmt.Sprintf("%s/%v", code, enforced)]++
}
func (m *fakeMetrics) RateLimited(string) {}

// fixture is an Authz over the fakes; it collects the audit records and the error_responses sent.
type fixture struct {
	z       *Authz
	self    *agenttest.Identity
	rep     *fakeRep
	peers   *fakePeers
	held    *fakeHeld
	tasks   *fakeTasks
	metrics *fakeMetrics

	mu      sync.Mutex
	records []audit.Entry
	sent    []tasks.ErrorMessage
	out     []envelope.MessageType // the other messages sent
}

func parseConfig(t *testing.T, body string) *config.Config {
	t.Helper()
	cfg, err := config.ParseConfig([]byte("metrics: {disabled: true}\n" + body))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newFixture(t *testing.T, body string) *fixture {
	t.Helper()
	f := &fixture{self: agenttest.NewIdentity(t, keystore.Ed25519), rep: &fakeRep{}, peers: &fakePeers{}, held: &fakeHeld{},
		tasks: &fakeTasks{}, metrics: &fakeMetrics{}}
	z, err := New(context.Background(), parseConfig(t, body), Deps{
		Self: fakeSelf{f.self}, Peers: f.peers, Held: f.held, Stakes: &fakeStakes{}, Reputation: f.rep, Tasks: f.tasks, Metrics: f.metrics,
		Audit: func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.records = append(f.records, audit.Entry{Record: audit.Record{Type: typ, Actor: actor, Subject: subject, Outcome: outcome, Details: details}})
		},
		Send: func(_ context.Context, _ string, typ envelope.MessageType, payload []byte) error {
			if typ != envelope.ErrorResponse {
				f.mu.Lock()
				f.out = append(f.out, typ)
				f.mu.Unlock()
				return nil
			}
			em, err := tasks.DecodeError(payload)
			if err != nil {
				return err
			}
			f.mu.Lock()
			f.sent = append(f.sent, *em)
			f.mu.Unlock()
			return nil
		},
		UID: 4242,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(z.Close)
	f.z = z
	return f
}

// reload applies a new configuration body, as the daemon does on SIGHUP.
func (f *fixture) reload(t *testing.T, body string) error {
	t.Helper()
	return f.z.Reload(parseConfig(t, body))
}

// lastSent returns the last error_response sent and how many were sent.
func (f *fixture) lastSent() (tasks.ErrorMessage, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sent) == 0 {
		return tasks.ErrorMessage{}, 0
	}
	return f.sent[len(f.sent)-1], len(f.sent)
}

func (f *fixture) audit(t *testing.T, typ audit.EventType, match func(audit.Entry) bool) bool {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.records {
		if e.Type == typ && match(e) {
			return true
		}
	}
	return false
}

func grantFor(t *testing.T, admin *agenttest.Identity, subject identity.ID, role rbac.Role, issued time.Time, ttl time.Duration) rbac.Grant {
	t.Helper()
	g, err := rbac.IssueGrant(context.Background(), admin.Current(), admin.ID(), subject, role, issued, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

var msgSeq int

func message(typ envelope.MessageType, payload []byte) *session.Message {
	msgSeq++
	return &session.Message{Envelope: &envelope.Envelope{Header: envelope.Header{MessageType: typ, MessageID: fmt.Sprintf("m%d", msgSeq)}}, Payload: payload}
}

func requestFor(handler string) (string, []byte) {
	id := tasks.NewTaskID()
	return id, (&tasks.Request{TaskID: id, Handler: handler, Input: []byte("x")}).Encode()
}
