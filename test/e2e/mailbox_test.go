package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/gateway/gatewaytest"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/audit"
)

// mailboxConfig writes x's configuration: tcp, an HTTP gateway on port, roles for the mailbox (a gateway
// delivers with protocol_translation, the recipient acknowledges with share_results), bootstrap peers.
func mailboxConfig(x *agent, port int, boot ...config.PeerConfig) {
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: boot,
		Extra: fmt.Sprintf("gateway: {listen: \"127.0.0.1:%d\", max_body_bytes: 4096, address_rate: 10000, mailbox: {max_message_bytes: 1000}}\n", port) +
			"authorization: {default_peer_roles: [task_submitter, gateway_service, peer_node]}\n"})
}

func stopAgent(t *testing.T, x *agent) {
	t.Helper()
	x.signal(syscall.SIGTERM)
	if code := x.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("%s: SIGTERM: exit %d\n%s", x.name, code, x.logTail())
	}
}

// mailboxRecords reads the mailbox.out bucket of a stopped agent's state.db: key -> value.
func mailboxRecords(t *testing.T, x *agent) map[string][]byte {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(x.home, "state.db"), 0o600, &bbolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string][]byte{}
	if err := db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("mailbox.out")).ForEach(func(k, v []byte) error {
			out[string(k)] = bytes.Clone(v)
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMailboxStoreAndForward (issue 15): a program leaves a message on agent A's gateway for agent B while
// B has no session with A; A seals it to B's delegated key and keeps only the ciphertext (the test reads
// A's state.db); A restarts; B connects and receives the message exactly once (GET /v1/messages on B's
// gateway), A deletes it on B's acknowledgement; a replayed copy (the stored record put back into A's
// state.db) is delivered again and refused by B with replayed_message, audited on both sides; a message
// posted while the session is up arrives at once. Every gateway response is validated against
// docs/openapi.yaml. "Offline" is "no session with the gateway": B keeps running, because its delegated
// encryption key lives in memory (ADR 0093; agent/mailbox TestRecipientLostItsKey covers a restarted B).
func TestMailboxStoreAndForward(t *testing.T) {
	b := newAgent(t, "mailbox-b", false)
	bPort := freePort(t)
	mailboxConfig(b, bPort)
	b.start()
	a := newAgent(t, "mailbox-a", false)
	aPort := freePort(t)
	mailboxConfig(a, aPort, a.bootstrapTo(b, "tcp")) // a first session: A learns B's delegation (its encryption key)
	a.start()
	eventually(t, 20*time.Second, "A's session with B", func() bool { return a.sessionWith(b.id) != nil })

	// B goes offline for A: A restarts without B as a bootstrap peer, so no session exists.
	stopAgent(t, a)
	mailboxConfig(a, aPort)
	a.start()
	if a.sessionWith(b.id) != nil || b.sessionWith(a.id) != nil {
		t.Fatal("A and B still have a session")
	}
	v := gatewaytest.New(t)
	hc := &http.Client{Timeout: 30 * time.Second}
	ca := &gwClient{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", aPort), v: v, hc: hc}
	cb := &gwClient{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", bPort), v: v, hc: hc}
	app := gwKey(a, "app", "gateway_service,task_submitter")
	reader := gwKey(b, "reader", "gateway_service,task_submitter")

	secret := []byte("mailbox e2e plaintext marker 5d1e: meet at noon")
	body, _ := json.Marshal(gateway.MessageRequest{Data: secret})
	resp, out := ca.do("POST", "/v1/agents/"+b.id+"/messages", app, body)
	var st gateway.MessageStored
	if err := json.Unmarshal(out, &st); err != nil || resp.StatusCode != 202 || st.To != b.id || st.MessageID == "" || st.Expires <= time.Now().Unix() {
		t.Fatalf("post: %d %s", resp.StatusCode, out)
	}
	// Refusals: a recipient whose key A does not know (409), a malformed ID (400), an oversized body and
	// an oversized message (413), an unknown field (400).
	for _, tc := range []struct {
		path   string
		body   []byte
		status int
		code   string
	}{
		{"/v1/agents/" + unknownAgentID(t) + "/messages", body, 409, "recipient_key_unknown"},
		{"/v1/agents/nobody/messages", body, 400, "bad_request"},
		{"/v1/agents/" + b.id + "/messages", []byte(`{"data":"` + strings.Repeat("A", 5000) + `"}`), 413, "too_large"}, // gateway.max_body_bytes
		{"/v1/agents/" + b.id + "/messages", []byte(`{"data":"` + strings.Repeat("A", 2000) + `"}`), 413, "too_large"}, // gateway.mailbox.max_message_bytes
		{"/v1/agents/" + b.id + "/messages", []byte(`{"data":"aGk","to":"x"}`), 400, "bad_request"},
	} {
		resp, out := ca.do("POST", tc.path, app, tc.body)
		var p gateway.Problem
		if err := json.Unmarshal(out, &p); err != nil || resp.StatusCode != tc.status || p.Reason != tc.code {
			t.Fatalf("POST %s: %d %s, want %d %s", tc.path, resp.StatusCode, out, tc.status, tc.code)
		}
		if len(tc.body) > 2000 && len(tc.body) < 4096 && !strings.Contains(p.Detail, "limit of 1000") {
			t.Fatalf("the oversized message was not refused by gateway.mailbox.max_message_bytes: %s", out)
		}
	}

	// The gateway restarts; its store holds the sealed envelope and not the plaintext.
	stopAgent(t, a)
	recs := mailboxRecords(t, a)
	if len(recs) != 1 {
		t.Fatalf("A's mailbox holds %d records, want 1", len(recs))
	}
	var stored []byte
	for _, v := range recs {
		stored = v
	}
	raw, err := os.ReadFile(filepath.Join(a.home, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte("plaintext marker 5d1e")) {
		t.Fatal("A's state.db holds the message's plaintext")
	}
	if m, err := mailbox.DecodeStored(stored); err != nil || m.MessageID != st.MessageID || m.Recipient != b.id || bytes.Contains(m.Envelope, secret) {
		t.Fatalf("the stored record: %+v %v", m, err)
	}
	a.start()

	// B connects: the message is delivered once, acknowledged, deleted at A.
	if out, code := b.run("peers", "connect", a.dialAddr("tcp"), "--id", a.id); code != 0 {
		t.Fatalf("peers connect: %s", out)
	}
	var msgs gateway.Messages
	eventually(t, 30*time.Second, "the message in B's inbox", func() bool {
		_, out := cb.do("GET", "/v1/messages", reader, nil)
		msgs = gateway.Messages{}
		return json.Unmarshal(out, &msgs) == nil && len(msgs.Messages) > 0
	})
	if len(msgs.Messages) != 1 || !bytes.Equal(msgs.Messages[0].Data, secret) || msgs.Messages[0].From != a.id || msgs.Messages[0].MessageID != st.MessageID {
		t.Fatalf("B's messages: %+v", msgs)
	}
	eventually(t, 20*time.Second, "A's mailbox.delivered record", func() bool {
		return auditHas(t, a, mailbox.Delivered, func(e audit.Entry) bool { return e.Actor == b.id && e.Details["message_id"] == st.MessageID })
	})
	if n := auditCount(t, b, mailbox.Received, func(e audit.Entry) bool { return e.Details["message_id"] == st.MessageID }); n != 1 {
		t.Fatalf("B audited %d receptions", n)
	}

	// A replayed copy: the stored record put back into A's state.db; B reconnects, refuses it.
	stopAgent(t, a)
	if n := len(mailboxRecords(t, a)); n != 0 {
		t.Fatalf("A's mailbox still holds %d records after the ack", n)
	}
	db, err := bbolt.Open(filepath.Join(a.home, "state.db"), 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for k, v := range recs {
			if err := tx.Bucket([]byte("mailbox.out")).Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	a.start()
	if out, code := b.run("peers", "connect", a.dialAddr("tcp"), "--id", a.id); code != 0 {
		t.Fatalf("peers connect: %s", out)
	}
	eventually(t, 30*time.Second, "B's refusal of the replayed copy", func() bool {
		return auditHas(t, b, mailbox.Refused, func(e audit.Entry) bool {
			return e.Details["message_id"] == st.MessageID && e.Details["reason"] == "replayed_message"
		})
	})
	eventually(t, 20*time.Second, "A's record of the refusal", func() bool {
		return auditHas(t, a, mailbox.Refused, func(e audit.Entry) bool {
			return e.Actor == b.id && e.Details["message_id"] == st.MessageID && e.Details["reason"] == "replayed_message"
		})
	})
	_, out = cb.do("GET", "/v1/messages", reader, nil)
	msgs = gateway.Messages{}
	if err := json.Unmarshal(out, &msgs); err != nil || len(msgs.Messages) != 1 {
		t.Fatalf("B's messages after the replay: %s", out)
	}
	if n := auditCount(t, b, mailbox.Received, func(audit.Entry) bool { return true }); n != 1 {
		t.Fatalf("B audited %d receptions after the replay", n)
	}

	// While the session is up, a message posted is delivered at once.
	eventually(t, 20*time.Second, "B's session with A", func() bool { return b.sessionWith(a.id) != nil })
	body, _ = json.Marshal(gateway.MessageRequest{Data: []byte("second")})
	if resp, out := ca.do("POST", "/v1/agents/"+b.id+"/messages", app, body); resp.StatusCode != 202 {
		t.Fatalf("post while connected: %d %s", resp.StatusCode, out)
	}
	eventually(t, 20*time.Second, "the second message in B's inbox", func() bool {
		_, out := cb.do("GET", "/v1/messages", reader, nil)
		msgs = gateway.Messages{}
		return json.Unmarshal(out, &msgs) == nil && len(msgs.Messages) == 2 &&
			(string(msgs.Messages[0].Data) == "second" || string(msgs.Messages[1].Data) == "second") // same second: either order
	})
}
