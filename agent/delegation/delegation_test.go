package delegation

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

var ctx = context.Background()

func issue(t testing.TB, id *agenttest.Identity, signer keystore.Signer, mode Mode, nb, na time.Time) *Delegation {
	t.Helper()
	op := agenttest.Mem(t, keystore.Ed25519).Public()
	if mode == Strict {
		op = id.State.Current
	}
	enc, err := suite.GenerateEncryptionKey(suite.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	st := id.State
	st.Current = signer.Public() // let a test sign with a key that is not current
	d, err := Issue(ctx, signer, st, mode, op, suite.KEMX25519, enc.Public(), nb, na)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestIssueVerify(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		for _, mode := range []Mode{Delegated, Strict} {
			t.Run(string(alg)+"/"+string(mode), func(t *testing.T) {
				id := agenttest.NewIdentity(t, alg)
				d := issue(t, id, id.Current(), mode, now.Add(-time.Minute), now.Add(time.Hour))
				back, err := Decode(d.Encode())
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(back.Encode(), d.Encode()) {
					t.Fatal("decode/encode changed the delegation")
				}
				v, err := Verify(id.ID(), id.State, back, now)
				if err != nil {
					t.Fatal(err)
				}
				op, err := VerifyOperationalKey(id.ID(), id.State, back, now)
				if err != nil || !op.Equal(v.OpKey) {
					t.Fatalf("VerifyOperationalKey: %v", err)
				}
				if mode == Strict && !v.OpKey.Equal(id.State.Current) {
					t.Fatal("strict mode: the operational key is not the identity key")
				}
				if mode == Delegated && v.OpKey.Algorithm != keystore.Ed25519 {
					t.Fatal("delegated op key is not Ed25519")
				}
			})
		}
	}
}

func TestVerifyRefuses(t *testing.T) {
	now := agenttest.Epoch.Add(10 * time.Minute)
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	other := agenttest.NewIdentity(t, keystore.Ed25519)
	rotated := agenttest.NewIdentity(t, keystore.P256)
	oldKey := rotated.Current()
	rotated.Rotate(t)
	type tc struct {
		name   string
		id     *agenttest.Identity
		d      func() *Delegation
		code   reason.Code
		detail string
	}
	cases := []tc{
		{"expired", id, func() *Delegation {
			return issue(t, id, id.Current(), Delegated, now.Add(-2*time.Hour), now.Add(-time.Second))
		}, reason.DelegationExpired, "expired at"},
		{"expires exactly now", id, func() *Delegation { return issue(t, id, id.Current(), Delegated, now.Add(-time.Hour), now) }, reason.DelegationExpired, "expired at"},
		{"not yet valid", id, func() *Delegation {
			return issue(t, id, id.Current(), Delegated, now.Add(time.Minute), now.Add(time.Hour))
		}, reason.DelegationNotYetValid, "valid from"},
		{"signed by a rotated-away key, old generation", rotated, func() *Delegation {
			d := issue(t, rotated, oldKey, Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.Generation = 0
			d.Signature, _ = oldKey.Sign(ctx, d.SigningInput())
			return d
		}, reason.DelegationWrongKey, "generation 0"},
		{"signed by a rotated-away key claiming the current generation", rotated, func() *Delegation {
			return issue(t, rotated, oldKey, Delegated, now.Add(-time.Minute), now.Add(time.Hour))
		}, reason.DelegationWrongKey, "not signed by the current identity key"},
		{"signed by a stranger", id, func() *Delegation {
			return issue(t, id, agenttest.Mem(t, keystore.Ed25519), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
		}, reason.DelegationWrongKey, "not signed by the current identity key"},
		{"altered after signing", id, func() *Delegation {
			d := issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.NotAfter += 3600
			return d
		}, reason.DelegationWrongKey, "or was altered"},
		{"another agent's delegation", id, func() *Delegation {
			return issue(t, other, other.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
		}, reason.DelegationInvalid, "is for"},
		{"too long", id, func() *Delegation {
			return issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(25*time.Hour))
		}, reason.DelegationInvalid, "longer than"},
		// 18446744074 s is 2^64 ns plus 0.29 s: a nanosecond multiplication wraps it to 0.29 s (issue 12).
		{"too long, lifetime that overflows a time.Duration", id, func() *Delegation {
			d := issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.NotAfter = d.NotBefore + 18446744074
			d.Signature, _ = id.Current().Sign(ctx, d.SigningInput())
			return d
		}, reason.DelegationInvalid, "longer than"},
		{"too long, lifetime that overflows int64", id, func() *Delegation {
			d := issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.NotBefore, d.NotAfter = math.MinInt64+1, math.MaxInt64
			d.Signature, _ = id.Current().Sign(ctx, d.SigningInput())
			return d
		}, reason.DelegationInvalid, "longer than"},
		{"strict mode with a foreign op key", id, func() *Delegation {
			d := issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.Mode = Strict
			d.Signature, _ = id.Current().Sign(ctx, d.SigningInput())
			return d
		}, reason.DelegationInvalid, "strict-mode"},
		{"delegated mode naming the identity key", id, func() *Delegation {
			d := issue(t, id, id.Current(), Strict, now.Add(-time.Minute), now.Add(time.Hour))
			d.Mode = Delegated
			d.Signature, _ = id.Current().Sign(ctx, d.SigningInput())
			return d
		}, reason.DelegationInvalid, "must not be the identity key"},
		{"unknown version", id, func() *Delegation {
			d := issue(t, id, id.Current(), Delegated, now.Add(-time.Minute), now.Add(time.Hour))
			d.Version = 2
			return d
		}, reason.UnknownVersion, "version 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Verify(c.id.ID(), c.id.State, c.d(), now)
			if !errors.Is(err, c.code) || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("got %v, want %s with %q", err, c.code, c.detail)
			}
			if reason.Of(err) != c.code {
				t.Fatalf("reason.Of = %s", reason.Of(err))
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	d := issue(t, id, id.Current(), Delegated, agenttest.Epoch, agenttest.Epoch.Add(time.Hour))
	good := d.Encode()
	mut := func(f func(d *Delegation)) []byte {
		c := *d
		f(&c)
		return c.Encode()
	}
	cases := map[string]struct {
		in   []byte
		code reason.Code
		msg  string
	}{
		"trailing":     {append(append([]byte{}, good...), 0), reason.Malformed, "trailing"},
		"truncated":    {good[:len(good)-3], reason.Malformed, "ends inside"},
		"version":      {mut(func(d *Delegation) { d.Version = 9 }), reason.UnknownVersion, "version 9"},
		"mode":         {mut(func(d *Delegation) { d.Mode = "lax" }), reason.Malformed, "mode"},
		"p256 op key":  {mut(func(d *Delegation) { d.OpAlg = keystore.P256 }), reason.Malformed, "must be ed25519"},
		"op key size":  {mut(func(d *Delegation) { d.OpKey = d.OpKey[:31] }), reason.Malformed, "op_key"},
		"kem":          {mut(func(d *Delegation) { d.KEM = 0x21 }), reason.Malformed, "kem"},
		"enc key size": {mut(func(d *Delegation) { d.EncKey = append(d.EncKey, 0) }), reason.Malformed, "enc_key"},
		"window":       {mut(func(d *Delegation) { d.NotAfter = d.NotBefore }), reason.Malformed, "not after"},
		"agent id":     {mut(func(d *Delegation) { d.AgentID = "ed25519:xyz" }), reason.Malformed, "agent_id"},
		"oversized":    {make([]byte, MaxSize+1), reason.Malformed, "exceeds"},
		"empty sig":    {mut(func(d *Delegation) { d.Signature = nil }), reason.Malformed, "signature is empty"},
	}
	for name, c := range cases {
		if _, err := Decode(c.in); !errors.Is(err, c.code) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %s %q", name, err, c.code, c.msg)
		}
	}
}

func TestManager(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	m, err := NewManager(ctx, Config{Identity: id.Current(), State: id.State, Clock: clock.Now, KEM: suite.KEMXWing})
	if err != nil {
		t.Fatal(err)
	}
	first, err := m.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Verify(id.ID(), id.State, first.Delegation, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.KEM != suite.KEMXWing || !bytes.Equal(v.EncKey, first.Encryption().Public()) || !v.OpKey.Equal(first.Signer().Public()) {
		t.Fatal("the delegation does not certify the manager's keys")
	}
	if got := v.NotAfter.Sub(clock.Now()); got != DefaultLifetime {
		t.Fatalf("lifetime %s", got)
	}
	// Before RenewBefore: same keys. After: a new delegation; the old one stays live until it expires.
	clock.Advance(20 * time.Minute)
	if k, _ := m.Current(ctx); k != first {
		t.Fatal("renewed too early")
	}
	clock.Advance(11 * time.Minute)
	second, _ := m.Current(ctx)
	if second == first {
		t.Fatal("not renewed with less than half the lifetime left")
	}
	if live := m.Live(); len(live) != 2 || live[0] != second || live[1] != first {
		t.Fatalf("live keys: %d", len(live))
	}
	sig, err := first.Signer().Sign(ctx, []byte("x"))
	if err != nil || first.Signer().Public().Verify([]byte("x"), sig) != nil {
		t.Fatal("the previous operational key stopped signing before it expired")
	}
	// After the first expires: wiped and gone.
	clock.Advance(30 * time.Minute)
	if live := m.Live(); len(live) != 1 || live[0] != second {
		t.Fatalf("live keys after expiry: %d", len(live))
	}
	if _, err := first.Signer().Sign(ctx, []byte("x")); !errors.Is(err, reason.DelegationUnavailable) {
		t.Fatalf("expired operational key still signs: %v", err)
	}
	if first.op.priv != nil {
		t.Fatal("expired operational key not dropped")
	}
	if _, err := first.Encryption().Open(make([]byte, 1120), nil, nil, nil); !errors.Is(err, suite.ErrWiped) {
		t.Fatalf("expired encryption key still opens: %v", err)
	}
	// Rotation: new delegations are signed by the new key at the new generation.
	id.Rotate(t)
	third, err := m.SetIdentity(ctx, id.Current(), id.State)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(id.ID(), id.State, third.Delegation, clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(id.ID(), id.State, second.Delegation, clock.Now()); !errors.Is(err, reason.DelegationWrongKey) {
		t.Fatalf("pre-rotation delegation after rotation: %v", err)
	}
	if _, err := second.Signer().Sign(ctx, nil); err == nil {
		t.Fatal("pre-rotation operational key not wiped")
	}
	m.Close()
	if _, err := third.Signer().Sign(ctx, nil); err == nil {
		t.Fatal("Close did not wipe")
	}
}

func TestManagerStrict(t *testing.T) {
	id := agenttest.NewIdentity(t, keystore.P256)
	m, err := NewManager(ctx, Config{Identity: id.Current(), State: id.State, Mode: Strict, Clock: agenttest.NewClock(agenttest.Epoch).Now})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := m.Current(ctx)
	if k.Signer() != id.Current() || !bytes.Equal(k.Delegation.OpKey, id.Current().Public().Bytes()) {
		t.Fatal("strict mode does not sign with the identity key")
	}
	if _, err := NewManager(ctx, Config{Identity: id.Current(), State: id.State, Lifetime: 48 * time.Hour}); err == nil {
		t.Fatal("48h lifetime accepted")
	}
}

func FuzzDecode(f *testing.F) {
	id := agenttest.NewIdentity(f, keystore.Ed25519)
	d := issue(f, id, id.Current(), Delegated, agenttest.Epoch, agenttest.Epoch.Add(time.Hour))
	f.Add(d.Encode())
	f.Add([]byte{})
	f.Add(d.Encode()[:40])
	seedVectors(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Decode(b)
		if err != nil {
			if reason.Of(err) == reason.Internal {
				t.Fatalf("decode error without a reason code: %v", err)
			}
			return
		}
		if !bytes.Equal(d.Encode(), b) {
			t.Fatalf("decode/encode is not the identity:\n in %x\nout %x", b, d.Encode())
		}
	})
}
