package identity

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// TestVerifySignedAt: an object signed by generation n stays valid after rotations when it was issued
// while n was current (plus the skew); one dated outside n's window, naming an unknown generation or a
// foreign head, or signed by a generation a recovery replaced, is refused with the matching error.
func TestVerifySignedAt(t *testing.T) {
	ctx := context.Background()
	rec := mem(t, keystore.Ed25519)
	l, keys := chain(t, keystore.Ed25519, 2, rec) // gen 0 at T, gen 1 at T+1h, gen 2 at T+2h
	st, err := l.Verify()
	if err != nil {
		t.Fatal(err)
	}
	T := int64(1_700_000_000)
	hour := int64(3600)
	if len(st.Generations) != 3 || st.Generations[0].EndedBy != Rotation || st.Generations[2].EndedBy != "" ||
		st.Generations[1].From != T+hour || st.Generations[1].Until != T+2*hour {
		t.Fatalf("history: %+v", st.Generations)
	}
	msg := []byte("object")
	sigs := make([][]byte, len(keys))
	for i, k := range keys {
		if sigs[i], err = k.Sign(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	verifier := func(sig []byte) func(keystore.PublicKey) error {
		return func(k keystore.PublicKey) error { return k.Verify(msg, sig) }
	}
	head := func(g int) string { return st.Generations[g].HeadString() }
	cases := []struct {
		name    string
		by      int // signer generation
		gen     int64
		head    string
		issued  int64
		want    error
		wantGen uint64
	}{
		{"gen0 while current", 0, 0, head(0), T + 10, nil, 0},
		{"gen0 in the skew after its rotation", 0, 0, head(0), T + hour + SigningSkew - 1, nil, 0},
		{"gen0 after its rotation", 0, 0, head(0), T + hour + SigningSkew, ErrOutsideGeneration, 0},
		{"gen1 before it existed", 1, 1, head(1), T + hour - SigningSkew - 1, ErrOutsideGeneration, 0},
		{"gen1 while current", 1, 1, head(1), T + hour + 5, nil, 1},
		{"gen2 current", 2, 2, head(2), T + 100*hour, nil, 2},
		{"unknown generation", 2, 3, "", T + 3*hour, ErrGenerationUnknown, 0},
		{"foreign head", 1, 1, head(0), T + hour + 5, ErrGenerationUnknown, 0},
		{"wrong key for the named generation", 0, 1, head(1), T + hour + 5, ErrSignature, 0},
		{"no generation named: found by time", 1, NoGeneration, "", T + hour + 5, nil, 1},
		{"no generation named: old key dated now", 0, NoGeneration, "", T + 100*hour, ErrSignature, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := st.VerifySignedAt(c.gen, c.head, c.issued, verifier(sigs[c.by]))
			if c.want == nil {
				if err != nil || g != c.wantGen {
					t.Fatalf("got generation %d, %v; want %d, nil", g, err, c.wantGen)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}

	// A recovery replaces generation 2: what generation 2 signed is void whatever its date; what
	// generations 0 and 1 signed in their windows stays valid.
	newKey, next := mem(t, keystore.Ed25519), mem(t, keystore.Ed25519)
	ev, err := Recover(ctx, st, rec, newKey, next.Public(), rec.Public(), time.Unix(T+3*hour, 0))
	if err != nil {
		t.Fatal(err)
	}
	rst, err := st.Apply(&ev)
	if err != nil {
		t.Fatal(err)
	}
	if st.Generations[2].Lost() || rst.Generations[2].EndedBy != Recovery {
		t.Fatalf("the state before the recovery changed, or the recovery is not recorded: %+v / %+v", st.Generations, rst.Generations)
	}
	for _, issued := range []int64{T + 2*hour + 1, T + 3*hour - 1} {
		if _, err := rst.VerifySignedAt(2, head(2), issued, verifier(sigs[2])); !errors.Is(err, ErrLostGeneration) {
			t.Fatalf("gen2 object issued %d after the recovery: %v, want ErrLostGeneration", issued, err)
		}
		if _, err := rst.VerifySignedAt(NoGeneration, "", issued, verifier(sigs[2])); !errors.Is(err, ErrLostGeneration) {
			t.Fatalf("undated gen2 object issued %d after the recovery: %v, want ErrLostGeneration", issued, err)
		}
	}
	if g, err := rst.VerifySignedAt(1, head(1), T+hour+5, verifier(sigs[1])); err != nil || g != 1 {
		t.Fatalf("gen1 object after the recovery of gen2: %d, %v", g, err)
	}
	sig3, _ := newKey.Sign(ctx, msg)
	if g, err := rst.VerifySignedAt(3, rst.Generations[3].HeadString(), T+3*hour+1, verifier(sig3)); err != nil || g != 3 {
		t.Fatalf("object of the recovered generation: %d, %v", g, err)
	}

	// An identity whose log is unknown: generation 0 (its ID's key) only.
	only := SignedAtOnly(st.ID)
	if _, err := only.VerifySignedAt(0, "", T+100*hour, verifier(sigs[0])); err != nil {
		t.Fatalf("gen0 without a log: %v", err)
	}
	if _, err := only.VerifySignedAt(1, head(1), T+hour+5, verifier(sigs[1])); !errors.Is(err, ErrGenerationUnknown) {
		t.Fatalf("gen1 without a log: %v", err)
	}
}
