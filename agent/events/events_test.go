package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports/host"
)

// recorder is a Recorder over a real audit log in a temporary directory (signed by an in-memory key) and
// real metrics; query reads the log back.
func recorder(t *testing.T) (*Recorder, func(typ audit.EventType, match func(audit.Entry) bool) bool) {
	t.Helper()
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	dir := filepath.Join(t.TempDir(), "audit")
	log, err := audit.Open(context.Background(), dir, audit.Options{Signer: id.Signers[0], AgentID: id.ID().String()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = log.Close() })
	r := &Recorder{Audit: log, Metrics: metrics.New(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	query := func(typ audit.EventType, match func(audit.Entry) bool) bool {
		t.Helper()
		found := false
		if err := audit.Query(context.Background(), dir, audit.Filter{Types: []string{string(typ)}}, func(e audit.Entry) error {
			found = found || match(e)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return found
	}
	return r, query
}

// A handshake that proves a peer's key event log forks raises a critical alert in the audit log beside
// the authentication failure; other failures raise none.
func TestKeyLogForkRaisesAlert(t *testing.T) {
	r, query := recorder(t)
	const peer = "ed25519:cGVlci1mb3Jrcy1oZXJlLXBlZXItZm9ya3MtaGVyZS14eHg"
	r.Session("tcp", "127.0.0.1:1", session.Event{Kind: "handshake", Peer: "ed25519:other", Err: reason.New(reason.BadSignature, "bad")})
	r.Session("tcp", "127.0.0.1:1", session.Event{Kind: "handshake", Peer: peer, Err: reason.New(reason.KeyLogFork, "two events for generation 1")})
	alerts := 0
	query(audit.AlertRaised, func(e audit.Entry) bool {
		alerts++
		if e.Subject != peer || e.Details["alert"] != "peer_key_log_fork" || e.Details["severity"] != "critical" {
			t.Errorf("alert record = %+v", e)
		}
		return true
	})
	if alerts != 1 {
		t.Fatalf("%d alert.raised records, want exactly 1 (for the fork, none for the bad signature)", alerts)
	}
	if !query(audit.AuthFailure, func(e audit.Entry) bool { return e.Details["reason"] == string(reason.KeyLogFork) }) {
		t.Fatal("the fork's auth.failure record is missing")
	}
}

// TestReauthRefusalsAudited: re-authentications refused for their rate, a request (the session goes on)
// and a re-authentication (the session closed), are audited as denied authentications (issue 12 item 8).
func TestReauthRefusalsAudited(t *testing.T) {
	r, query := recorder(t)
	const peer = "ed25519:cGVlci1yZWF1dGgtbG9vcC1wZWVyLXJlYXV0aC1sb29wLXg"
	r.Session("tcp", "127.0.0.1:1", session.Event{Kind: "reauth_refused", Peer: peer, Err: reason.New(reason.ReauthRateLimited, "request refused")})
	r.Session("tcp", "127.0.0.1:1", session.Event{Kind: "refused", Peer: peer, Err: reason.New(reason.ReauthRateLimited, "re-authentication refused")})
	r.Session("tcp", "127.0.0.1:1", session.Event{Kind: "refused", Peer: peer, Err: reason.New(reason.DecryptFailed, "not audited here")})
	n := 0
	query(audit.AuthFailure, func(e audit.Entry) bool {
		if e.Subject == peer {
			n++
			if e.Details["reason"] != string(reason.ReauthRateLimited) || e.Outcome != audit.OutcomeDenied {
				t.Errorf("record %+v", e)
			}
		}
		return false
	})
	if n != 2 {
		t.Fatalf("%d auth.failure records for the rate-limited peer, want 2", n)
	}
}

// TestPluginCrashTimestamped: plugin.crashed is written when the crash is reported, with the time the
// supervisor found the plugin dead and its PID, whether or not a restart follows; a restart writes only
// plugin.restarted, after it (issue 17: the crash used to be written only after a successful restart).
func TestPluginCrashTimestamped(t *testing.T) {
	r, query := recorder(t)
	found := time.Now().Add(-90 * time.Second).UTC()
	r.PluginCrashed(host.CrashEvent{Transport: "tcp", PID: 41, At: found, Cause: errors.New("exit status 2")})
	var crashed audit.Entry
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	eventually("no plugin.crashed record without a restart", func() bool {
		return query(audit.PluginCrashed, func(e audit.Entry) bool { crashed = e; return true })
	})
	if crashed.Time.Sub(found).Abs() > time.Millisecond || crashed.Subject != "tcp" ||
		fmt.Sprint(crashed.Details["pid"]) != "41" || crashed.Details["error"] != "exit status 2" {
		t.Fatalf("plugin.crashed %+v, want at %v with pid 41", crashed, found)
	}
	r.PluginRestarted(host.RestartEvent{Transport: "tcp", Restarts: 1, PID: 42, Downtime: 90 * time.Second, Cause: errors.New("exit status 2")},
		func() *Plugin { return nil })
	eventually("no plugin.restarted record", func() bool {
		return query(audit.PluginRestarted, func(e audit.Entry) bool { return fmt.Sprint(e.Details["pid"]) == "42" })
	})
	r.PluginStartFailed(host.StartFailure{Transport: "tcp", Path: "/usr/lib/custos/transport-tcp", Attempt: 2, Err: fmt.Errorf("%w: not started", host.ErrChecksum)})
	eventually("no plugin.start_failed record", func() bool {
		return query(audit.PluginStartFailed, func(e audit.Entry) bool {
			return e.Details["reason"] == "checksum_mismatch" && fmt.Sprint(e.Details["attempt"]) == "2" && e.Subject == "tcp"
		})
	})
	n := 0
	query(audit.PluginCrashed, func(audit.Entry) bool { n++; return false })
	if n != 1 {
		t.Fatalf("%d plugin.crashed records for one crash", n)
	}
}
