package software

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

// FuzzSplitFile feeds arbitrary bytes to the key file parser: it must never panic, and what it accepts
// must re-encode to the same header.
func FuzzSplitFile(f *testing.F) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub, _ := keystore.NewPublicKey(priv.Public())
	good, err := sealKey(priv, pub, []byte("fuzz"), MinWorkFactor)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:40])
	f.Add([]byte(magicLine + "\nalgorithm: p256\npublic-key: AA\n\nx"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, ct, err := splitFile(data)
		if err != nil {
			return
		}
		if len(ct) == 0 {
			t.Fatal("accepted a file without ciphertext")
		}
		if !bytes.HasPrefix(data, h.encode()) {
			t.Fatalf("accepted header does not re-encode: %q", data[:len(data)-len(ct)])
		}
	})
}

// FuzzParseURI: never panics; what it accepts round-trips.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"file:/a/b", "file:/a/b/k.key?passphrase-source=env:P", "file:///x?work-factor=12", "file:/a%20b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		loc, err := parseURI(s)
		if err != nil {
			return
		}
		var again location
		if loc.label != "" {
			again, err = parseURI(loc.keyURI(loc.label))
		} else {
			again, err = parseURI(loc.keystoreURI())
		}
		if err != nil {
			t.Fatalf("re-encoded %q does not parse: %v", s, err)
		}
		if again.dir != loc.dir || again.label != loc.label || again.passSource != loc.passSource {
			t.Fatalf("round trip changed %q: %+v -> %+v", s, loc, again)
		}
	})
}
