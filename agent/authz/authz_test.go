package authz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// TestHandshakeValidator checks the validator's order and every refusal code: puzzle, Blocked, grants
// (malformed, wrong subject, bad issuer, expired; a valid one is stored), connection policy; a responder
// is asked for neither puzzle nor grants; with enforce.grants false a bad grant is only audited.
func TestHandshakeValidator(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	other := agenttest.NewIdentity(t, keystore.Ed25519)
	peer := agenttest.NewIdentity(t, keystore.Ed25519)
	late := agenttest.NewIdentity(t, keystore.Ed25519)
	notToday := strings.ToLower(time.Now().UTC().Add(48 * time.Hour).Weekday().String()[:3])
	body := fmt.Sprintf("authorization: {admins: [%s]}\npolicy: {peers: {%s: {time_window: {days: [%s]}}}}\n", admin.ID(), late.ID(), notToday)
	a := newFixture(t, body)
	z := a.z
	bind := []byte("both IDs and nonces")
	solved := func(id identity.ID, grants []byte) *session.Peer {
		p := &session.Peer{ID: id, Role: session.Initiator, Binding: bind, Grants: grants, RemoteAddr: "127.0.0.1:7000"}
		var err error
		if p.Puzzle, err = z.adm.Puzzle(ctx, id.String(), bind); err != nil || len(p.Puzzle) == 0 {
			t.Fatalf("a New peer is asked no puzzle: %v", err)
		}
		if p.Solution, err = (puzzle.Solver{}).Solve(ctx, p.Puzzle, bind); err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now()
	valid := grantFor(t, admin, peer.ID(), rbac.TaskSubmitter, now, time.Hour)
	cases := []struct {
		name string
		p    *session.Peer
		want string
	}{
		{"unsolved puzzle", &session.Peer{ID: peer.ID(), Role: session.Initiator, Binding: bind, Puzzle: mustPuzzle(t, z, peer.ID(), bind), Solution: []byte{1}}, RefusalBadPuzzle},
		{"malformed grants", solved(peer.ID(), []byte("[{]")), RefusalMalformedGrants},
		{"grant for another agent", solved(peer.ID(), rbac.EncodeGrants([]rbac.Grant{grantFor(t, admin, other.ID(), rbac.TaskSubmitter, now, time.Hour)})), RefusalGrantWrongSubject},
		{"grant by a non-administrator", solved(peer.ID(), rbac.EncodeGrants([]rbac.Grant{grantFor(t, other, peer.ID(), rbac.TaskSubmitter, now, time.Hour)})), string(rbac.GrantBadIssuer)},
		{"expired grant", solved(peer.ID(), rbac.EncodeGrants([]rbac.Grant{grantFor(t, admin, peer.ID(), rbac.TaskSubmitter, now.Add(-2*time.Hour), time.Hour)})), string(rbac.GrantExpired)},
		{"outside the time window", solved(late.ID(), nil), string("outside_time_window")},
		{"valid grant", solved(peer.ID(), rbac.EncodeGrants([]rbac.Grant{valid})), ""},
		{"responder: no puzzle, grants ignored", &session.Peer{ID: other.ID(), Role: session.Responder, Grants: []byte("garbage")}, ""},
	}
	for _, c := range cases {
		err := z.Validate(ctx, c.p)
		if got := RefusalOf(err); got != c.want || (c.want == "" && err != nil) {
			t.Fatalf("%s: refusal %q (%v), want %q", c.name, got, err, c.want)
		}
	}
	if rs := z.Roles(ctx, peer.ID()); len(rs) != 1 || rs[0] != rbac.TaskSubmitter {
		t.Fatalf("roles after the valid grant: %v", rs)
	}
	if !a.audit(t, audit.GrantAccepted, func(e audit.Entry) bool { return e.Subject == peer.ID().String() && e.Details["grant"] == valid.ID }) {
		t.Fatal("no grant.accepted record")
	}
	// Blocked is checked before the grants.
	if err := a.rep.Block(ctx, peer.ID()); err != nil {
		t.Fatal(err)
	}
	if p, _ := z.adm.Puzzle(ctx, peer.ID().String(), bind); p != nil {
		t.Fatal("a Blocked peer is asked a puzzle (it is refused outright)")
	}
	blocked := &session.Peer{ID: peer.ID(), Role: session.Initiator, Binding: bind, Grants: []byte("[{]")}
	if err := z.Validate(ctx, blocked); RefusalOf(err) != RefusalBlocked || !errors.Is(err, reputation.ErrBlocked) {
		t.Fatalf("blocked peer: %v", err)
	}
	// Log-only grants: a bad grant is audited as a would-be denial, the handshake goes on.
	if err := a.reload(t, "authorization: {admins: ["+admin.ID().String()+"], enforce: {grants: false}}\n"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	bad := grantFor(t, other, other.ID(), rbac.TaskSubmitter, now, time.Hour)
	if err := z.Validate(ctx, solved(other.ID(), rbac.EncodeGrants([]rbac.Grant{bad}))); err != nil {
		t.Fatalf("log-only grants: %v", err)
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Actor == other.ID().String() && e.Details["would_deny"] == true && e.Details["reason"] == "grant_bad_issuer" && e.Outcome == audit.OutcomeInfo
	}) {
		t.Fatal("no would-deny record for the bad grant")
	}
	if len(z.RBAC().Grants(other.ID())) != 0 {
		t.Fatal("a bad grant was stored in log-only mode")
	}
}

func mustPuzzle(t *testing.T, z *Authz, id identity.ID, bind []byte) []byte {
	t.Helper()
	p, err := z.adm.Puzzle(context.Background(), id.String(), bind)
	if err != nil || len(p) == 0 {
		t.Fatalf("puzzle: %v", err)
	}
	return p
}

// buildGeoDB writes a small MaxMind-format country database.
func buildGeoDB(t *testing.T) string {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "Custos-Test-Country", RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, cc := range map[string]string{"81.56.0.0/16": "FR", "5.255.0.0/16": "RU"} {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Insert(n, mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "country.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGeoRules: a peer from a denied country is refused at the handshake (geo_denied, from host:port and
// from a libp2p multiaddr) and its messages are refused; one from an allowed country is not; in log-only
// mode the handshake goes on and the would-be refusal is audited.
func TestGeoRules(t *testing.T) {
	ctx := context.Background()
	db := buildGeoDB(t)
	body := "authorization: {default_peer_roles: [task_submitter]}\npolicy: {geo: {database: " + db + ", deny: [RU]}}\n"
	a := newFixture(t, body)
	z := a.z
	z.adm = nil // no puzzles here: this test is about addresses
	p := agenttest.NewIdentity(t, keystore.Ed25519)
	for addr, want := range map[string]string{"5.255.1.1:7000": "geo_denied", "/ip4/5.255.9.9/tcp/4001/p2p/x": "geo_denied", "81.56.1.1:7000": "", "127.0.0.1:7000": ""} {
		err := z.Validate(ctx, &session.Peer{ID: p.ID(), Role: session.Initiator, RemoteAddr: addr})
		if RefusalOf(err) != want || (want == "" && err != nil) {
			t.Fatalf("%s: %v, want %q", addr, err, want)
		}
	}
	_, req := requestFor("echo")
	if err := z.Dispatch(ctx, &session.Peer{ID: p.ID(), RemoteAddr: "5.255.1.1:7000"}, message(envelope.TaskRequest, req)); err == nil || !strings.Contains(err.Error(), "geo_denied") ||
		!strings.Contains(err.Error(), "RU, which policy.geo.deny lists") {
		t.Fatalf("message from a denied country: %v", err)
	}
	if em, _ := a.lastSent(); em.Code != "geo_denied" {
		t.Fatalf("answer %+v", em)
	}
	if err := a.reload(t, strings.Replace(body, "authorization: {", "authorization: {enforce: {geo: false}, ", 1)); err != nil {
		t.Fatal(err)
	}
	if err := z.Validate(ctx, &session.Peer{ID: p.ID(), Role: session.Initiator, RemoteAddr: "5.255.1.1:7000"}); err != nil {
		t.Fatalf("log-only geo: %v", err)
	}
	if !a.audit(t, audit.AccessDenied, func(e audit.Entry) bool {
		return e.Subject == "handshake" && e.Details["reason"] == "geo_denied" && e.Details["country"] == "RU" && e.Details["would_deny"] == true
	}) {
		t.Fatal("no would-deny record for the handshake from RU")
	}
	// A new database path needs a restart: the running one stays.
	if err := a.reload(t, "policy: {geo: {database: /nonexistent.mmdb, deny: [RU]}}\n"); err != nil {
		t.Fatalf("reload with another database path: %v", err)
	}
	if err := z.Validate(ctx, &session.Peer{ID: p.ID(), Role: session.Initiator, RemoteAddr: "5.255.1.1:7000"}); RefusalOf(err) != "geo_denied" {
		t.Fatalf("after the reload: %v", err)
	}
}
