package gateway_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/gateway/gatewaytest"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/reason"
)

// fakeMailbox answers Post with the refusal named by the message's content (the gateway's own logic:
// statuses and problem types; the real mailbox runs in agent/mailbox's tests and test/e2e).
type fakeMailbox struct{ posted [][]byte }

func (f *fakeMailbox) Post(_ context.Context, to string, data []byte) (*mailbox.Stored, error) {
	switch string(data) {
	case "full":
		return nil, reason.New(reason.MailboxFull, "full")
	case "unknown":
		return nil, reason.New(reason.RecipientKeyUnknown, "no key of %s", to)
	case "big":
		return nil, reason.New(reason.TooLarge, "too big")
	}
	f.posted = append(f.posted, data)
	return &mailbox.Stored{Recipient: to, MessageID: "Q0NDQ0NDQ0NDQ0NDQ0NDQw", Expires: 1}, nil
}

func (f *fakeMailbox) Messages() ([]*mailbox.Message, error) {
	return []*mailbox.Message{{From: "ed25519:x", MessageID: "m", Timestamp: 1, Received: 2, Data: []byte("hi")}}, nil
}

// TestMailboxEndpoints: POST /v1/agents/{id}/messages and GET /v1/messages, their permissions and the
// statuses of the mailbox's refusals, every response validated against docs/openapi.yaml.
func TestMailboxEndpoints(t *testing.T) {
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
	mb := &fakeMailbox{}
	e := &env{t: t, ops: &fakeOps{peer: realID(t)}, keys: keys, v: gatewaytest.New(t)}
	s, err := gateway.New(gateway.Options{Config: cfg.Gateway, AgentID: "self", Ops: e.ops, Keys: keys, Mailbox: mb,
		Audit: func(audit.EventType, string, string, audit.Outcome, map[string]any) {}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	e.url = srv.URL
	sender := e.key("sender", 0, "gateway_service", "task_submitter")
	viewer := e.key("viewer", 0, "gateway_service") // neither submit_tasks nor view_results
	to := e.ops.peer
	body := func(s string) []byte { b, _ := json.Marshal(gateway.MessageRequest{Data: []byte(s)}); return b }
	for _, tc := range []struct {
		name, method, path, token string
		body                      []byte
		status                    int
		code                      string
	}{
		{"stored", "POST", "/v1/agents/" + to + "/messages", sender, body("hello"), 202, ""},
		{"full", "POST", "/v1/agents/" + to + "/messages", sender, body("full"), 429, "mailbox_full"},
		{"unknown key", "POST", "/v1/agents/" + to + "/messages", sender, body("unknown"), 409, "recipient_key_unknown"},
		{"too large", "POST", "/v1/agents/" + to + "/messages", sender, body("big"), 413, "too_large"},
		{"bad id", "POST", "/v1/agents/nobody/messages", sender, body("hello"), 400, "bad_request"},
		{"unknown field", "POST", "/v1/agents/" + to + "/messages", sender, []byte(`{"data":"aGk","colour":1}`), 400, "bad_request"},
		{"no submit_tasks", "POST", "/v1/agents/" + to + "/messages", viewer, body("hello"), 403, "permission_denied"},
		{"no key", "POST", "/v1/agents/" + to + "/messages", "", body("hello"), 401, "unauthenticated"},
		{"list", "GET", "/v1/messages", sender, nil, 200, ""}, // task_submitter carries view_results
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			resp, out := e.do(tc.method, tc.path, tc.token, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, out)
			}
			if tc.code != "" {
				if p := problemOf(t, out); p.Reason != tc.code || p.Type != gateway.ProblemTypePrefix+tc.code {
					t.Fatalf("problem %+v, want %s", p, tc.code)
				}
			}
			if tc.status == 429 {
				if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
					t.Fatalf("429 without Retry-After: %q", resp.Header.Get("Retry-After"))
				}
			}
		})
	}
	e.t = t
	if len(mb.posted) != 1 || string(mb.posted[0]) != "hello" {
		t.Fatalf("posted %q: only the one accepted message may reach the mailbox", mb.posted)
	}
	resp, out := e.do("GET", "/v1/messages", viewer, nil)
	if resp.StatusCode != 403 {
		t.Fatalf("list without view_results: %d %s", resp.StatusCode, out)
	}
}
