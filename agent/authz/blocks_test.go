package authz

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// TestInstallBlockNotice (ADR 0101): a block notice is judged before it is installed: signed by a
// non-administrator it is ignored (not forwarded, not scored: as a revocation); ended, or with a forged
// signature, it is rejected (its publisher is scored down)
// and the agent stays admitted; a genuine one blocks the agent (audited peer.blocked with the issuer),
// an older one is ignored (block_stale), a later unblock lifts the block, and a block ends by itself.
func TestInstallBlockNotice(t *testing.T) {
	ctx := context.Background()
	admin := agenttest.NewIdentity(t, keystore.Ed25519)
	stranger := agenttest.NewIdentity(t, keystore.Ed25519)
	target := agenttest.NewIdentity(t, keystore.Ed25519)
	f := newFixture(t, "authorization: {admins: ["+admin.ID().String()+"]}\n")
	now := time.Now()
	issue := func(by *agenttest.Identity, action string, issued, until time.Time) rbac.BlockNotice {
		t.Helper()
		n, err := rbac.IssueBlockNotice(ctx, by.Current(), rbac.IssuerKey{ID: by.ID()}, action, target.ID(), issued, until, "test")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	forged := issue(admin, rbac.BlockActionBlock, now, now.Add(time.Hour))
	forged.Sig = identity.Base64().EncodeToString(bytes.Repeat([]byte{1}, 64))
	for _, tc := range []struct {
		name   string
		n      rbac.BlockNotice
		want   reason.Code
		ignore bool
	}{
		{"non-administrator", issue(stranger, rbac.BlockActionBlock, now, now.Add(time.Hour)), reason.GrantBadIssuer, true},
		{"ended", issue(admin, rbac.BlockActionBlock, now.Add(-2*time.Hour), now.Add(-time.Hour)), reason.BlockExpired, false},
		{"forged", forged, reason.GrantBadSignature, false},
	} {
		ignore, err := f.z.InstallBlockNotice(ctx, tc.n, nil, "gossip")
		if ignore != tc.ignore || reason.Of(err) != tc.want {
			t.Fatalf("%s: ignore=%v err=%v, want ignore=%v with %s", tc.name, ignore, err, tc.ignore, tc.want)
		}
		if f.rep.Level(target.ID()) == reputation.Blocked {
			t.Fatalf("%s: the notice blocked the agent", tc.name)
		}
	}
	old := issue(admin, rbac.BlockActionBlock, now.Add(-time.Minute), now.Add(time.Hour))
	n := issue(admin, rbac.BlockActionBlock, now, now.Add(time.Hour))
	if ignore, err := f.z.InstallBlockNotice(ctx, n, nil, "gossip"); ignore || err != nil {
		t.Fatalf("genuine notice: ignore=%v err=%v", ignore, err)
	}
	if f.rep.Admit(target.ID()) == nil {
		t.Fatal("the blocked agent is still admitted")
	}
	if !f.audit(t, audit.PeerBlocked, func(e audit.Entry) bool {
		return e.Subject == target.ID().String() && e.Details["issuer"] == admin.ID().String() && e.Details["source"] == "remote"
	}) {
		t.Fatal("no peer.blocked audit record naming the issuer")
	}
	if ignore, err := f.z.InstallBlockNotice(ctx, n, nil, "gossip"); ignore || err != nil {
		t.Fatalf("the held notice again: ignore=%v err=%v, want accept (forwarded)", ignore, err)
	}
	if ignore, err := f.z.InstallBlockNotice(ctx, old, nil, "gossip"); !ignore || reason.Of(err) != reason.BlockStale {
		t.Fatalf("older notice: ignore=%v err=%v, want ignore block_stale", ignore, err)
	}
	un := issue(admin, rbac.BlockActionUnblock, now.Add(time.Second), now.Add(time.Hour))
	if _, err := f.z.InstallBlockNotice(ctx, un, nil, "gossip"); err != nil {
		t.Fatal(err)
	}
	if err := f.rep.Admit(target.ID()); err != nil {
		t.Fatalf("unblocked agent refused: %v", err)
	}
}

// ApplyNotice gives fakeRep the network blocks of reputation.Store (ADR 0101), simplified: the newest
// notice per peer decides.
func (r *fakeRep) ApplyNotice(_ context.Context, n reputation.Notice) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := n.Peer.String()
	if r.notices == nil {
		r.notices = map[string]time.Time{}
	}
	if last, ok := r.notices[k]; ok && !n.Issued.After(last) {
		if n.Issued.Equal(last) {
			return false, nil
		}
		return false, reputation.ErrStaleNotice
	}
	r.notices[k] = n.Issued
	if r.levels == nil {
		r.levels = map[string]reputation.Level{}
	}
	r.levels[k] = reputation.New
	if n.Block {
		r.levels[k] = reputation.Blocked
	}
	return true, nil
}

func (r *fakeRep) Notices(int) [][]byte { return nil }
