package identity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

func mem(t *testing.T, alg keystore.Algorithm) keystore.Signer {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(alg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// chain builds inception + n rotations, returning the log and the signers of every generation plus the
// pre-committed next one.
func chain(t *testing.T, alg keystore.Algorithm, n int, recovery keystore.Signer) (Log, []keystore.Signer) {
	t.Helper()
	ctx := context.Background()
	keys := []keystore.Signer{mem(t, alg), mem(t, alg)}
	var rp keystore.PublicKey
	if recovery != nil {
		rp = recovery.Public()
	}
	now := time.Unix(1_700_000_000, 0)
	e, err := Incept(ctx, keys[0], keys[1].Public(), rp, now)
	if err != nil {
		t.Fatal(err)
	}
	l := Log{Events: []Event{e}}
	for i := 0; i < n; i++ {
		st, err := l.Verify()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, mem(t, alg))
		e, err := Rotate(ctx, st, keys[i], keys[i+1], keys[i+2].Public(), now.Add(time.Duration(i+1)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		l.Events = append(l.Events, e)
	}
	return l, keys
}

func TestChainVerifies(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		l, keys := chain(t, alg, 3, nil)
		st, err := l.Verify()
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if st.Generation != 3 || !st.Current.Equal(keys[3].Public()) || !st.ID.PublicKey().Equal(keys[0].Public()) {
			t.Fatalf("%s: wrong state %+v", alg, st)
		}
		back, err := DecodeLog(l.Encode())
		if err != nil {
			t.Fatal(err)
		}
		if string(back.Encode()) != string(l.Encode()) {
			t.Fatal("decode/encode changed the log")
		}
	}
}

func TestIDRoundTrip(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		id := NewID(mem(t, alg).Public())
		back, err := ParseID(id.String())
		if err != nil || !back.Equal(id) {
			t.Fatalf("%s: %v", id, err)
		}
		if !strings.HasPrefix(id.String(), string(alg)+":") {
			t.Fatal(id)
		}
	}
	for _, bad := range []string{"", "ed25519", "rsa:AAAA", "ed25519:AAAA", "ed25519:" + strings.Repeat("A", 43) + "=", "p256:" + strings.Repeat("A", 44)} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}

func TestChainRejects(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		mutate func(l *Log, keys []keystore.Signer)
		want   error
		reason string
	}{
		{"flipped key", func(l *Log, _ []keystore.Signer) { l.Events[1].Key = EncodeKey(mem(t, keystore.Ed25519).Public()) }, ErrBadChain, "pre-committed"},
		{"bad prior signature", func(l *Log, _ []keystore.Signer) { l.Events[1].Signatures[0].Sig = l.Events[2].Signatures[0].Sig }, ErrBadChain, "prior signature does not verify"},
		{"missing new signature", func(l *Log, _ []keystore.Signer) { l.Events[1].Signatures = l.Events[1].Signatures[:1] }, ErrBadChain, "exactly one \"new\""},
		{"wrong prev", func(l *Log, _ []keystore.Signer) { l.Events[2].Prev = l.Events[1].Prev }, ErrBadChain, "prev does not name"},
		{"reordered", func(l *Log, _ []keystore.Signer) { l.Events[1], l.Events[2] = l.Events[2], l.Events[1] }, ErrBadChain, "expected generation 1"},
		{"dropped event", func(l *Log, _ []keystore.Signer) { l.Events = append(l.Events[:1], l.Events[2:]...) }, ErrBadChain, "expected generation 1"},
		{"recovery without commitment", func(l *Log, keys []keystore.Signer) {
			st, _ := (&Log{Events: l.Events[:1]}).Verify()
			st.RecoveryDigest = digestString(keys[0].Public().Digest())
			e, _ := Recover(ctx, st, keys[0], mem(t, keystore.Ed25519), mem(t, keystore.Ed25519).Public(), keys[0].Public(), time.Unix(1_800_000_000, 0))
			l.Events = []Event{l.Events[0], e}
		}, ErrBadChain, "no recovery key was committed"},
		{"rotation changes recovery", func(l *Log, _ []keystore.Signer) { l.Events[1].Recovery = digestString([32]byte{1}) }, ErrBadChain, "may not change"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, keys := chain(t, keystore.Ed25519, 2, nil)
			c.mutate(&l, keys)
			_, err := l.Verify()
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %v, want %v with %q", err, c.want, c.reason)
			}
		})
	}
}

func TestRecoveryAndDuplicity(t *testing.T) {
	ctx := context.Background()
	rec := mem(t, keystore.P256)
	l, keys := chain(t, keystore.Ed25519, 1, rec)
	st, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	newKey, next := mem(t, keystore.P256), mem(t, keystore.P256)
	e, err := Recover(ctx, st, rec, newKey, next.Public(), rec.Public(), time.Unix(1_800_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	recovered := Log{Events: append(append([]Event{}, l.Events...), e)}
	st2, err := recovered.Verify()
	if err != nil {
		t.Fatalf("recovery does not verify: %v", err)
	}
	if !st2.Current.Equal(newKey.Public()) || !st2.ID.Equal(st.ID) {
		t.Fatal("recovery did not move to the new key under the same ID")
	}
	// A second, different rotation at generation 2 by the holder of the pre-committed key: a fork.
	other, err := Rotate(ctx, st, keys[1], keys[2], mem(t, keystore.Ed25519).Public(), time.Unix(1_800_000_001, 0))
	if err != nil {
		t.Fatal(err)
	}
	forked := Log{Events: append(append([]Event{}, l.Events...), other)}
	if _, err := forked.Verify(); err != nil {
		t.Fatalf("the fork on its own verifies: %v", err)
	}
	if err := CompareForks(&recovered, &forked); !errors.Is(err, ErrDuplicity) {
		t.Fatalf("CompareForks: got %v, want ErrDuplicity", err)
	}
	if err := CompareForks(&l, &recovered); err != nil {
		t.Fatalf("a prefix is not a fork: %v", err)
	}
	// A recovery signed by a key that is not the committed one is refused.
	if _, err := Recover(ctx, st, mem(t, keystore.P256), newKey, next.Public(), rec.Public(), time.Now()); err == nil {
		t.Fatal("recovery with an uncommitted recovery key was made")
	}
}

func TestDecodeStrict(t *testing.T) {
	l, _ := chain(t, keystore.Ed25519, 0, nil)
	line := string(l.Events[0].Encode())
	for name, in := range map[string]string{
		"unknown field": strings.Replace(line, `{"v":1`, `{"v":1,"extra":1`, 1),
		"version 2":     strings.Replace(line, `{"v":1`, `{"v":2`, 1),
		"trailing":      line + ` {}`,
		"oversize":      strings.Repeat(" ", MaxEventSize+1),
	} {
		if _, err := DecodeEvent([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := DecodeLog([]byte(line)); !errors.Is(err, ErrMalformed) {
		t.Errorf("torn last line: got %v", err)
	}
}
