package rbac

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// adminLog is an administrator with a real key event log that the test rotates and recovers; resolve
// gives the authorizer its state now.
type adminLog struct {
	mu   sync.Mutex
	keys []keystore.Signer // keys[g] signs generation g; the last one is pre-committed
	rec  keystore.Signer
	st   identity.State
}

func newAdminLog(t *testing.T, at time.Time) *adminLog {
	t.Helper()
	a := &adminLog{keys: []keystore.Signer{newAgent(t, keystore.Ed25519).s, newAgent(t, keystore.Ed25519).s}, rec: newAgent(t, keystore.Ed25519).s}
	e, err := identity.Incept(context.Background(), a.keys[0], a.keys[1].Public(), a.rec.Public(), at)
	if err != nil {
		t.Fatal(err)
	}
	l := identity.Log{Events: []identity.Event{e}}
	if a.st, err = l.Verify(); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *adminLog) apply(t *testing.T, e identity.Event, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st, err = a.st.Apply(&e); err != nil {
		t.Fatal(err)
	}
}

func (a *adminLog) rotate(t *testing.T, at time.Time) {
	g := a.st.Generation
	a.keys = append(a.keys, newAgent(t, keystore.Ed25519).s)
	e, err := identity.Rotate(context.Background(), a.st, a.keys[g], a.keys[g+1], a.keys[g+2].Public(), at)
	a.apply(t, e, err)
}

// recover replaces the current generation's key (lost) with a fresh one.
func (a *adminLog) recover(t *testing.T, at time.Time) {
	fresh, next := newAgent(t, keystore.Ed25519).s, newAgent(t, keystore.Ed25519).s
	e, err := identity.Recover(context.Background(), a.st, a.rec, fresh, next.Public(), a.rec.Public(), at)
	a.keys = append(a.keys[:a.st.Generation+1], fresh, next)
	a.apply(t, e, err)
}

func (a *adminLog) resolve(identity.ID) (identity.State, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st, nil
}

// current signs as the current generation.
func (a *adminLog) current() (keystore.Signer, IssuerKey) {
	return a.keys[a.st.Generation], IssuerOf(a.st)
}

// TestGrantsSurviveRotation (issue 12 finding 12): a grant, a version 1 grant and a revocation signed by
// generation 0 stay valid after the administrator rotates; what the rotated-away key signs afterwards is
// refused (grant_bad_signature, issued outside its generation); a grant naming a generation this agent's
// copy of the log does not have is refused; a recovery voids what the lost generation signed (whenever it
// says it signed it) and keeps what earlier generations signed.
// Before the fix the first check failed with: grant_bad_signature "does not verify under the issuer's
// current key".
func TestGrantsSurviveRotation(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	adm := newAdminLog(t, t0.Add(-time.Hour))
	az, err := NewAuthorizer(ctx, Config{Admins: []identity.ID{adm.st.ID}}, Options{Now: clk.now, Resolve: adm.resolve})
	if err != nil {
		t.Fatal(err)
	}
	sub := newAgent(t, keystore.Ed25519)
	s0, k0 := adm.current()
	g0, err := IssueGrantBy(ctx, s0, k0, sub.id, TaskSubmitter, clk.t, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A version 1 grant (no generation named) from before the rotation.
	v1ID, err := newID() // a grant of its own (changing g0.ID's last character could give g0.ID again)
	if err != nil {
		t.Fatal(err)
	}
	v1 := Grant{Version: grantVersion1, ID: v1ID, Subject: sub.id.String(), Role: TaskSubmitter, Issuer: adm.st.ID.String(),
		Issued: clk.t.Unix(), Expires: clk.t.Add(time.Hour).Unix()}
	v1.Sig = sign(t, s0, &v1)
	if err := az.AddGrant(ctx, g0); err != nil {
		t.Fatal(err)
	}

	clk.t = clk.t.Add(10 * time.Minute)
	adm.rotate(t, clk.t)
	clk.t = clk.t.Add(10 * time.Minute)
	if err := az.Authorize(ctx, sub.id, SubmitTasks); err != nil {
		t.Fatalf("the grant of generation 0 after the administrator rotated: %v", err)
	}
	if err := az.AddGrant(ctx, v1); err != nil {
		t.Fatalf("a version 1 grant signed before the rotation: %v", err)
	}
	// The rotated-away key signs now: refused.
	late, err := IssueGrantBy(ctx, s0, k0, newAgent(t, keystore.Ed25519).id, SystemAdmin, clk.t, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	err = az.AddGrant(ctx, late)
	wantReason(t, err, GrantBadSignature)
	if !has(err, identity.ErrOutsideGeneration) {
		t.Fatalf("a grant by the rotated-away key, dated now: %v, want ErrOutsideGeneration", err)
	}
	// A grant of generation 1 verifies; one naming generation 2 (not in the log known here) does not.
	s1, k1 := adm.current()
	g1, err := IssueGrantBy(ctx, s1, k1, newAgent(t, keystore.Ed25519).id, TaskSubmitter, clk.t, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := az.AddGrant(ctx, g1); err != nil {
		t.Fatalf("a grant of generation 1: %v", err)
	}
	ahead := k1
	ahead.Generation = 2
	g2, _ := IssueGrantBy(ctx, s1, ahead, newAgent(t, keystore.Ed25519).id, TaskSubmitter, clk.t, time.Hour)
	if err := az.AddGrant(ctx, g2); !has(err, identity.ErrGenerationUnknown) {
		t.Fatalf("a grant naming generation 2: %v, want ErrGenerationUnknown", err)
	}

	// Generation 1 is lost and recovered: its grant (and a backdated one) are void; generation 0's stays.
	backdated, _ := IssueGrantBy(ctx, s1, k1, newAgent(t, keystore.Ed25519).id, SystemAdmin, clk.t.Add(-5*time.Minute), time.Hour)
	clk.t = clk.t.Add(time.Minute)
	adm.recover(t, clk.t)
	if err := az.CheckGrant(ctx, g1); !has(err, identity.ErrLostGeneration) || ReasonOf(err) != GrantBadSignature {
		t.Fatalf("the grant of the lost generation after the recovery: %v, want grant_bad_signature / ErrLostGeneration", err)
	}
	if err := az.AddGrant(ctx, backdated); !has(err, identity.ErrLostGeneration) {
		t.Fatalf("a backdated grant of the lost generation: %v", err)
	}
	if err := az.Authorize(ctx, sub.id, SubmitTasks); err != nil {
		t.Fatalf("the grant of generation 0 after the recovery of generation 1: %v", err)
	}
	s2, k2 := adm.current()
	r, err := IssueRevocationBy(ctx, s2, k2, g0.ID, clk.t)
	if err != nil {
		t.Fatal(err)
	}
	if err := az.AddRevocation(ctx, r); err != nil {
		t.Fatalf("a revocation by the recovered generation: %v", err)
	}
	wantReason(t, az.CheckGrant(ctx, g0), GrantRevoked)
}

func sign(t *testing.T, s keystore.Signer, g *Grant) string {
	t.Helper()
	sig, err := s.Sign(context.Background(), g.SigningInput().Message())
	if err != nil {
		t.Fatal(err)
	}
	return identity.Base64().EncodeToString(sig)
}

// has reports whether err's text carries target's (a *Denial keeps the cause's text, not the cause).
func has(err, target error) bool { return err != nil && strings.Contains(err.Error(), target.Error()) }
