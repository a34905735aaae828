package authz

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
)

// fakeAuditLog is the audit log's health, switched by the test.
type fakeAuditLog struct {
	mu sync.Mutex
	h  audit.Health
}

func (f *fakeAuditLog) set(writing bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if writing {
		f.h = audit.Health{Writing: true}
		return
	}
	f.h = audit.Health{Since: time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC), Cause: audit.CauseDiskFull,
		Error: "write 00000000000000000001.jsonl: no space left on device", RecordsLost: 3}
}

func (f *fakeAuditLog) Health() audit.Health {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h
}

// TestAuditGate: while the audit log cannot write, audit.on_failure refuse refuses an inbound session,
// a peer's new task (an error_response with audit_unavailable) and a mutating control operation
// (unavailable, naming audit_unavailable), but not a read-only operation nor an outbound session; the
// status says so. Under continue, or once the log writes again, everything passes.
func TestAuditGate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		onFail   string
		writing  bool
		refusing bool
	}{
		{"refuse, writing", "", true, false},
		{"refuse, failing", "refuse", false, true},
		{"default is refuse, failing", "", false, true},
		{"continue, failing", "continue", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := "authorization: {default_peer_roles: [task_submitter]}\npuzzles: {disabled: true}\n"
			if tc.onFail != "" {
				body += "audit: {on_failure: " + tc.onFail + "}\n"
			}
			a := newFixture(t, body)
			log := &fakeAuditLog{}
			log.set(tc.writing)
			a.z.SetAuditHealth(log.Health)
			ctx := context.Background()
			peer := agenttest.NewIdentity(t, keystore.Ed25519)

			// Inbound session (the peer initiates).
			err := a.z.Validate(ctx, &session.Peer{ID: peer.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"})
			if got := RefusalOf(err) == RefusalAuditUnavailable; got != tc.refusing {
				t.Fatalf("inbound session: %v (refused for the audit log: %v, want %v)", err, got, tc.refusing)
			}
			if tc.refusing && !strings.Contains(err.Error(), "no space left on device") {
				t.Fatalf("the refusal does not say why: %v", err)
			}
			// Outbound session (this agent initiated): never refused by the gate.
			if err := a.z.Validate(ctx, &session.Peer{ID: peer.ID(), Role: session.Responder, RemoteAddr: "127.0.0.1:7000"}); err != nil {
				t.Fatalf("outbound session: %v", err)
			}

			// A peer's new task.
			id, req := requestFor("echo")
			err = a.z.Dispatch(ctx, &session.Peer{ID: peer.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"}, message(envelope.TaskRequest, req))
			em, n := a.lastSent()
			handled := len(a.tasks.handled) > 0
			if tc.refusing {
				if err == nil || n != 1 || em.TaskID != id || em.Code != RefusalAuditUnavailable || !strings.Contains(em.Message, "audit log cannot write") || handled {
					t.Fatalf("task request: %v; sent %+v (%d); handed to the engine: %v", err, em, n, handled)
				}
				if a.metrics.denied[RefusalAuditUnavailable+"/true"] < 2 {
					t.Fatalf("refusals counted: %v", a.metrics.denied)
				}
			} else if err != nil || n != 0 || !handled {
				t.Fatalf("task request: %v; sent %+v (%d); handed to the engine: %v", err, em, n, handled)
			}

			// Control operations: the mutating one is refused, the read-only one runs.
			ran := map[string]bool{}
			h := func(name string) api.Handler {
				return func(context.Context, rbac.Cred, json.RawMessage) (any, error) { ran[name] = true; return nil, nil }
			}
			hs := a.z.GuardAudit(map[string]api.Handler{api.OpStatus: h(api.OpStatus), api.OpTaskSubmit: h(api.OpTaskSubmit), api.OpAuditHead: h(api.OpAuditHead)})
			for _, op := range []string{api.OpStatus, api.OpAuditHead, api.OpTaskSubmit} {
				_, err := hs[op](ctx, rbac.Cred{}, nil)
				mutating := op == api.OpTaskSubmit
				if mutating && tc.refusing {
					if control.CodeOf(err) != control.CodeUnavailable || !strings.Contains(err.Error(), RefusalAuditUnavailable) || ran[op] {
						t.Fatalf("%s: %v (ran: %v)", op, err, ran[op])
					}
					continue
				}
				if err != nil || !ran[op] {
					t.Fatalf("%s: %v (ran: %v)", op, err, ran[op])
				}
			}

			st := a.z.AuditWriting()
			wantMode := "refuse"
			if tc.onFail == "continue" {
				wantMode = "continue"
			}
			if st.Writing != tc.writing || st.OnFailure != wantMode || (st.Refusing == RefusalAuditUnavailable) != tc.refusing {
				t.Fatalf("status: %+v", st)
			}
			if !tc.writing && (st.Cause != audit.CauseDiskFull || st.RecordsLost != 3 || !strings.Contains(st.Line(), "NOT WRITING")) {
				t.Fatalf("status of a failing log: %+v (%s)", st, st.Line())
			}

			// The log writes again: the gate opens by itself.
			log.set(true)
			if err := a.z.Validate(ctx, &session.Peer{ID: peer.ID(), Role: session.Initiator, RemoteAddr: "127.0.0.1:7000"}); err != nil {
				t.Fatalf("inbound session after recovery: %v", err)
			}
			if _, err := hs[api.OpTaskSubmit](ctx, rbac.Cred{}, nil); err != nil || !ran[api.OpTaskSubmit] {
				t.Fatalf("task.submit after recovery: %v", err)
			}
			if st := a.z.AuditWriting(); !st.Writing || st.Refusing != "" {
				t.Fatalf("status after recovery: %+v", st)
			}
		})
	}
}
