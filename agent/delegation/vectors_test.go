package delegation

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Negative vectors (internal/vectors): delegations as data, each with the reason code a verifier must
// refuse it with. Fields: input (binary form), kel (the delegating identity's key event log, JSON lines),
// now (Unix seconds). The check: Decode, then Verify against the log's state at now.
// CUSTOS_UPDATE_VECTORS=1 regenerates them from writeVectors (new keys each time).

const vectorDir = "testdata/vectors"

func runVector(v *vectors.Vector) error {
	d, err := Decode(v.Input())
	if err != nil {
		return err
	}
	kel, _ := v.Get("kel")
	l, err := identity.DecodeLog(kel)
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "vector %s: the key event log", v.Name)
	}
	st, err := l.Verify()
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "vector %s: the key event log", v.Name)
	}
	now, err := strconv.ParseInt(v.String("now"), 10, 64)
	if err != nil {
		return reason.Wrap(reason.Internal, err, "vector %s: now", v.Name)
	}
	_, err = Verify(st.ID, st, d, time.Unix(now, 0))
	return err
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, func(v *vectors.Vector) (string, error) {
		err := runVector(v)
		return string(reason.Of(err)), err
	})
}

func seedVectors(f *testing.F) {
	vectors.Seed(f, vectorDir, nil)
}

func writeVectors(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	other := agenttest.NewIdentity(t, keystore.Ed25519)
	rotated := agenttest.NewIdentity(t, keystore.P256)
	oldKey := rotated.Current()
	rotated.Rotate(t)
	var out []*vectors.Vector
	add := func(name, comment, expect, text string, who *agenttest.Identity, in []byte) {
		out = append(out, vectors.New(name, comment, expect, text).Set("input", in).
			Set("kel", who.Log.Encode()).Set("now", []byte(strconv.FormatInt(now.Unix(), 10))))
	}
	resign := func(d *Delegation, s keystore.Signer) *Delegation {
		d.Signature, _ = s.Sign(ctx, d.SigningInput())
		return d
	}
	valid := func() *Delegation {
		return issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
	}
	good := valid()
	add("ok", "a valid delegated-mode delegation (the one the others change)", "ok", "", id, good.Encode())
	add("expired", "not-after one second before now", "delegation_expired", "expired at", id,
		issue(t, id, id.Current(), Delegated, now.Add(-2*time.Hour), now.Add(-time.Second)).Encode())
	add("expires-now", "not-after equal to now (the window is half-open)", "delegation_expired", "expired at", id,
		issue(t, id, id.Current(), Delegated, now.Add(-time.Hour), now).Encode())
	add("not-yet-valid", "not-before one minute after now", "delegation_not_yet_valid", "valid from", id,
		issue(t, id, id.Current(), Delegated, now.Add(time.Minute), now.Add(time.Hour)).Encode())
	old := issue(t, rotated, oldKey, Delegated, now.Add(-time.Minute), now.Add(time.Hour))
	old.Generation = 0
	add("rotated-away-generation", "signed by the generation-0 key after the log rotated to generation 1", "delegation_wrong_key", "generation 0", rotated,
		resign(old, oldKey).Encode())
	add("rotated-away-key", "signed by the rotated-away key, claiming the current generation", "delegation_wrong_key", "not signed by the current identity key", rotated,
		issue(t, rotated, oldKey, Delegated, now.Add(-time.Minute), now.Add(time.Hour)).Encode())
	add("stranger", "signed by a key the log never held", "delegation_wrong_key", "not signed by the current identity key", id,
		issue(t, id, agenttest.Mem(t, keystore.Ed25519), Delegated, now.Add(-time.Minute), now.Add(time.Hour)).Encode())
	altered := valid()
	altered.NotAfter += 3600
	add("altered", "not-after moved after signing", "delegation_wrong_key", "or was altered", id, altered.Encode())
	add("other-agent", "another agent's valid delegation, checked against this agent's log", "delegation_invalid", "is for", id,
		issue(t, other, other.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour)).Encode())
	add("too-long", "valid for 25 hours", "delegation_invalid", "longer than", id,
		issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(25*time.Hour)).Encode())
	wrap := valid()
	wrap.NotAfter = wrap.NotBefore + 18446744074 // 2^64 ns plus 0.29 s: wraps a nanosecond multiplication
	add("too-long-duration-overflow", "a lifetime that overflows a nanosecond count", "delegation_invalid", "longer than", id, resign(wrap, id.Current()).Encode())
	huge := valid()
	huge.NotBefore, huge.NotAfter = math.MinInt64+1, math.MaxInt64
	add("too-long-int64-overflow", "a lifetime that overflows int64: the decoder refuses times beyond 2^62 first", "malformed", "out of range", id, resign(huge, id.Current()).Encode())
	strict := valid()
	strict.Mode = Strict
	add("strict-foreign-key", "strict mode naming an operational key that is not the identity key", "delegation_invalid", "strict-mode", id, resign(strict, id.Current()).Encode())
	deleg := issue(t, id, id.Current(), Strict, now.Add(-time.Minute), now.Add(time.Hour))
	deleg.Mode = Delegated
	add("delegated-identity-key", "delegated mode naming the identity key", "delegation_invalid", "must not be the identity key", id, resign(deleg, id.Current()).Encode())
	mut := func(f func(d *Delegation)) []byte {
		c := *good
		f(&c)
		return c.Encode()
	}
	enc := good.Encode()
	add("trailing", "one byte after the delegation", "malformed", "trailing", id, append(append([]byte{}, enc...), 0))
	add("truncated", "the last three bytes cut", "malformed", "ends inside", id, enc[:len(enc)-3])
	add("unknown-version", "version 9", "unknown_version", "version 9", id, mut(func(d *Delegation) { d.Version = 9 }))
	add("unknown-mode", "mode lax", "malformed", "mode", id, mut(func(d *Delegation) { d.Mode = "lax" }))
	add("p256-op-key", "a P-256 operational key in delegated mode", "malformed", "must be ed25519", id, mut(func(d *Delegation) { d.OpAlg = keystore.P256 }))
	add("op-key-size", "a 31-byte operational key", "malformed", "op_key", id, mut(func(d *Delegation) { d.OpKey = d.OpKey[:31] }))
	add("unknown-kem", "KEM 0x21", "malformed", "kem", id, mut(func(d *Delegation) { d.KEM = 0x21 }))
	add("enc-key-size", "an encryption key one byte long", "malformed", "enc_key", id, mut(func(d *Delegation) { d.EncKey = append(d.EncKey, 0) }))
	add("empty-window", "not-after equal to not-before", "malformed", "not after", id, mut(func(d *Delegation) { d.NotAfter = d.NotBefore }))
	add("bad-agent-id", "an agent ID that does not parse", "malformed", "agent_id", id, mut(func(d *Delegation) { d.AgentID = "ed25519:xyz" }))
	add("empty-signature", "no signature", "malformed", "signature is empty", id, mut(func(d *Delegation) { d.Signature = nil }))
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}
