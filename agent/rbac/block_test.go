package rbac

import (
	"context"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// FuzzDecodeBlockNotice: the decoder never panics, and whatever it accepts encodes back to the same bytes.
func FuzzDecodeBlockNotice(f *testing.F) {
	s, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	id := identity.NewID(s.Public())
	t, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	target := identity.NewID(t.Public())
	now := time.Unix(1767225600, 0)
	n, err := IssueBlockNotice(context.Background(), s, IssuerKey{ID: id}, BlockActionBlock, target, now, now.Add(time.Hour), "spam")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(n.Encode())
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := DecodeBlockNotice(b)
		if err != nil {
			return
		}
		if string(n.Encode()) != string(b) {
			t.Fatalf("accepted %q, encodes as %q", b, n.Encode())
		}
	})
}
