package rbac

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
	bolt "go.etcd.io/bbolt"
)

func TestGrantEncodeDecode(t *testing.T) {
	f := newFixture(t, nil)
	sub := newAgent(t, keystore.P256)
	g := f.grant(t, f.admin, sub.id, PeerNode, 24*time.Hour)
	enc := g.Encode()
	back, err := DecodeGrant(enc)
	if err != nil {
		t.Fatalf("DecodeGrant(Encode): %v", err)
	}
	if back != g {
		t.Fatalf("round trip changed the grant: %+v != %+v", back, g)
	}
	if err := f.az.CheckGrant(context.Background(), back); err != nil {
		t.Fatalf("decoded grant does not verify: %v", err)
	}
	s := string(enc)
	cases := []struct{ name, in, want string }{
		{"unknown field", strings.Replace(s, `"v":2,`, `"v":2,"extra":true,`, 1), "unknown field"},
		{"trailing data", s + "{}", "trailing data"},
		{"whitespace", strings.Replace(s, `"v":2,`, `"v": 2,`, 1), "canonical"},
		{"duplicate key", strings.Replace(s, `"v":2,`, `"v":2,"v":2,`, 1), "canonical"},
		{"version 3", strings.Replace(s, `"v":2,`, `"v":3,`, 1), "version 3"},
		{"version 1 with a generation", strings.Replace(strings.Replace(s, `"v":2,`, `"v":1,`, 1), `"sig"`, `"gen":1,"sig"`, 1), "version 1 carries no issuer generation"},
		{"gen 0 spelled out", strings.Replace(s, `"sig"`, `"gen":0,"sig"`, 1), "canonical"},
		{"bad head", strings.Replace(s, `"sig"`, `"head":"AAAA","sig"`, 1), "head must be"},
		{"unknown role", strings.Replace(s, `"peer_node"`, `"root"`, 1), `unknown role "root"`},
		{"bad subject", strings.Replace(s, sub.id.String(), "rsa:AAAA", 1), "subject"},
		{"short grant ID", strings.Replace(s, g.ID, "AAAA", 1), "grant ID"},
		{"padded signature", strings.Replace(s, `"}`, `=="}`, 1), "signature"},
		{"empty validity", strings.Replace(s, `"expires":`, `"expires":1,"x":`, 1), "unknown field"},
		{"not an object", `[]`, "cannot unmarshal"},
		{"oversized", s + strings.Repeat(" ", MaxGrantSize), "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeGrant([]byte(c.in))
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DecodeGrant: got %v, want ErrMalformed mentioning %q", err, c.want)
			}
		})
	}
	g2 := g
	g2.Expires = g2.Issued
	if _, err := DecodeGrant(g2.Encode()); err == nil || !strings.Contains(err.Error(), "expires must be after issued") {
		t.Fatalf("expires == issued: %v", err)
	}
}

func TestRevocationEncodeDecodeAndDomainSeparation(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	g := f.grant(t, f.admin, newAgent(t, keystore.Ed25519).id, TaskSubmitter, time.Hour)
	r, err := IssueRevocation(ctx, f.admin.s, f.admin.id, g.ID, f.clk.t)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeRevocation(r.Encode())
	if err != nil || back != r {
		t.Fatalf("revocation round trip: %v", err)
	}
	if _, err := DecodeRevocation(append(r.Encode(), ' ')); err == nil {
		t.Fatal("trailing space accepted")
	}
	// A grant's signature must not pass as a revocation's, even with matching fields.
	forged := Revocation{Version: 1, Grant: g.ID, Issuer: g.Issuer, Issued: g.Issued, Sig: g.Sig}
	wantReason(t, f.az.AddRevocation(ctx, forged), GrantBadSignature)
	// A revocation by a non-administrator is refused and not recorded.
	r2, err := IssueRevocation(ctx, f.outsider.s, f.outsider.id, g.ID, f.clk.t)
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, f.az.AddRevocation(ctx, r2), GrantBadIssuer)
	if f.az.Revoked(g.ID) {
		t.Fatal("a refused revocation was recorded")
	}
	// The same bytes under the grant purpose and the revocation purpose differ.
	if bytes.Equal(signature.GrantRevocation.Prefix(), signature.Grant.Prefix()) {
		t.Fatal("grant and revocation share a signature context")
	}
}

