package software

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

func TestDataKeyWrongPassphrase(t *testing.T) {
	ctx := context.Background()
	_, uri := newDir(t, "the right passphrase")
	_, other := newDir(t, "another passphrase")
	dk := bytes.Repeat([]byte{0x5a}, 32)
	blob, err := openKS(t, uri, keystore.OpenOptions{}).WrapDataKey(ctx, dk)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		uri  string
		blob []byte
		kind error
	}{
		"right passphrase":   {uri, blob, nil},
		"another passphrase": {other, blob, keystore.ErrWrongSecret},
		"not age":            {uri, []byte("custos data key, not age"), keystore.ErrCorrupt},
		"truncated":          {uri, blob[:len(blob)-5], keystore.ErrCorrupt},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := openKS(t, c.uri, keystore.OpenOptions{}).UnwrapDataKey(ctx, c.blob)
			if c.kind == nil {
				if err != nil || !bytes.Equal(got, dk) {
					t.Fatalf("UnwrapDataKey = %x, %v; want the data key", got, err)
				}
				return
			}
			if !errors.Is(err, c.kind) {
				t.Fatalf("UnwrapDataKey error = %v, want %v", err, c.kind)
			}
		})
	}
}
