package bindauth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testIdentity is an agent identity made with in-memory keys: its signers by generation and its log.
type testIdentity struct {
	signers []keystore.Signer
	next    keystore.Signer
	log     identity.Log
	st      identity.State
}

func memSigner(t *testing.T) keystore.Signer {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newIdentity(t *testing.T) *testIdentity {
	t.Helper()
	cur, next := memSigner(t), memSigner(t)
	e, err := identity.Incept(context.Background(), cur, next.Public(), keystore.PublicKey{}, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ti := &testIdentity{signers: []keystore.Signer{cur}, next: next, log: identity.Log{Events: []identity.Event{e}}}
	ti.verify(t)
	return ti
}

func (ti *testIdentity) verify(t *testing.T) {
	t.Helper()
	st, err := ti.log.Verify()
	if err != nil {
		t.Fatal(err)
	}
	ti.st = st
}

func (ti *testIdentity) rotate(t *testing.T) {
	t.Helper()
	newNext := memSigner(t)
	e, err := identity.Rotate(context.Background(), ti.st, ti.signers[len(ti.signers)-1], ti.next, newNext.Public(), time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	ti.log.Events = append(ti.log.Events, e)
	ti.signers = append(ti.signers, ti.next)
	ti.next = newNext
	ti.verify(t)
}

func (ti *testIdentity) manager(t *testing.T) *delegation.Manager {
	t.Helper()
	dm, err := delegation.NewManager(context.Background(), delegation.Config{Identity: ti.signers[len(ti.signers)-1], State: ti.st, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dm.Close)
	return dm
}

func (ti *testIdentity) authority(t *testing.T, cache *peers.Cache) *Authority {
	t.Helper()
	return NewAuthority(ti.st.ID, ti.manager(t), cache, func() *identity.Log { l := ti.log; return &l }, time.Hour)
}

func newCache(t *testing.T) *peers.Cache {
	t.Helper()
	c, err := peers.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func transportKey(t *testing.T) ed25519.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestAuthorityBindVerify(t *testing.T) {
	ctx := context.Background()
	alice, bob := newIdentity(t), newIdentity(t)
	aAuth := alice.authority(t, newCache(t))
	bCache := newCache(t)
	bAuth := bob.authority(t, bCache)
	key := transportKey(t)
	raw, notAfter, err := aAuth.Bind(ctx, "tcp", key)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(notAfter); d <= 0 || d > time.Hour {
		t.Fatalf("binding expires in %v", d)
	}
	b, _ := binding.Decode(raw)
	p, err := DecodeProof(b.Proof)
	if err != nil || len(p.KeyLog) == 0 {
		t.Fatalf("proof %+v %v: want the key event log inline (it fits)", p, err)
	}
	got, err := bAuth.Verify(ctx, "tcp", raw, key)
	if err != nil || got != alice.st.ID.String() {
		t.Fatalf("verify: %q %v", got, err)
	}
	if _, ok, _ := bCache.State(alice.st.ID.String()); !ok {
		t.Fatal("the verified log was not cached")
	}

	// Refusals, each with its reason.
	tamper := func(f func(*binding.Binding)) []byte {
		bb, _ := binding.Decode(raw)
		f(&bb)
		return bb.Encode()
	}
	otherDeleg, _, _ := bob.authority(t, newCache(t)).Bind(ctx, "tcp", key)
	ob, _ := binding.Decode(otherDeleg)
	op, _ := DecodeProof(ob.Proof)
	cases := []struct {
		name      string
		transport string
		raw       []byte
		key       ed25519.PublicKey
		want      string
	}{
		{"other transport", "ws", raw, key, "transport"},
		{"other key", "tcp", raw, transportKey(t), "key"},
		{"agent ID swapped", "tcp", tamper(func(x *binding.Binding) { x.AgentID = bob.st.ID.String() }), key, "delegation"},
		{"expiry changed", "tcp", tamper(func(x *binding.Binding) { x.NotAfter = x.NotAfter.Add(-time.Minute) }), key, "does not verify"},
		{"proof garbage", "tcp", tamper(func(x *binding.Binding) { x.Proof = []byte("nonsense") }), key, "not a CBP1 proof"},
		{"signature flipped", "tcp", tamper(func(x *binding.Binding) {
			pp, _ := DecodeProof(x.Proof)
			pp.Signature[0] ^= 1
			x.Proof = pp.Encode()
		}), key, "does not verify"},
		{"another agent's delegation", "tcp", tamper(func(x *binding.Binding) {
			pp, _ := DecodeProof(x.Proof)
			pp.Delegation = op.Delegation
			x.Proof = pp.Encode()
		}), key, "delegation"},
		{"expired", "tcp", tamper(func(x *binding.Binding) { x.NotAfter = time.Now().Add(-time.Second).Truncate(time.Second) }), key, "expired"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := bAuth.Verify(ctx, c.transport, c.raw, c.key)
			if !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want ErrBadBinding mentioning %q", err, c.want)
			}
		})
	}
}

func TestAuthorityLogFallbackAndRotation(t *testing.T) {
	ctx := context.Background()
	alice := newIdentity(t)
	bCache := newCache(t)
	bob := newIdentity(t)
	bAuth := bob.authority(t, bCache)
	key := transportKey(t)

	// A binding without the inline log is refused while nothing is cached ...
	aAuth := alice.authority(t, newCache(t))
	raw, _, err := aAuth.Bind(ctx, "tcp", key)
	if err != nil {
		t.Fatal(err)
	}
	noLog := stripLog(t, raw)
	if _, err := bAuth.Verify(ctx, "tcp", noLog, key); !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), "none is cached") {
		t.Fatalf("no log, nothing cached: %v", err)
	}
	// ... and accepted once the log is cached (from an earlier handshake or binding).
	if _, err := bAuth.Verify(ctx, "tcp", raw, key); err != nil {
		t.Fatal(err)
	}
	if _, err := bAuth.Verify(ctx, "tcp", noLog, key); err != nil {
		t.Fatalf("no log, cached: %v", err)
	}

	// Alice rotates: a binding under the new generation verifies through the longer inline log; the old
	// generation's delegation is refused now.
	oldRaw := raw
	alice.rotate(t)
	rotated := alice.authority(t, newCache(t))
	raw2, _, err := rotated.Bind(ctx, "tcp", key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bAuth.Verify(ctx, "tcp", raw2, key); err != nil {
		t.Fatalf("rotated agent: %v", err)
	}
	if st, _, _ := bCache.State(alice.st.ID.String()); st.Generation != 1 {
		t.Fatalf("cached generation %d after the rotated binding, want 1", st.Generation)
	}
	if _, err := bAuth.Verify(ctx, "tcp", oldRaw, key); !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), "delegation_wrong_key") {
		t.Fatalf("binding under the rotated-away key: %v", err)
	}
}

