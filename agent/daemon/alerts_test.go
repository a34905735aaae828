package daemon

import (
	"testing"

	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/reason"
)

// A handshake that proves a peer's key event log forks raises a critical alert in the audit log beside
// the authentication failure; other failures raise none.
func TestKeyLogForkRaisesAlert(t *testing.T) {
	ad := startAuthzDaemon(t, "")
	const peer = "ed25519:cGVlci1mb3Jrcy1oZXJlLXBlZXItZm9ya3MtaGVyZS14eHg"
	ad.d.sessionEvent("tcp", "127.0.0.1:1", session.Event{Kind: "handshake", Peer: "ed25519:other", Err: reason.New(reason.BadSignature, "bad")})
	ad.d.sessionEvent("tcp", "127.0.0.1:1", session.Event{Kind: "handshake", Peer: peer, Err: reason.New(reason.KeyLogFork, "two events for generation 1")})
	alerts := 0
	ad.audit(t, audit.AlertRaised, func(e audit.Entry) bool {
		alerts++
		if e.Subject != peer || e.Details["alert"] != "peer_key_log_fork" || e.Details["severity"] != "critical" {
			t.Errorf("alert record = %+v", e)
		}
		return true
	})
	if alerts != 1 {
		t.Fatalf("%d alert.raised records, want exactly 1 (for the fork, none for the bad signature)", alerts)
	}
	if !ad.audit(t, audit.AuthFailure, func(e audit.Entry) bool { return e.Details["reason"] == string(reason.KeyLogFork) }) {
		t.Fatal("the fork's auth.failure record is missing")
	}
}
