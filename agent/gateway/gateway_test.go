package gateway_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/gateway/gatewaytest"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Task IDs of the fake: one final, one that stays pending, one unknown.
const (
	finalTask   = "AAAAAAAAAAAAAAAAAAAAAA"
	pendingTask = "AQAAAAAAAAAAAAAAAAAAAA"
	unknownTask = "AgAAAAAAAAAAAAAAAAAAAA"
)

// fakeOps is the agent's side for unit tests of the gateway's own logic (the end-to-end test in
// test/e2e runs the real daemon): it records what would be stored.
type fakeOps struct {
	mu      sync.Mutex
	submits []api.SubmitArgs
	peer    string
	// owner, when set, is the key the fake's tasks were submitted for: GetArgs.OnBehalfOf of another key
	// is not found, as in the agent (taskops).
	owner string
}

func (f *fakeOps) Call(_ context.Context, op string, args, result any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	set := func(v any) error {
		b, _ := json.Marshal(v)
		return json.Unmarshal(b, result)
	}
	now := time.Now().UTC()
	switch op {
	case api.OpTaskSubmit:
		a := args.(api.SubmitArgs)
		f.submits = append(f.submits, a)
		return set(api.TaskView{TaskID: finalTask, To: a.To, Handler: a.Handler, State: "pending", InputSHA256: "00", Submitted: now, Updated: now})
	case api.OpTaskGet:
		a := args.(api.GetArgs)
		if f.owner != "" && a.OnBehalfOf != "" && a.OnBehalfOf != f.owner {
			return control.Errorf(control.CodeNotFound, "no task %s", a.TaskID)
		}
		if a.TaskID == pendingTask {
			f.mu.Unlock()
			time.Sleep(min(time.Duration(a.WaitMS)*time.Millisecond, 50*time.Millisecond))
			f.mu.Lock()
			return set(api.TaskView{TaskID: pendingTask, To: f.peer, Handler: "echo", State: "pending", InputSHA256: "00", Submitted: now, Updated: now})
		}
		if a.TaskID != finalTask {
			return control.Errorf(control.CodeNotFound, "no task %s", a.TaskID)
		}
		return set(api.TaskView{TaskID: finalTask, To: f.peer, Handler: "echo", State: "failed", InputSHA256: "00", Submitted: now, Updated: now, ErrorCode: "busy", OnBehalfOf: f.owner})
	case api.OpPeersList:
		return set([]api.PeerStatus{{ID: f.peer, Trust: "neutral", Score: 0.5}})
	}
	return control.Errorf(control.CodeUnknownOp, "%s", op)
}

type env struct {
	t      *testing.T
	url    string
	ops    *fakeOps
	keys   *gateway.Keys
	v      *gatewaytest.Validator
	mu     sync.Mutex
	audits []audit.Record
}

