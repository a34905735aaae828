package discovery

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

const gossipGoldenFile = "testdata/revocation-gossip-vector.txt"

// goldenRevocation is the revocation of the protocol's test vector: administrator key seed b0 x 32,
// issued at 2026-01-01T00:00:00Z, generation 0 (no key event log needed).
func goldenRevocation(t *testing.T) (rbac.Revocation, identity.ID) {
	t.Helper()
	s := fixedSigner(t, 0xb0)
	admin := identity.NewID(s.Public())
	grant := identity.Base64().EncodeToString(bytes.Repeat([]byte{0x11}, 16))
	r, err := rbac.IssueRevocation(ctx, s, admin, grant, time.Unix(1767225600, 0))
	if err != nil {
		t.Fatal(err)
	}
	return r, admin
}

func authorizer(t *testing.T, admins ...identity.ID) *rbac.Authorizer {
	t.Helper()
	az, err := rbac.NewAuthorizer(ctx, rbac.Config{Admins: admins}, rbac.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return az
}

// TestGoldenRevocationMessage: the revocation gossip message of docs/protocol.md "Gossip topics", byte
// for byte; it decodes and verifies for an agent that lists the administrator; with one signature bit
// flipped it is refused with grant_bad_signature.
func TestGoldenRevocationMessage(t *testing.T) {
	r, admin := goldenRevocation(t)
	msg, err := EncodeRevocationMessage(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := DecodeRevocationMessage(msg)
	if err != nil {
		t.Fatal(err)
	}
	az := authorizer(t, admin)
	if err := az.VerifyRevocation(got); err != nil {
		t.Fatalf("the golden revocation does not verify: %v", err)
	}
	fr := r
	fr.Sig = flip(r.Sig)
	forged, err := EncodeRevocationMessage(fr, nil)
	if err != nil {
		t.Fatal(err)
	}
	fr, _, err = DecodeRevocationMessage(forged)
	if err != nil {
		t.Fatalf("the forged message must decode (only its signature is wrong): %v", err)
	}
	if err := az.VerifyRevocation(fr); rbac.ReasonOf(err) != rbac.GrantBadSignature {
		t.Fatalf("forged revocation: %v, want grant_bad_signature", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "topic: %s\n", transports.TopicRevocations)
	fmt.Fprintf(&b, "administrator key: Ed25519 seed b0 x 32; agent ID %s\n", admin)
	fmt.Fprintf(&b, "revoked grant: %s; issued 1767225600 (2026-01-01T00:00:00Z)\n", r.Grant)
	fmt.Fprintf(&b, "message (%d bytes):\n%s\n", len(msg), msg)
	fmt.Fprintf(&b, "forged (signature changed; refused with grant_bad_signature):\n%s\n", forged)
	checkGolden(t, gossipGoldenFile, "revocation message", b.String())
}

// flip changes the first base64url character of s to another one.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// TestDecodeRevocationMessage: every malformed message is refused with its code before anything is
// verified.
func TestDecodeRevocationMessage(t *testing.T) {
	r, _ := goldenRevocation(t)
	rev := string(r.Encode())
	quoted := strings.ReplaceAll(rev, `"`, `\"`)
	for _, tc := range []struct {
		name string
		msg  string
		code reason.Code
	}{
		{"empty", ``, reason.Malformed},
		{"not JSON", `revoke everything`, reason.Malformed},
		{"unknown field", `{"v":1,"revocation":"` + quoted + `","extra":1}`, reason.Malformed},
		{"trailing data", `{"v":1,"revocation":"` + quoted + `"}{}`, reason.Malformed},
		{"version 2", `{"v":2,"revocation":"` + quoted + `"}`, reason.UnknownVersion},
		{"no revocation", `{"v":1}`, reason.Malformed},
		{"revocation not canonical", `{"v":1,"revocation":"` + strings.Replace(quoted, `,`, `, `, 1) + `"}`, reason.Malformed},
		{"revocation with a bad grant ID", `{"v":1,"revocation":"` + strings.Replace(quoted, r.Grant, "x", 1) + `"}`, reason.Malformed},
		{"too large", `{"v":1,"revocation":"` + quoted + `","issuer_log":"` + strings.Repeat("a", transports.MaxGossipSize) + `"}`, reason.Malformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := DecodeRevocationMessage([]byte(tc.msg))
			if reason.Of(err) != tc.code {
				t.Fatalf("decode %q: %v (code %q), want %s", tc.msg, err, reason.Of(err), tc.code)
			}
		})
	}
	if _, _, err := DecodeRevocationMessage([]byte(`{"v":1,"revocation":"` + quoted + `"}`)); err != nil {
		t.Fatalf("the well-formed message: %v", err)
	}
}

// FuzzDecodeRevocationMessage: the decoder never panics, and what it accepts re-encodes to a message
// that decodes to the same revocation.
func FuzzDecodeRevocationMessage(f *testing.F) {
	f.Add([]byte(`{"v":1,"revocation":"{\"v\":2}"}`))
	f.Add([]byte(`{"v":1,"revocation":"","issuer_log":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, log, err := DecodeRevocationMessage(b)
		if err != nil {
			return
		}
		again, err := EncodeRevocationMessage(r, log)
		if err != nil {
			t.Fatalf("accepted message does not re-encode: %v", err)
		}
		r2, _, err := DecodeRevocationMessage(again)
		if err != nil || r2 != r {
			t.Fatalf("re-encoded message decodes to %+v, %v; want %+v", r2, err, r)
		}
	})
}

// fakeRevocations applies revocations with a real rbac.Authorizer (this agent's administrators only).
type fakeRevocations struct{ az *rbac.Authorizer }

func (f fakeRevocations) InstallGossipRevocation(ctx context.Context, r rbac.Revocation, _ []byte, _ string) (bool, error) {
	issuer, err := identity.ParseID(r.Issuer)
	if err != nil {
		return false, err
	}
	if !f.az.IsAdmin(issuer) {
		return true, reason.New(reason.GossipNotForUs, "not our administrator")
	}
	if err := f.az.VerifyRevocation(r); err != nil {
		return false, reason.Wrap(reason.Code(rbac.ReasonOf(err)), err, "revocation")
	}
	return false, f.az.AddRevocation(ctx, r)
}

// TestValidateGossip: a valid revocation is installed and accepted; a forged one is rejected and its
// sender, known by the peer ID of its verified agent record, is reported as misbehaving; one signed by
// an agent that is not an administrator here, or on an unknown topic, is ignored (nobody reported); a
// malformed one is rejected. Verdicts are counted by topic.
func TestValidateGossip(t *testing.T) {
	f := newFixture(t)
	r, admin := goldenRevocation(t)
	az := authorizer(t, admin)
	var mu sync.Mutex
	var bad []identity.ID
	f.svc.cfg.Revocations = fakeRevocations{az}
	f.svc.cfg.Misbehaved = func(_ context.Context, id identity.ID) { mu.Lock(); bad = append(bad, id); mu.Unlock() }
	sender := newAgent(t, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	rec := sender.record(t, 1, time.Now().Add(time.Hour))
	if err := f.svc.ValidateRecord(ctx, Key(rec.AgentID), rec.Encode()); err != nil {
		t.Fatal(err)
	}
	good, _ := EncodeRevocationMessage(r, nil)
	forgedR := r
	forgedR.Sig = flip(r.Sig)
	forged, _ := EncodeRevocationMessage(forgedR, nil)
	other, _ := goldenRevocation(t)
	other.Issuer = sender.id.ID().String() // a valid form, but not this agent's administrator
	notOurs, _ := EncodeRevocationMessage(other, nil)
	for _, tc := range []struct {
		name, topic, from string
		msg               []byte
		ignore            bool
		code              reason.Code
		reported          int
	}{
		{"forged before the valid one", transports.TopicRevocations, rec.PeerID, forged, false, reason.GrantBadSignature, 1},
		{"valid", transports.TopicRevocations, "12D3KooWAnyone", good, false, "", 0},
		{"forged copy of a known revocation", transports.TopicRevocations, rec.PeerID, forged, false, reason.GrantBadSignature, 1},
		{"forged from an unknown peer", transports.TopicRevocations, "12D3KooWUnknown", forged, false, reason.GrantBadSignature, 0},
		{"not our administrator", transports.TopicRevocations, rec.PeerID, notOurs, true, reason.GossipNotForUs, 0},
		{"unknown topic", "/custos/v1/other", rec.PeerID, good, true, reason.GossipUnknownTopic, 0},
		{"malformed", transports.TopicRevocations, rec.PeerID, []byte("not JSON"), false, reason.Malformed, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			bad = nil
			mu.Unlock()
			ignore, err := f.svc.ValidateGossip(ctx, tc.topic, tc.from, tc.msg)
			if ignore != tc.ignore || reason.Of(err) != tc.code && !(tc.code == "" && err == nil) {
				t.Fatalf("verdict ignore=%v err=%v (code %q), want ignore=%v code %q", ignore, err, reason.Of(err), tc.ignore, tc.code)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(bad) != tc.reported || (tc.reported > 0 && !bad[0].Equal(sender.id.ID())) {
				t.Fatalf("reported %v, want %d report(s) of %s", bad, tc.reported, sender.id.ID())
			}
		})
	}
	if !az.Revoked(r.Grant) {
		t.Fatal("the valid revocation was not installed")
	}
	if n := testutil.ToFloat64(f.svc.m.g.messages.WithLabelValues(transports.TopicRevocations, "reject:grant_bad_signature")); n != 3 {
		t.Fatalf("reject:grant_bad_signature counted %v times, want 3", n)
	}
}
