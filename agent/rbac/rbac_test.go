package rbac

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// agent is a test identity: an in-memory signer and its ID.
type agent struct {
	s  keystore.Signer
	id identity.ID
}

func newAgent(t testing.TB, alg keystore.Algorithm) agent {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(alg)
	if err != nil {
		t.Fatal(err)
	}
	return agent{s: s, id: identity.NewID(s.Public())}
}

// clock is a controllable clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	admin, admin2, outsider agent
	clk                     *clock
	az                      *Authorizer
}

func newFixture(t *testing.T, store Store) *fixture {
	t.Helper()
	f := &fixture{
		admin:    newAgent(t, keystore.Ed25519),
		admin2:   newAgent(t, keystore.P256),
		outsider: newAgent(t, keystore.Ed25519),
		clk:      &clock{t: t0},
	}
	az, err := NewAuthorizer(context.Background(), Config{Admins: []identity.ID{f.admin.id, f.admin2.id}},
		Options{Now: f.clk.now, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	f.az = az
	return f
}

func (f *fixture) grant(t testing.TB, by agent, subject identity.ID, r Role, ttl time.Duration) Grant {
	t.Helper()
	g, err := IssueGrant(context.Background(), by.s, by.id, subject, r, f.clk.t, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func wantReason(t *testing.T, err error, r Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("want denial %s, got nil (allowed)", r)
	}
	if !errors.Is(err, r) || !errors.Is(err, ErrDenied) {
		t.Fatalf("want denial %s, got %v", r, err)
	}
	var d *Denial
	if !errors.As(err, &d) || d.Detail == "" || !strings.Contains(err.Error(), string(r)) {
		t.Fatalf("denial %v lacks a reason code or a detail sentence", err)
	}
}

func TestRolesFileIsTheSeed(t *testing.T) {
	data, err := os.ReadFile("../../configs/roles.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRoles(data)
	if err != nil {
		t.Fatal(err)
	}
	want := map[Role][]Permission{
		SystemAdmin:    {"manage_agents", "manage_network", "manage_security", "view_metrics"},
		AgentOperator:  {"submit_tasks", "view_status", "manage_local_agent"},
		TaskSubmitter:  {"submit_tasks", "view_results"},
		PeerNode:       {"process_tasks", "share_results", "discover_peers"},
		GatewayService: {"api_access", "rate_limiting", "protocol_translation"},
	}
	for r, ps := range want {
		if got := rs.Permissions(r); !slices.Equal(got, ps) {
			t.Errorf("configs/roles.yaml: %s = %v, the seed says %v", r, got, ps)
		}
	}
	if !rs.Equal(SeedRoles()) {
		t.Error("configs/roles.yaml differs from SeedRoles")
	}
	// Encode gives a file ParseRoles reads back to the same table.
	back, err := ParseRoles(rs.Encode())
	if err != nil || !back.Equal(rs) {
		t.Fatalf("Encode/ParseRoles round trip: %v", err)
	}
}

func TestParseRolesRefuses(t *testing.T) {
	seed := string(SeedRoles().Encode())
	cases := []struct{ name, in, want string }{
		{"empty", "", "empty"},
		{"unknown top-level field", seed + "admins: []\n", "field admins not found"},
		{"unknown role", strings.Replace(seed, "peer_node:", "super_user:", 1), `unknown role "super_user"`},
		{"unknown permission", strings.Replace(seed, "- view_metrics", "- launch_missiles", 1), `unknown permission "launch_missiles"`},
		{"missing role", strings.Replace(seed, "  gateway_service:\n    - api_access\n    - rate_limiting\n    - protocol_translation\n", "", 1), "role gateway_service is missing"},
		{"duplicate permission", strings.Replace(seed, "- view_metrics", "- manage_agents", 1), "lists manage_agents twice"},
		{"duplicate role", seed + "  peer_node: []\n", "role peer_node listed twice"},
		{"duplicate top-level key", seed + "roles: {}\n", "already defined"},
		{"not a list", "roles:\n  system_admin: manage_agents\n", "want a list"},
		{"roles not a mapping", "roles: [system_admin]\n", "must be a mapping"},
		{"two documents", seed + "---\nroles: {}\n", "more than one YAML document"},
		{"number as permission", strings.Replace(seed, "- view_metrics", "- 12", 1), "plain name"},
		{"too large", "roles:\n" + strings.Repeat("#", MaxRolesFileSize), "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseRoles([]byte(c.in))
			if err == nil || !errors.Is(err, ErrBadRoles) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseRoles: got %v, want ErrBadRoles mentioning %q", err, c.want)
			}
		})
	}
	// Narrowing a role is allowed (the vocabulary is fixed, the assignment is the operator's).
	narrowed, err := ParseRoles([]byte(strings.Replace(seed, "  gateway_service:\n    - api_access\n    - rate_limiting\n    - protocol_translation\n", "  gateway_service: []\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if narrowed.Has(GatewayService, APIAccess) || len(narrowed.Permissions(GatewayService)) != 0 {
		t.Fatal("gateway_service: [] still carries permissions")
	}
}

// TestEveryPermission is the seed's table, permission by permission: a peer without the permission is
// denied with a clear reason; a peer with a valid grant of a role carrying it is allowed; an expired grant,
// a revoked grant, a grant signed by a non-administrator and a grant with a bad signature are refused,
// each with its reason.
func TestEveryPermission(t *testing.T) {
	ctx := context.Background()
	for _, p := range AllPermissions {
		for _, role := range SeedRoles().RolesWith(p) {
			t.Run(string(p)+"/"+string(role), func(t *testing.T) {
				f := newFixture(t, nil)
				// No grant at all.
				nobody := newAgent(t, keystore.Ed25519)
				wantReason(t, f.az.Authorize(ctx, nobody.id, p), NoGrant)

				// A valid grant of a role that lacks p.
				other := newAgent(t, keystore.Ed25519)
				lacking := roleWithout(p)
				if err := f.az.AddGrant(ctx, f.grant(t, f.admin, other.id, lacking, time.Hour)); err != nil {
					t.Fatal(err)
				}
				err := f.az.Authorize(ctx, other.id, p)
				wantReason(t, err, PermissionDenied)
				if !strings.Contains(err.Error(), string(role)) {
					t.Errorf("permission_denied should name a role that carries %s: %v", p, err)
				}

				// A valid grant of the role: allowed (from either administrator, Ed25519 and P-256).
				for _, by := range []agent{f.admin, f.admin2} {
					holder := newAgent(t, keystore.Ed25519)
					g := f.grant(t, by, holder.id, role, time.Hour)
					if err := f.az.AddGrant(ctx, g); err != nil {
						t.Fatalf("AddGrant: %v", err)
					}
					if err := f.az.Authorize(ctx, holder.id, p); err != nil {
						t.Fatalf("holder of %s denied %s: %v", role, p, err)
					}
					// Expired: refused with grant_expired (and allowed again never).
					f.clk.t = t0.Add(time.Hour)
					wantReason(t, f.az.Authorize(ctx, holder.id, p), GrantExpired)
					f.clk.t = t0
				}

				// Revoked: refused with grant_revoked.
				holder := newAgent(t, keystore.P256)
				g := f.grant(t, f.admin, holder.id, role, time.Hour)
				if err := f.az.AddGrant(ctx, g); err != nil {
					t.Fatal(err)
				}
				rev, err := IssueRevocation(ctx, f.admin2.s, f.admin2.id, g.ID, f.clk.t)
				if err != nil {
					t.Fatal(err)
				}
				if err := f.az.AddRevocation(ctx, rev); err != nil {
					t.Fatal(err)
				}
				wantReason(t, f.az.Authorize(ctx, holder.id, p), GrantRevoked)
				// The revoked grant presented again (say, at the next handshake) is refused and not stored twice.
				wantReason(t, f.az.CheckGrant(ctx, g), GrantRevoked)
				wantReason(t, f.az.AddGrant(ctx, g), GrantRevoked)

				// Signed by an agent that is not an administrator: refused at AddGrant, nothing stored.
				forged := newAgent(t, keystore.Ed25519)
				bad := f.grant(t, f.outsider, forged.id, role, time.Hour)
				wantReason(t, f.az.AddGrant(ctx, bad), GrantBadIssuer)
				if len(f.az.Grants(forged.id)) != 0 {
					t.Fatal("a refused grant was stored")
				}
				wantReason(t, f.az.Authorize(ctx, forged.id, p), NoGrant)

				// Claims an administrator as issuer but is signed by someone else: bad signature.
				impostor, err := IssueGrant(ctx, f.outsider.s, f.admin.id, forged.id, role, f.clk.t, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				wantReason(t, f.az.AddGrant(ctx, impostor), GrantBadSignature)
				// A valid grant with its role changed after signing: bad signature.
				tampered := f.grant(t, f.admin, forged.id, lacking, time.Hour)
				tampered.Role = role
				wantReason(t, f.az.AddGrant(ctx, tampered), GrantBadSignature)
				// Already expired when presented.
				old := f.grant(t, f.admin, forged.id, role, time.Minute)
				f.clk.t = t0.Add(2 * time.Minute)
				wantReason(t, f.az.AddGrant(ctx, old), GrantExpired)
				f.clk.t = t0
				wantReason(t, f.az.Authorize(ctx, forged.id, p), NoGrant)

				// A stored grant whose issuer stops being an administrator (configuration reload).
				later := newAgent(t, keystore.Ed25519)
				if err := f.az.AddGrant(ctx, f.grant(t, f.admin2, later.id, role, time.Hour)); err != nil {
					t.Fatal(err)
				}
				if err := f.az.SetConfig(Config{Admins: []identity.ID{f.admin.id}}); err != nil {
					t.Fatal(err)
				}
				wantReason(t, f.az.Authorize(ctx, later.id, p), GrantBadIssuer)
			})
		}
	}
}

func roleWithout(p Permission) Role {
	for _, r := range AllRoles {
		if !SeedRoles().Has(r, p) {
			return r
		}
	}
	panic("every role has " + p)
}

// TestDocsListEveryOperation keeps docs/authorization.md in step with Table and the reason codes.
func TestDocsListEveryOperation(t *testing.T) {
	doc, err := os.ReadFile("../../docs/authorization.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	for _, r := range Table {
		perm := "—"
		if r.Permission != "" {
			perm = "`" + string(r.Permission) + "`"
		}
		from := string(r.From)
		row := "| `" + string(r.Op) + "` | " + perm + " | " + from + " | " + r.Note + " |"
		if !strings.Contains(text, row) {
			t.Errorf("docs/authorization.md lacks the row\n%s", row)
		}
	}
	for _, reason := range AllReasons {
		if !strings.Contains(text, "`"+string(reason)+"`") {
			t.Errorf("docs/authorization.md does not explain %s", reason)
		}
	}
	for _, role := range AllRoles {
		perms := SeedRoles().Permissions(role)
		cells := make([]string, len(perms))
		for i, p := range perms {
			cells[i] = "`" + string(p) + "`"
		}
		row := "| `" + string(role) + "` | " + strings.Join(cells, ", ") + " |"
		if !strings.Contains(text, row) {
			t.Errorf("docs/authorization.md lacks the role row %s", row)
		}
	}
}