func setup(t *testing.T, mod func(*config.GatewayConfig)) *env {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	keys, err := gateway.NewKeys(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.ParseConfig([]byte("gateway: {listen: \"127.0.0.1:0\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	gc := cfg.Gateway
	if mod != nil {
		mod(&gc)
	}
	e := &env{t: t, ops: &fakeOps{peer: realID(t)}, keys: keys, v: gatewaytest.New(t)}
	s, err := gateway.New(gateway.Options{Config: gc, AgentID: "self", Ops: e.ops, Keys: keys,
		Audit: func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.audits = append(e.audits, audit.Record{Type: typ, Actor: actor, Subject: subject, Outcome: outcome, Details: details})
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

// realID is a well-formed agent ID (the gateway parses IDs before asking the agent).
func realID(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := keystore.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewID(pk).String()
}

func (e *env) key(name string, rate float64, roles ...string) string {
	e.t.Helper()
	k, err := e.keys.Create(api.GatewayKeyCreateArgs{Name: name, Roles: roles, Rate: rate})
	if err != nil {
		e.t.Fatal(err)
	}
	return k.Token
}

func (e *env) do(method, path, token string, body []byte) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return e.v.Do(e.t, http.DefaultClient, req)
}

func problemOf(t *testing.T, body []byte) gateway.Problem {
	t.Helper()
	var p gateway.Problem
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("not a problem: %v: %s", err, body)
	}
	return p
}

// TestRefusals: every refusal has its status and problem type, is audited with the key's name (never the
// token), and changes nothing stored (no task submitted, the key store as it was).
func TestRefusals(t *testing.T) {
	e := setup(t, func(c *config.GatewayConfig) { c.MaxBodyBytes = 2048 })
	full := e.key("full", 0, "gateway_service", "task_submitter", "agent_operator")
	noAPI := e.key("no-api", 0, "task_submitter")
	noSubmit := e.key("no-submit", 0, "gateway_service")
	revoked := e.key("revoked", 0, "gateway_service", "task_submitter")
	slow := e.key("slow", 1, "gateway_service", "task_submitter") // burst 2
	if _, err := e.keys.Revoke("revoked"); err != nil {
		t.Fatal(err)
	}
	good := []byte(`{"to":"` + e.ops.peer + `","handler":"echo","input":"aGk"}`)
	before, err := e.keys.List()
	if err != nil {
		t.Fatal(err)
	}
	e.audits = nil
	for _, tc := range []struct {
		name, method, path, token string
		body                      []byte
		status                    int
		code, field, actor        string
	}{
		{"no key", "POST", "/v1/tasks", "", good, 401, "unauthenticated", "", "anonymous"},
		{"bad token", "POST", "/v1/tasks", "cgw_0000000000000000_" + strings.Repeat("A", 43), good, 401, "unauthenticated", "", "anonymous"},
		{"wrong secret", "POST", "/v1/tasks", full[:len(full)-43] + strings.Repeat("A", 43), good, 401, "unauthenticated", "", "anonymous"},
		{"revoked key", "POST", "/v1/tasks", revoked, good, 401, "key_revoked", "", "anonymous"},
		{"no api_access", "POST", "/v1/tasks", noAPI, good, 403, "permission_denied", "", "key:no-api"},
		{"no submit_tasks", "POST", "/v1/tasks", noSubmit, good, 403, "permission_denied", "", "key:no-submit"},
		{"oversized body", "POST", "/v1/tasks", full, bytes.Repeat([]byte(" "), 4096), 413, "too_large", "", "key:full"},
		{"oversized body, no key", "POST", "/v1/tasks", "", bytes.Repeat([]byte(" "), 4096), 401, "unauthenticated", "", "anonymous"},
		{"malformed JSON", "POST", "/v1/tasks", full, []byte(`{"to":`), 400, "bad_request", "", "key:full"},
		{"unknown field", "POST", "/v1/tasks", full, []byte(`{"to":"x","handler":"echo","input":"","colour":"red"}`), 400, "bad_request", "colour", "key:full"},
		{"bad agent ID", "POST", "/v1/tasks", full, []byte(`{"to":"nobody","handler":"echo","input":""}`), 400, "bad_request", "to", "key:full"},
		{"unknown agent", "GET", "/v1/agents/" + realID(t), full, nil, 404, "not_found", "", "key:full"},
		{"unknown task", "GET", "/v1/tasks/" + unknownTask, full, nil, 404, "not_found", "", "key:full"},
		{"unknown endpoint", "GET", "/v1/nothing", full, nil, 404, "not_found", "", "anonymous"},
		{"slow 1", "GET", "/v1/tasks/" + finalTask, slow, nil, 200, "", "", "key:slow"},
		{"slow 2", "GET", "/v1/tasks/" + finalTask, slow, nil, 200, "", "", "key:slow"},
		{"over the rate", "GET", "/v1/tasks/" + finalTask, slow, nil, 429, "rate_limited", "", "key:slow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.mu.Lock()
			n := len(e.audits)
			e.mu.Unlock()
			resp, body := e.do(tc.method, tc.path, tc.token, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.code != "" {
				p := problemOf(t, body)
				if p.Type != gateway.ProblemTypePrefix+tc.code || p.Reason != tc.code || p.Field != tc.field {
					t.Fatalf("problem %+v, want type %s field %q", p, tc.code, tc.field)
				}
				if resp.Header.Get("Content-Type") != "application/problem+json" {
					t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
				}
				if tc.status == 429 && resp.Header.Get("Retry-After") == "" {
					t.Fatal("429 without Retry-After")
				}
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if len(e.audits) != n+1 {
				t.Fatalf("%d audit records, want 1", len(e.audits)-n)
			}
			r := e.audits[n]
			if r.Type != gateway.Request || r.Actor != tc.actor || r.Details["status"] != tc.status {
				t.Fatalf("audit record %+v", r)
			}
			if tc.code != "" && (r.Details["reason"] != tc.code || r.Outcome == audit.OutcomeSuccess) {
				t.Fatalf("audit record %+v: want reason %s and a failure", r, tc.code)
			}
			b, _ := json.Marshal(r)
			if tc.token != "" && bytes.Contains(b, []byte(tc.token[20:])) {
				t.Fatal("the audit record holds the token")
			}
		})
	}
	if len(e.ops.submits) != 0 {
		t.Fatalf("refused requests submitted %d tasks", len(e.ops.submits))
	}
	after, _ := e.keys.List()
	if !equalJSON(before, after) {
		t.Fatalf("the key store changed:\n%v\n%v", before, after)
	}
	// The same submission with the full key goes through: the refusals were for their reasons.
	resp, body := e.do("POST", "/v1/tasks", full, good)
	if resp.StatusCode != 202 || resp.Header.Get("Location") != "/v1/tasks/"+finalTask || len(e.ops.submits) != 1 || string(e.ops.submits[0].Input) != "hi" {
		t.Fatalf("submit: %d %s %v", resp.StatusCode, body, e.ops.submits)
	}
	resp, _ = e.do("GET", "/v1/agents/"+e.ops.peer, full, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("agent: %d", resp.StatusCode)
	}
	for _, p := range []string{"/v1/healthz", "/v1/openapi.json"} {
		if resp, body := e.do("GET", p, "", nil); resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", p, resp.StatusCode, body)
		}
	}
}

// TestAddressRate: one client address is limited whatever keys it uses.
func TestAddressRate(t *testing.T) {
	e := setup(t, func(c *config.GatewayConfig) { c.AddressRate = 1 })
	var last *http.Response
	var body []byte
	for i := 0; i < 3; i++ {
		last, body = e.do("GET", "/v1/healthz", "", nil)
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" || problemOf(t, body).Reason != "rate_limited" {
		t.Fatalf("third request: %d %s", last.StatusCode, body)
	}
}

// TestStreamCap: event streams beyond gateway.max_streams are refused with 503 busy.
func TestStreamCap(t *testing.T) {
	e := setup(t, func(c *config.GatewayConfig) { c.MaxStreams = 1 })
	k := e.key("k", 0, "gateway_service", "task_submitter")
	// A final task: the stream gives its result and ends (and frees its place).
	resp, body := e.do("GET", "/v1/tasks/"+finalTask+"/events", k, nil)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("event: result\ndata: {")) {
		t.Fatalf("events: %d %q", resp.StatusCode, body)
	}
	// A pending task keeps its stream open: a second stream is refused while it is.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/tasks/"+pendingTask+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+k)
	open, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Body.Close()
	line := make([]byte, 13)
	if _, err := io.ReadFull(open.Body, line); err != nil || string(line) != "event: state\n" {
		t.Fatalf("first event %q: %v", line, err)
	}
	resp, body = e.do("GET", "/v1/tasks/"+pendingTask+"/events", k, nil)
	if p := problemOf(t, body); resp.StatusCode != 503 || p.Reason != "busy" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("second stream: %d %s", resp.StatusCode, body)
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// TestTaskOwnership: a task belongs to the key it was submitted for (ADR 0100): the submission carries
// the key's name; another key reading it or its events gets 404 not_found, exactly as for a task that
// does not exist (not 403); a key with manage_agents (system_admin) reads every task.
func TestTaskOwnership(t *testing.T) {
	e := setup(t, nil)
	alice := e.key("alice", 0, "gateway_service", "task_submitter")
	bob := e.key("bob", 0, "gateway_service", "task_submitter")
	admin := e.key("admin", 0, "gateway_service", "task_submitter", "system_admin")
	resp, body := e.do("POST", "/v1/tasks", alice, []byte(`{"to":"`+e.ops.peer+`","handler":"echo","input":"aGk"}`))
	if resp.StatusCode != 202 || len(e.ops.submits) != 1 || e.ops.submits[0].OnBehalfOf != "alice" {
		t.Fatalf("submit: %d %s; submitted %+v", resp.StatusCode, body, e.ops.submits)
	}
	e.ops.owner = "alice"
	_, unknown := e.do("GET", "/v1/tasks/"+unknownTask, bob, nil)
	for _, tc := range []struct {
		name, path, token string
		status            int
	}{
		{"owner", "/v1/tasks/" + finalTask, alice, 200},
		{"owner's events", "/v1/tasks/" + finalTask + "/events", alice, 200},
		{"other key", "/v1/tasks/" + finalTask, bob, 404},
		{"other key, waiting", "/v1/tasks/" + finalTask + "?wait=5", bob, 404},
		{"other key's events", "/v1/tasks/" + finalTask + "/events", bob, 404},
		{"manage_agents", "/v1/tasks/" + finalTask, admin, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do("GET", tc.path, tc.token, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == 404 {
				p := problemOf(t, body)
				if p.Type != "urn:custos:reason:not_found" || p.Status != 404 {
					t.Fatalf("problem %+v", p)
				}
				if u := problemOf(t, unknown); !strings.Contains(p.Detail, finalTask) || strings.Replace(p.Detail, finalTask, unknownTask, 1) != u.Detail {
					t.Fatalf("the refusal differs from an unknown task's: %q vs %q", p.Detail, u.Detail)
				}
			}
		})
	}
}
