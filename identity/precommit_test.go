package identity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// TestRotationToUncommittedKey: a thief of the current key (but not of the pre-committed next one) tries
// to rotate to a key of his own. Making the event refuses (Rotate checks the new signer against the
// commitment), and an event he builds by hand, correctly signed by the current key and by his key, is
// refused by Verify for the commitment alone (the signatures are all valid: unlike "flipped key" in
// TestChainRejects, where the new signature breaks too). Issue 21: a second angle on the pre-committed
// next-key digest check.
func TestRotationToUncommittedKey(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		t.Run(string(alg), func(t *testing.T) {
			l, keys := chain(t, alg, 1, nil)
			st, err := l.Verify()
			if err != nil {
				t.Fatal(err)
			}
			thief := mem(t, alg)
			now := time.Unix(1_700_000_000, 0).Add(5 * time.Hour)
			if _, err := Rotate(ctx, st, keys[1], thief, mem(t, alg).Public(), now); err == nil ||
				!strings.Contains(err.Error(), "not the one pre-committed at generation 1") {
				t.Fatalf("Rotate to an uncommitted key: got %v, want a refusal naming the commitment", err)
			}
			e := st.successor(Rotation, thief.Public(), mem(t, alg).Public(), now)
			e.Recovery = st.RecoveryDigest
			if err := e.addSig(ctx, ByPrior, keys[1]); err != nil {
				t.Fatal(err)
			}
			if err := e.addSig(ctx, ByNew, thief); err != nil {
				t.Fatal(err)
			}
			forged := Log{Events: append(l.Events[:len(l.Events):len(l.Events)], e)}
			_, err = forged.Verify()
			if !errors.Is(err, ErrBadChain) || !strings.Contains(err.Error(), "not the one pre-committed at generation 1") {
				t.Fatalf("Verify of a signed rotation to an uncommitted key: got %v, want ErrBadChain naming the commitment", err)
			}
		})
	}
}