func TestAuthorityOmitsOversizedLog(t *testing.T) {
	alice := newIdentity(t)
	for alice.st.Generation < 20 { // about 500 bytes per event: 21 events exceed the proof budget
		alice.rotate(t)
	}
	if n := len(alice.log.Encode()); n <= binding.MaxProofSize {
		t.Fatalf("test setup: log of %d bytes fits", n)
	}
	raw, _, err := alice.authority(t, newCache(t)).Bind(context.Background(), "tcp", transportKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 8<<10 {
		t.Fatalf("binding of %d bytes exceeds transports.MaxBindingSize", len(raw))
	}
	b, _ := binding.Decode(raw)
	if p, err := DecodeProof(b.Proof); err != nil || len(p.KeyLog) != 0 {
		t.Fatalf("proof %v: the oversized log must be left out", err)
	}
}

func stripLog(t *testing.T, raw []byte) []byte {
	t.Helper()
	b, err := binding.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodeProof(b.Proof)
	if err != nil {
		t.Fatal(err)
	}
	p.KeyLog = nil
	b.Proof = p.Encode()
	return b.Encode()
}

func TestDecodeProofStrict(t *testing.T) {
	good := (&Proof{Delegation: []byte("d"), Signature: []byte("s"), KeyLog: []byte("l")}).Encode()
	if _, err := DecodeProof(good); err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{
		"empty":         nil,
		"wrong magic":   append([]byte("XXXX"), good[4:]...),
		"trailing":      append(append([]byte{}, good...), 0),
		"truncated":     good[:len(good)-1],
		"no delegation": (&Proof{Signature: []byte("s")}).Encode(),
	} {
		if _, err := DecodeProof(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
