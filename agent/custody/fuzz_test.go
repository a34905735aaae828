package custody

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeRecord feeds arbitrary bytes to the identity.json decoder: it must never panic, and a record
// it accepts must re-encode and decode to the same thing.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{}`))
	f.Add(seedRecord(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		back, err := decodeRecord(r.encode())
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if string(back.encode()) != string(r.encode()) {
			t.Fatal("decode/encode is not stable")
		}
	})
}

// seedRecord makes a real identity.json (with a pending rotation) as a fuzz seed.
func seedRecord(f *testing.F) []byte {
	root := f.TempDir()
	pf := filepath.Join(root, "pass")
	if err := os.WriteFile(pf, []byte("seed"), 0o600); err != nil {
		f.Fatal(err)
	}
	e := &env{home: filepath.Join(root, "home"), ksURI: "file:" + filepath.Join(root, "home", KeysDir) + "?passphrase-source=file:" + pf + "&work-factor=10"}
	c, err := Init(context.Background(), e.home, InitRequest{Keystore: e.ksURI, Algorithm: "ed25519"}, e.opts(nil))
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	b, err := os.ReadFile(filepath.Join(e.home, IdentityFile))
	if err != nil {
		f.Fatal(err)
	}
	return b
}
