package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// TestErasure (issue 16, ADR 0092, ADR 0099): an agent that has talked to a subject (a task it ran for
// it, with an input; feedback about it; a grant it issued about it; audit records naming it, their
// personal fields sealed under the subject's key) exports what it holds about the subject (the audit
// records opened among it), erases it, and then: export holds and keeps nothing; the raw audit segments
// hold neither the subject's ID nor its address; the state database, read from the file after the agent
// stopped, holds neither the subject's ID nor the task's input in any key or value of any bucket, and
// after agentctl compact not even in its raw bytes; audit verify passes; the data.erased record carries
// the counts per store, names the destroyed key's reference instead of the subject and is covered by a
// verified checkpoint.
func TestErasure(t *testing.T) {
	x := newAgent(t, "subject", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "holder", false)
	boot := s.bootstrapTo(x, "tcp")
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{boot},
		Extra: "authorization: {default_peer_roles: [task_submitter], admins: [" + s.id + "]}\nprivacy: {seal_audit_fields: true}\n"})
	s.start()

	secret := "ERASE-ME-" + hex.EncodeToString(randomInput(t, 12))
	file := filepath.Join(s.home, "input.txt")
	if err := os.WriteFile(file, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--input", file, "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, secret)
	_ = os.Remove(file)
	var fb api.FeedbackResult
	s.ctlJSON(&fb, "feedback", "--task", v.TaskID, "--score", "50")
	var g api.GrantIssueResult
	s.ctlJSON(&g, "grant", "--to", x.id, "--role", "task_submitter", "--out", filepath.Join(s.home, "grant.txt"))
	if !g.AdminHere {
		t.Fatalf("the grant is not stored here: %+v", g)
	}
	// The subject goes away: nothing new about it arrives while the holder erases.
	x.signal(syscall.SIGTERM)
	x.waitExit(30 * time.Second)

	var before api.DataExport
	s.ctlJSON(&before, "data", "export", "--subject", x.id)
	for _, st := range []string{"peers", "reputation/peers", "rbac/grants", "tasks", "audit"} {
		if len(before.Held[st]) == 0 {
			t.Errorf("export before the erasure: nothing in %s: %+v", st, before.Held)
		}
	}
	if !strings.Contains(string(before.Held["tasks"]), v.TaskID) {
		t.Errorf("export before: the task %s is not in it", v.TaskID)
	}
	var erased api.DataErased
	s.ctlJSON(&erased, "data", "erase", "--subject", x.id)
	if erased.SubjectRef == "" || erased.Shredded == 0 {
		t.Errorf("erase shredded nothing: %+v", erased)
	}
	for _, st := range []string{"peers", "reputation/peers", "rbac/grants", "tasks", "audit/subject-keys"} {
		if erased.Removed[st] == 0 {
			t.Errorf("erase removed nothing from %s: %+v", st, erased.Removed)
		}
	}
	var after api.DataExport
	s.ctlJSON(&after, "data", "export", "--subject", x.id)
	if len(after.Held) != 0 {
		t.Errorf("export after the erasure still holds %v", keys(after.Held))
	}
	if len(after.Kept) != 0 {
		t.Errorf("export after the erasure keeps %+v, want nothing (the audit records are shredded)", after.Kept)
	}
	// A bad subject is one clear error.
	if _, stderr, code := s.run2("data", "erase", "--subject", "nobody"); code == 0 || !strings.Contains(stderr, "--subject") {
		t.Errorf("bad subject: exit %d, %s", code, stderr)
	}
	s.signal(syscall.SIGTERM)
	s.waitExit(30 * time.Second)

	// The file: no key or value of any bucket holds the subject's ID or the task's input.
	db, err := bbolt.Open(filepath.Join(s.home, "state.db"), 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	needles := [][]byte{[]byte(x.id), []byte(secret)}
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				for _, n := range needles {
					if bytes.Contains(k, n) || bytes.Contains(v, n) {
						t.Errorf("bucket %s, key %q still holds %q", name, k, n)
					}
				}
				return nil
			})
		})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	// bbolt does not overwrite freed pages: agentctl compact (offline) rewrites the file without them.
	if raw, err := os.ReadFile(filepath.Join(s.home, "state.db")); err == nil {
		t.Logf("raw state.db before compact: subject ID in free pages: %v, task input in free pages: %v", bytes.Contains(raw, []byte(x.id)), bytes.Contains(raw, []byte(secret)))
	}
	if out, code := s.run("compact"); code != 0 {
		t.Fatalf("compact: exit %d\n%s", code, out)
	}
	raw, err := os.ReadFile(filepath.Join(s.home, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{x.id, secret, erased.SubjectRef} {
		if bytes.Contains(raw, []byte(n)) {
			t.Errorf("raw state.db after compact still holds %q", n)
		}
	}
	// The raw audit segments: neither the subject's ID nor its address.
	segs, _ := filepath.Glob(filepath.Join(s.home, "audit", "*.jsonl"))
	var log bytes.Buffer
	for _, p := range segs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		log.Write(b)
	}
	if log.Len() == 0 {
		t.Fatal("no audit segment read")
	}
	for _, n := range []string{x.id, boot.Address} {
		if bytes.Contains(log.Bytes(), []byte(n)) {
			t.Errorf("the raw audit log still holds %q", n)
		}
	}
	if out, code := s.run("audit", "query", "--type", "auth.*"); code != 0 || !strings.Contains(out, audit.Erased) || strings.Contains(out, x.id) {
		t.Errorf("audit query after the erasure: exit %d, want the subject's fields as %s\n%s", code, audit.Erased, out)
	}

	if out, code := s.run("audit", "verify"); code != 0 {
		t.Fatalf("audit verify after the erasure: exit %d\n%s", code, out)
	}
	kelBytes, err := os.ReadFile(filepath.Join(s.home, "kel.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	kel, err := identity.DecodeLog(kelBytes)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(filepath.Join(s.home, "audit"), kel)
	if err != nil {
		t.Fatal(err)
	}
	var rec *audit.Entry
	if err := audit.Query(context.Background(), filepath.Join(s.home, "audit"), audit.Filter{Types: []string{string(audit.DataErased)}}, func(e audit.Entry) error {
		rec = &e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.Subject != erased.SubjectRef || rec.Details["subject_key"] != "destroyed" || rec.Outcome != audit.OutcomeSuccess || rec.Seq != erased.AuditSeq || rep.CoveredSeq < rec.Seq {
		t.Fatalf("data.erased record %+v (covered through %d)", rec, rep.CoveredSeq)
	}
	removed, _ := json.Marshal(rec.Details["removed"])
	var counts map[string]int
	if err := json.Unmarshal(removed, &counts); err != nil || counts["tasks"] != erased.Removed["tasks"] || counts["rbac/grants"] != erased.Removed["rbac/grants"] {
		t.Fatalf("data.erased removed %s, the command said %v", removed, erased.Removed)
	}
	if strings.Contains(string(rec.Raw), secret) || strings.Contains(string(rec.Raw), v.TaskID) {
		t.Fatalf("the data.erased record holds more than the counts: %s", rec.Raw)
	}
}

func keys[M ~map[string]V, V any](m M) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
