package e2e

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

// tokenKeys lists the keys on a SoftHSM token through the PKCS#11 keystore (a fresh session each time,
// so that objects the daemon's process made or destroyed meanwhile are seen): their URIs without query.
func tokenKeys(t *testing.T, uri string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ks, err := pkcs11.Open(ctx, uri, keystore.OpenOptions{})
	if err != nil {
		t.Fatalf("open the token: %v", err)
	}
	defer ks.Close()
	keys, err := ks.List(ctx)
	if err != nil {
		t.Fatalf("list the token's keys: %v", err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		u, _, _ := strings.Cut(k.URI, "?")
		out[u] = true
	}
	return out
}

// TestScheduledRotationAndDestruction: a SoftHSM-backed agent with rotation.interval 3s rotates its
// identity key on its own (key.rotate, source schedule; a new key on the token), switches to it (status
// generation 1), and when the 6s grace period of the retired key ends destroys it on its own schedule,
// with no agentctl command opening the identity (key.destroy, source schedule): the token holds one key
// fewer, and not the generation 0 key. The metrics count both and export the key's age.
func TestScheduledRotationAndDestruction(t *testing.T) {
	tok := softhsmtest.New(t)
	x := newAgentWith(t, "rotating", func(a *agent) []string {
		a.env = softhsmtest.Env(t)
		return []string{"init", "--pkcs11", tok.URI}
	})
	initial := tokenKeys(t, tok.URI)
	if len(initial) != 2 {
		t.Fatalf("after init the token holds %d keys, want 2 (current and next): %v", len(initial), initial)
	}
	cfg := agentConfig{Transports: []string{"tcp"}, Extra: "rotation: {interval: 3s, grace: 6s}\n"}
	x.writeConfig(cfg)
	x.start()

	scheduled := func(typ audit.EventType, gen string) bool {
		return auditHas(t, x, typ, func(e audit.Entry) bool {
			return e.Details["source"] == custody.SourceSchedule && e.Details["generation"] == json.Number(gen) && e.Outcome == audit.OutcomeSuccess
		})
	}
	eventually(t, 30*time.Second, "a scheduled rotation to generation 1 (key.rotate, source schedule)", func() bool { return scheduled(audit.KeyRotate, "1") })
	// Only one scheduled rotation in this test: rotation off again (the grace period still applies).
	cfg.Extra = "rotation: {interval: 0s, grace: 6s}\n"
	x.writeConfig(cfg)
	x.signal(syscall.SIGHUP)

	during := tokenKeys(t, tok.URI)
	destroyedEarly := scheduled(audit.KeyDestroy, "0")
	if !destroyedEarly && len(during) != 3 {
		t.Fatalf("after the scheduled rotation, before the destruction, the token holds %d keys, want 3: %v", len(during), during)
	}
	if g := x.status().Generation; g < 1 {
		t.Fatalf("status generation %d after the scheduled rotation", g)
	}
	eventually(t, 30*time.Second, "the generation 0 key destroyed on schedule (key.destroy, source schedule)", func() bool { return scheduled(audit.KeyDestroy, "0") })
	var gen0 string
	auditHas(t, x, audit.KeyDestroy, func(e audit.Entry) bool {
		if e.Details["generation"] == json.Number("0") {
			gen0, _ = e.Details["key_uri"].(string)
		}
		return false
	})
	if !initial[gen0] {
		t.Fatalf("key.destroy names %q, not one of the keys init made: %v", gen0, initial)
	}
	// Every retired key's grace period ends (a second rotation before the reload is allowed for).
	var after map[string]bool
	eventually(t, 30*time.Second, "the token back to 2 keys", func() bool {
		after = tokenKeys(t, tok.URI)
		return len(after) == 2
	})
	if after[gen0] {
		t.Fatalf("the destroyed generation 0 key %s is still on the token: %v", gen0, after)
	}
	g := x.status().Generation
	m := scrape(t, x.status().Metrics)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^custos_identity_rotations_total\{result="success"\} ` + regexp.QuoteMeta(strconv.FormatUint(g, 10)) + `$`),
		regexp.MustCompile(`(?m)^custos_identity_keys_destroyed_total ` + regexp.QuoteMeta(strconv.FormatUint(g, 10)) + `$`),
		regexp.MustCompile(`(?m)^custos_identity_key_age_seconds [0-9.e+]+$`),
		regexp.MustCompile(`(?m)^custos_identity_rotation_interval_seconds 0$`),
	} {
		if !want.MatchString(m) {
			t.Errorf("metrics lack %s\n%s", want, grepLines(m, "custos_identity_"))
		}
	}
	// The destruction was the daemon's: no agentctl command opened the identity in this test.
	if strings.Contains(x.logText(), "agentctl: destroyed the retired key") {
		t.Fatal("an agentctl command destroyed the key, not the daemon")
	}
	if out, code := x.run("audit", "query", "--type", "key.destroy"); code != 0 || !strings.Contains(out, "source=schedule") {
		t.Fatalf("audit query --type key.destroy: exit %d\n%s", code, out)
	}
}