func TestAuthorizeReasonsPreferTheGrantThatWouldHaveHelped(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	sub := newAgent(t, keystore.Ed25519)
	// A long-lived peer_node grant and a short task_submitter grant.
	if err := f.az.AddGrant(ctx, f.grant(t, f.admin, sub.id, PeerNode, 48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := f.az.AddGrant(ctx, f.grant(t, f.admin, sub.id, TaskSubmitter, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := f.az.Roles(ctx, sub.id); len(got) != 2 || got[0] != TaskSubmitter || got[1] != PeerNode {
		t.Fatalf("Roles = %v", got)
	}
	if err := f.az.Authorize(ctx, sub.id, SubmitTasks); err != nil {
		t.Fatal(err)
	}
	f.clk.t = t0.Add(2 * time.Hour)
	// submit_tasks came only from the expired grant: grant_expired, not permission_denied.
	wantReason(t, f.az.Authorize(ctx, sub.id, SubmitTasks), GrantExpired)
	// process_tasks still comes from the live grant.
	if err := f.az.Authorize(ctx, sub.id, ProcessTasks); err != nil {
		t.Fatal(err)
	}
	// manage_security never came from any grant: permission_denied naming system_admin.
	err := f.az.Authorize(ctx, sub.id, ManageSecurity)
	wantReason(t, err, PermissionDenied)
	if !strings.Contains(err.Error(), "system_admin") {
		t.Fatalf("denial should say which role carries the permission: %v", err)
	}
	n, err := f.az.Prune(ctx)
	if err != nil || n != 1 || len(f.az.Grants(sub.id)) != 1 {
		t.Fatalf("Prune = %d, %v; %d grants left", n, err, len(f.az.Grants(sub.id)))
	}
	// An administrator holds system_admin implicitly, and nothing else.
	if err := f.az.Authorize(ctx, f.admin.id, ManageSecurity); err != nil {
		t.Fatalf("administrator denied manage_security: %v", err)
	}
	wantReason(t, f.az.Authorize(ctx, f.admin.id, SubmitTasks), PermissionDenied)
	// An unknown permission is an error, not a silent allow.
	if err := f.az.Authorize(ctx, sub.id, "launch_missiles"); err == nil {
		t.Fatal("unknown permission allowed")
	}
}

func TestOperationTable(t *testing.T) {
	ctx := context.Background()
	messages := []Operation{"task_request", "task_response", "task_progress", "task_result", "error_response", "heartbeat", "feedback", "handshake"}
	for _, m := range messages {
		req, err := Required(m)
		if err != nil || req.From != FromPeer || req.Note == "" {
			t.Errorf("message type %s: %+v, %v", m, req, err)
		}
	}
	used := map[Permission]bool{}
	seen := map[Operation]bool{}
	for _, r := range Table {
		if seen[r.Op] {
			t.Errorf("operation %s listed twice", r.Op)
		}
		seen[r.Op] = true
		if r.Permission != "" {
			if _, err := ParsePermission(string(r.Permission)); err != nil {
				t.Errorf("%s: %v", r.Op, err)
			}
			used[r.Permission] = true
		} else if r.Op != OpHandshake && r.Op != OpErrorResponse && r.Op != OpRevocationSync {
			// revocation_sync (ADR 0096) carries only administrator-signed revocations, verified as on gossip.
			t.Errorf("%s needs no permission: only the handshake, error_response and revocation_sync may", r.Op)
		}
		if r.From == FromLocal && !strings.HasPrefix(string(r.Op), "control.") {
			t.Errorf("control operation %s is not named control.*", r.Op)
		}
		if (r.From == FromSelf) != strings.HasPrefix(string(r.Op), "self.") {
			t.Errorf("operation %s (from %s): self operations, and only they, are named self.*", r.Op, r.From)
		}
		if r.From != FromPeer && r.From != FromLocal && r.From != FromSelf {
			t.Errorf("operation %s: unknown side %q", r.Op, r.From)
		}
	}
	// Seed permissions whose operations are not served yet: the table lists only served operations, and
	// these return with the code that serves them (ADR 0063). A reserved permission that an operation
	// needs again must leave this list.
	reserved := map[Permission]string{
		ViewMetrics:  "metrics over the control socket",
		APIAccess:    "a local API gateway forwarding (control.api.forward)",
		RateLimiting: "rate limits shown and set at run time",
	}
	for _, p := range AllPermissions {
		if _, ok := reserved[p]; ok == used[p] {
			t.Errorf("permission %s: needed by an operation %v, reserved %v (exactly one must hold)", p, used[p], ok)
		}
	}
	if _, err := Required("control.format_disk"); !errors.Is(err, ErrUnknownOperation) {
		t.Fatalf("unknown operation: %v", err)
	}

	// AuthorizeOp follows the table: a peer_node may send task_result but not task_request.
	f := newFixture(t, nil)
	peer := newAgent(t, keystore.Ed25519)
	if err := f.az.AddGrant(ctx, f.grant(t, f.admin, peer.id, PeerNode, time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, op := range []Operation{OpTaskResult, OpTaskResponse, OpTaskProgress, OpHeartbeat, OpFeedback, OpHandshake, OpErrorResponse} {
		if err := f.az.AuthorizeOp(ctx, peer.id, op); err != nil {
			t.Errorf("peer_node denied %s: %v", op, err)
		}
	}
	wantReason(t, f.az.AuthorizeOp(ctx, peer.id, OpTaskRequest), PermissionDenied)
	if err := f.az.AuthorizeOp(ctx, peer.id, "teleport"); !errors.Is(err, ErrUnknownOperation) {
		t.Fatalf("unknown message type: %v", err)
	}
}

func TestBoltStorePersistsGrantsAndRevocations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewBoltStore(db)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, st)
	a, b := newAgent(t, keystore.Ed25519), newAgent(t, keystore.Ed25519)
	ga := f.grant(t, f.admin, a.id, PeerNode, time.Hour)
	gb := f.grant(t, f.admin, b.id, PeerNode, time.Hour)
	for _, g := range []Grant{ga, gb} {
		if err := f.az.AddGrant(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	rev, _ := IssueRevocation(ctx, f.admin.s, f.admin.id, gb.ID, f.clk.t)
	if err := f.az.AddRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopen: a fresh authorizer knows both grants and the revocation.
	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err = NewBoltStore(db)
	if err != nil {
		t.Fatal(err)
	}
	az, err := NewAuthorizer(ctx, Config{Admins: []identity.ID{f.admin.id}}, Options{Now: f.clk.now, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := az.Authorize(ctx, a.id, ShareResults); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	wantReason(t, az.Authorize(ctx, b.id, ShareResults), GrantRevoked)

	// A stored grant whose signature was altered on disk is judged bad on use.
	tampered := ga
	tampered.Issuer = f.admin.id.String()
	sig, _ := identity.Base64().DecodeString(tampered.Sig)
	sig[0] ^= 1
	tampered.Sig = identity.Base64().EncodeToString(sig)
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGrants).Put([]byte(ga.ID), tampered.Encode())
	}); err != nil {
		t.Fatal(err)
	}
	az2, err := NewAuthorizer(ctx, Config{Admins: []identity.ID{f.admin.id}}, Options{Now: f.clk.now, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, az2.Authorize(ctx, a.id, ShareResults), GrantBadSignature)

	// A record that does not decode stops loading with an error that names it.
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGrants).Put([]byte("junk"), []byte("{"))
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewAuthorizer(ctx, Config{}, Options{Store: st}); err == nil || !strings.Contains(err.Error(), `"junk"`) {
		t.Fatalf("corrupt record: %v", err)
	}
	db.Close()
}

func TestGrantLimitPerSubject(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	if err := f.az.SetConfig(Config{Admins: []identity.ID{f.admin.id}, MaxGrantsPerSubject: 2}); err != nil {
		t.Fatal(err)
	}
	sub := newAgent(t, keystore.Ed25519)
	for i := 0; i < 2; i++ {
		if err := f.az.AddGrant(ctx, f.grant(t, f.admin, sub.id, PeerNode, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	err := f.az.AddGrant(ctx, f.grant(t, f.admin, sub.id, PeerNode, time.Hour))
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("third grant: %v", err)
	}
	f.clk.t = t0.Add(2 * time.Minute) // the first two expire and make room
	if err := f.az.AddGrant(ctx, f.grant(t, f.admin, sub.id, PeerNode, time.Hour)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if n := len(f.az.Grants(sub.id)); n != 1 {
		t.Fatalf("%d grants held, want 1", n)
	}
}

func TestLocalCallersByPeerCredentials(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cx")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "c.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("unix", sock)
		if err == nil {
			defer c.Close()
			time.Sleep(200 * time.Millisecond)
		}
	}()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cred, err := PeerCred(conn)
	if err != nil {
		t.Fatal(err)
	}
	if cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) || cred.PID != int32(os.Getpid()) {
		t.Fatalf("PeerCred = %+v, want uid %d gid %d pid %d", cred, os.Getuid(), os.Getgid(), os.Getpid())
	}

	f := newFixture(t, nil)
	check := func(local LocalRoles, op Operation, want Reason) {
		t.Helper()
		if err := f.az.SetConfig(Config{Admins: f.az.Admins(), Local: local}); err != nil {
			t.Fatal(err)
		}
		err := f.az.AuthorizeLocal(ctx, cred, op)
		if want == "" {
			if err != nil {
				t.Fatalf("%s: %v", op, err)
			}
			return
		}
		wantReason(t, err, want)
		if !strings.Contains(err.Error(), cred.String()) {
			t.Fatalf("denial does not name the caller: %v", err)
		}
	}
	check(LocalRoles{}, CtlStatus, NoGrant)
	operator := NewLocalRoles(map[uint32][]Role{cred.UID: {AgentOperator}}, nil)
	check(operator, CtlStatus, "")
	check(operator, CtlRotate, "")
	check(operator, CtlGrant, PermissionDenied)
	check(operator, CtlTaskResult, PermissionDenied)
	byGroup := NewLocalRoles(nil, map[uint32][]Role{cred.GID: {SystemAdmin}})
	check(byGroup, CtlGrant, "")
	check(byGroup, CtlStatus, PermissionDenied)
	if err := f.az.AuthorizeLocal(ctx, cred, "control.nope"); !errors.Is(err, ErrUnknownOperation) {
		t.Fatalf("unknown control operation: %v", err)
	}
}

func TestLocalConfigCompile(t *testing.T) {
	look := Lookups{
		User: func(n string) (uint32, error) {
			if n == "custos" {
				return 990, nil
			}
			return 0, errors.New("unknown user")
		},
		Group: func(n string) (uint32, error) {
			if n == "ops" {
				return 50, nil
			}
			return 0, errors.New("unknown group")
		},
	}
	l, err := LocalConfig{
		Users:  map[string][]string{"custos": {"agent_operator", "system_admin"}, "1001": {"task_submitter"}},
		Groups: map[string][]string{"ops": {"agent_operator"}},
	}.Compile(look)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.RolesFor(Cred{UID: 990, GID: 50}); len(got) != 2 || got[0] != SystemAdmin || got[1] != AgentOperator {
		t.Fatalf("RolesFor custos/ops = %v", got)
	}
	if got := l.RolesFor(Cred{UID: 1001, GID: 1001}); len(got) != 1 || got[0] != TaskSubmitter {
		t.Fatalf("RolesFor 1001 = %v", got)
	}
	bad := []struct {
		cfg  LocalConfig
		want string
	}{
		{LocalConfig{Users: map[string][]string{"nobody-here": {"agent_operator"}}}, "neither a number nor a known name"},
		{LocalConfig{Users: map[string][]string{"custos": {"root"}}}, `unknown role "root"`},
		{LocalConfig{Users: map[string][]string{"custos": {"agent_operator"}, "990": {"task_submitter"}}}, "already listed"},
		{LocalConfig{Groups: map[string][]string{"wheel": {"agent_operator"}}}, "groups"},
	}
	for _, c := range bad {
		if _, err := c.cfg.Compile(look); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Compile(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

// FuzzDecodeGrant: DecodeGrant never panics, and whatever it accepts encodes back to the same bytes.
func FuzzDecodeGrant(f *testing.F) {
	s, _ := keystore.GenerateMemorySigner(keystore.Ed25519)
	id := identity.NewID(s.Public())
	g, err := IssueGrant(context.Background(), s, id, id, PeerNode, t0, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(g.Encode())
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{}`))
	seedVectors(f)
	f.Add(EncodeGrants([]Grant{g, g}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzGrantList(t, b)
		g, err := DecodeGrant(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if !bytes.Equal(g.Encode(), b) {
			t.Fatalf("accepted %q but encodes as %q", b, g.Encode())
		}
	})
}

// fuzzGrantList is the same property for grant lists (run from FuzzDecodeGrant's corpus too).
func fuzzGrantList(t *testing.T, b []byte) {
	gs, err := DecodeGrants(b)
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	if len(b) > 0 && !bytes.Equal(EncodeGrants(gs), b) {
		t.Fatalf("accepted list %q but encodes as %q", b, EncodeGrants(gs))
	}
}

func TestGrantList(t *testing.T) {
	f := newFixture(t, nil)
	sub := newAgent(t, keystore.Ed25519)
	gs := []Grant{f.grant(t, f.admin, sub.id, PeerNode, time.Hour), f.grant(t, f.admin2, sub.id, TaskSubmitter, time.Hour)}
	b := EncodeGrants(gs)
	back, err := DecodeGrants(b)
	if err != nil || len(back) != 2 || back[0] != gs[0] || back[1] != gs[1] {
		t.Fatalf("round trip: %v", err)
	}
	if gs, err := DecodeGrants(nil); err != nil || gs != nil {
		t.Fatal("empty input is no grants")
	}
	if gs, err := DecodeGrants([]byte("[]")); err != nil || len(gs) != 0 {
		t.Fatal("[] is no grants")
	}
	many := make([]Grant, MaxGrantList+1)
	for i := range many {
		many[i] = gs[0]
	}
	for _, c := range []struct{ name, in, want string }{
		{"spaces", strings.Replace(string(b), "},{", "}, {", 1), "canonical"},
		{"trailing", string(b) + "[]", "trailing"},
		{"bad element", "[" + strings.Replace(string(gs[0].Encode()), `"v":2`, `"v":3`, 1) + "]", "grant 0 of the list"},
		{"too many", string(EncodeGrants(many)), "at most 16"},
		{"not a list", `{"v":1}`, "cannot unmarshal"},
	} {
		if _, err := DecodeGrants([]byte(c.in)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	fuzzGrantList(t, b)
}

// FuzzDecodeRevocation: the same property for revocations.
func FuzzDecodeRevocation(f *testing.F) {
	s, _ := keystore.GenerateMemorySigner(keystore.Ed25519)
	id := identity.NewID(s.Public())
	r, err := IssueRevocation(context.Background(), s, id, "AAAAAAAAAAAAAAAAAAAAAA", t0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(r.Encode())
	f.Add([]byte(`{"v":1,"grant":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRevocation(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Encode(), b) {
			t.Fatalf("accepted %q but encodes as %q", b, r.Encode())
		}
	})
}

// FuzzParseRoles: ParseRoles never panics, and what it accepts survives Encode/ParseRoles unchanged.
func FuzzParseRoles(f *testing.F) {
	f.Add(SeedRoles().Encode())
	f.Add([]byte("roles: {system_admin: [view_metrics]}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := ParseRoles(b)
		if err != nil {
			return
		}
		back, err := ParseRoles(rs.Encode())
		if err != nil || !back.Equal(rs) {
			t.Fatalf("accepted roles do not round-trip: %v", err)
		}
	})
}

// BenchmarkAuthorize: the per-message check with the verified-grant cache warm, against the baseline of
// what the cache saves (one signature verification of the grant).
func BenchmarkAuthorize(b *testing.B) {
	ctx := context.Background()
	admin := newAgent(b, keystore.Ed25519)
	clk := &clock{t: t0}
	az, err := NewAuthorizer(ctx, Config{Admins: []identity.ID{admin.id}}, Options{Now: clk.now})
	if err != nil {
		b.Fatal(err)
	}
	sub := newAgent(b, keystore.Ed25519)
	g, err := IssueGrant(ctx, admin.s, admin.id, sub.id, PeerNode, t0, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	if err := az.AddGrant(ctx, g); err != nil {
		b.Fatal(err)
	}
	b.Run("authorize-cached", func(b *testing.B) {
		for b.Loop() {
			if err := az.Authorize(ctx, sub.id, ShareResults); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-verify-grant-signature", func(b *testing.B) {
		sig, _ := identity.Base64().DecodeString(g.Sig)
		for b.Loop() {
			if err := signature.VerifyInput(admin.id.PublicKey(), g.SigningInput(), sig); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// fuzzPresentation: DecodePresentation never panics, errors wrap ErrMalformed (or name the grant), and
// what it accepts encodes back to the same bytes.
func fuzzPresentation(t *testing.T, b []byte) {
	p, err := DecodePresentation(b)
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	if len(b) > 0 && !bytes.Equal(EncodePresentation(p), b) {
		t.Fatalf("accepted presentation %q but encodes as %q", b, EncodePresentation(p))
	}
}

// TestPresentation: grants with issuer logs round-trip; without logs the form is exactly the grant list
// (what agents before version 2 read); malformed forms are refused.
func TestPresentation(t *testing.T) {
	f := newFixture(t, nil)
	sub := newAgent(t, keystore.Ed25519)
	gs := []Grant{f.grant(t, f.admin, sub.id, PeerNode, time.Hour)}
	if !bytes.Equal(EncodePresentation(Presentation{Grants: gs}), EncodeGrants(gs)) {
		t.Fatal("a presentation without logs is not the plain grant list")
	}
	p := Presentation{Grants: gs, Logs: [][]byte{[]byte("{\"v\":1}\n")}}
	b := EncodePresentation(p)
	back, err := DecodePresentation(b)
	if err != nil || len(back.Grants) != 1 || back.Grants[0] != gs[0] || len(back.Logs) != 1 || string(back.Logs[0]) != "{\"v\":1}\n" {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	if back, err := DecodePresentation(EncodeGrants(gs)); err != nil || len(back.Grants) != 1 || back.Logs != nil {
		t.Fatalf("the plain grant list: %+v %v", back, err)
	}
	s := string(b)
	for _, c := range []struct{ name, in, want string }{
		{"unknown field", strings.Replace(s, `{"grants"`, `{"x":1,"grants"`, 1), "unknown field"},
		{"no logs", `{"grants":[],"logs":[]}`, "1 to 16 logs"},
		{"bad log encoding", strings.Replace(s, `"logs":["`, `"logs":["=`, 1), "base64url"},
		{"whitespace", strings.Replace(s, `,"logs"`, `, "logs"`, 1), "canonical"},
		{"trailing", s + "{}", "trailing"},
		{"too large", `{"grants":[],"logs":["` + strings.Repeat("A", MaxPresentation) + `"]}`, "exceeds"},
	} {
		if _, err := DecodePresentation([]byte(c.in)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	fuzzPresentation(t, b)
}

// FuzzDecodePresentation is fuzzPresentation over a presentation with a log and the plain list.
func FuzzDecodePresentation(f *testing.F) {
	s, _ := keystore.GenerateMemorySigner(keystore.Ed25519)
	id := identity.NewID(s.Public())
	g, err := IssueGrant(context.Background(), s, id, id, PeerNode, t0, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(EncodePresentation(Presentation{Grants: []Grant{g}, Logs: [][]byte{[]byte("x\n")}}))
	f.Add(EncodeGrants([]Grant{g}))
	f.Add([]byte(`{"grants":[],"logs":["eA"]}`))
	f.Fuzz(fuzzPresentation)
}
