package rbac

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/keystore"
)

// Negative vectors (internal/vectors): role grants as data, each with the code a verifier must refuse it
// with: malformed (it does not decode) or the rbac reason (grant_bad_issuer, grant_bad_signature,
// grant_revoked, grant_expired). Fields: input (the grant, JSON), admins (the system administrators' agent
// IDs, space-separated; their inception keys sign), now (Unix seconds), revocation (optional: a revocation
// the verifier holds, JSON). CUSTOS_UPDATE_VECTORS=1 regenerates them from writeVectors (new keys).

const vectorDir = "testdata/vectors"

// checkVector judges the vector's grant and returns the error and its code.
func checkVector(v *vectors.Vector) (string, error) {
	code := func(err error) string {
		if errors.Is(err, ErrMalformed) {
			return "malformed"
		}
		return string(ReasonOf(err))
	}
	ctx := context.Background()
	g, err := DecodeGrant(v.Input())
	if err != nil {
		return code(err), err
	}
	var admins []identity.ID
	for _, s := range strings.Fields(v.String("admins")) {
		id, err := identity.ParseID(s)
		if err != nil {
			return "vector: admins", err
		}
		admins = append(admins, id)
	}
	now, err := strconv.ParseInt(v.String("now"), 10, 64)
	if err != nil {
		return "vector: now", err
	}
	az, err := NewAuthorizer(ctx, Config{Admins: admins}, Options{Now: func() time.Time { return time.Unix(now, 0) }})
	if err != nil {
		return "vector: authorizer", err
	}
	if b, ok := v.Get("revocation"); ok {
		r, err := DecodeRevocation(b)
		if err != nil {
			return "vector: revocation", err
		}
		if err := az.AddRevocation(ctx, r); err != nil {
			return "vector: revocation", err
		}
	}
	err = az.CheckGrant(ctx, g)
	return code(err), err
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, checkVector)
}

func seedVectors(f *testing.F) { vectors.Seed(f, vectorDir, nil) }

func writeVectors(t *testing.T) {
	f := newFixture(t, nil)
	sub := newAgent(t, keystore.P256)
	g := f.grant(t, f.admin, sub.id, PeerNode, 24*time.Hour)
	s := string(g.Encode())
	admins := []byte(f.admin.id.String() + " " + f.admin2.id.String())
	now := []byte(strconv.FormatInt(f.clk.t.Add(time.Hour).Unix(), 10))
	var out []*vectors.Vector
	add := func(name, comment, expect, text string, in []byte) *vectors.Vector {
		v := vectors.New(name, comment, expect, text).Set("input", in).Set("admins", admins).Set("now", now)
		out = append(out, v)
		return v
	}
	rep := func(old, new string) []byte {
		if !strings.Contains(s, old) {
			t.Fatalf("no %q in %s", old, s)
		}
		return []byte(strings.Replace(s, old, new, 1))
	}
	add("ok", "a peer_node grant by an administrator, valid for a day (the one the others change)", "ok", "", []byte(s))
	bad := f.grant(t, f.outsider, sub.id, PeerNode, 24*time.Hour)
	add("bad-issuer", "signed by an agent that is not an administrator", "grant_bad_issuer", "", bad.Encode())
	add("bad-signature", "the role changed after signing", "grant_bad_signature", "", rep(`"peer_node"`, `"task_submitter"`))
	add("expired", "checked two days after issue", "grant_expired", "expired at", []byte(s)).Set("now", []byte(strconv.FormatInt(f.clk.t.Add(48*time.Hour).Unix(), 10)))
	r, err := IssueRevocation(context.Background(), f.admin.s, f.admin.id, g.ID, f.clk.t.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	add("revoked", "an administrator revoked it", "grant_revoked", "was revoked", []byte(s)).Set("revocation", r.Encode())
	add("unknown-field", "an extra field", "malformed", "unknown field", rep(`"v":2,`, `"v":2,"extra":true,`))
	add("trailing", "an object after the grant", "malformed", "trailing data", []byte(s+"{}"))
	add("whitespace", "a space after a colon: not the canonical form", "malformed", "canonical", rep(`"v":2,`, `"v": 2,`))
	add("duplicate-key", "a key given twice", "malformed", "canonical", rep(`"v":2,`, `"v":2,"v":2,`))
	add("version-3", "grant version 3", "malformed", "version 3", rep(`"v":2,`, `"v":3,`))
	add("gen-0-spelled-out", "generation 0 written out (it is omitted)", "malformed", "canonical", rep(`"sig"`, `"gen":0,"sig"`))
	add("bad-head", "a head that is not a digest", "malformed", "head must be", rep(`"sig"`, `"head":"AAAA","sig"`))
	add("unknown-role", "role root", "malformed", `unknown role "root"`, rep(`"peer_node"`, `"root"`))
	add("bad-subject", "a subject of an unknown algorithm", "malformed", "subject", rep(sub.id.String(), "rsa:AAAA"))
	add("short-grant-id", "a 3-byte grant ID", "malformed", "grant ID", rep(g.ID, "AAAA"))
	add("padded-signature", "base64 padding on the signature", "malformed", "signature", rep(`"}`, `=="}`))
	add("not-an-object", "a JSON array", "malformed", "cannot unmarshal", []byte(`[]`))
	g2 := g
	g2.Expires = g2.Issued
	add("empty-validity", "expires equal to issued", "malformed", "expires must be after issued", g2.Encode())
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}
