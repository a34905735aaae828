package software

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/keystoretest"
)

// testWorkFactor keeps scrypt cheap in tests (the default costs about a second per key).
const testWorkFactor = MinWorkFactor

// newDir makes a keystore directory and a passphrase file, and returns the keystore URI.
func newDir(t *testing.T, pass string) (dir, uri string) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "keys")
	pf := filepath.Join(root, "pass")
	if err := os.WriteFile(pf, []byte(pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, encodeURI(dir, "file:"+pf, testWorkFactor)
}

func openKS(t *testing.T, uri string, opts keystore.OpenOptions) *Keystore {
	t.Helper()
	ks, err := Open(context.Background(), uri, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks.(*Keystore)
}

func TestConformance(t *testing.T) {
	keystoretest.Run(t, keystoretest.Harness{
		New: func(t *testing.T) func() (keystore.Keystore, error) {
			_, uri := newDir(t, "conformance passphrase")
			return func() (keystore.Keystore, error) {
				return Open(context.Background(), uri, keystore.OpenOptions{})
			}
		},
		Algorithms: []keystore.Algorithm{keystore.Ed25519, keystore.P256},
	})
}

func TestFilesAndInfo(t *testing.T) {
	dir, uri := newDir(t, "pw")
	ks := openKS(t, uri, keystore.OpenOptions{})
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open created the keystore directory (err %v)", err)
	}
	if keys, err := ks.List(context.Background()); err != nil || len(keys) != 0 {
		t.Fatalf("List of a keystore without a directory yet: %v %v", keys, err)
	}
	k, err := ks.Generate(context.Background(), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "a"})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("keystore dir mode = %v (err %v), want 0700", fi.Mode().Perm(), err)
	}
	fi, err = os.Stat(filepath.Join(dir, "a.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v (err %v), want 0600", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries after Generate, want only a.key (temporary file left?)", len(entries))
	}
	if !strings.HasPrefix(k.URI, "file:"+dir+"/a.key?passphrase-source=file:") {
		t.Fatalf("key URI %q", k.URI)
	}
	info := ks.Info()
	if info.HardwareBacked || info.Backend != "software" || !strings.HasPrefix(info.URI, "file:"+dir) {
		t.Fatalf("Info = %+v", info)
	}
	// The key URI alone reopens the keystore and the key.
	ks2 := openKS(t, k.URI, keystore.OpenOptions{})
	s, err := ks2.Signer(context.Background(), k.URI)
	if err != nil {
		t.Fatalf("Signer through a key URI: %v", err)
	}
	if !s.Public().Equal(k.Public) {
		t.Fatal("wrong key")
	}
	data, _ := os.ReadFile(filepath.Join(dir, "a.key"))
	if !bytes.HasPrefix(data, []byte(magicLine+"\nalgorithm: p256\npublic-key: ")) {
		t.Fatalf("unexpected key file header: %q", data[:60])
	}
}

// The key file's encrypted part is a plain age file: age's own scrypt identity opens what this package
// writes, and this package opens what age's scrypt recipient writes.
func TestAgeInterop(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	pub, _ := keystore.NewPublicKey(priv.Public())
	data, err := sealKey(priv, pub, []byte("correct horse"), testWorkFactor)
	if err != nil {
		t.Fatal(err)
	}
	h, ct, err := splitFile(data)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.NewScryptIdentity("correct horse")
	r, err := age.Decrypt(bytes.NewReader(ct), id)
	if err != nil {
		t.Fatalf("age cannot decrypt our key file: %v", err)
	}
	der, _ := io.ReadAll(r)
	if len(der) == 0 {
		t.Fatal("empty plaintext")
	}
	// The other way round.
	rcpt, _ := age.NewScryptRecipient("correct horse")
	rcpt.SetWorkFactor(testWorkFactor)
	var buf bytes.Buffer
	w, _ := age.Encrypt(&buf, rcpt)
	_, _ = w.Write(der)
	_ = w.Close()
	got, err := openKey(h, buf.Bytes(), []byte("correct horse"))
	if err != nil {
		t.Fatalf("we cannot decrypt age's scrypt file: %v", err)
	}
	if !bytes.Equal(got.(ed25519.PrivateKey), priv) {
		t.Fatal("different key after the round trip")
	}
	if _, err := openKey(h, buf.Bytes(), []byte("wrong")); !errors.Is(err, errPassphrase) {
		t.Fatalf("wrong passphrase on age's file: %v", err)
	}
}

// fileState is a digest of every file in dir, to show that a refused operation changed nothing.
func fileState(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		h.Write([]byte(p + fi.Mode().String() + "\x00"))
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(h.Sum(nil))
}

func TestBadKeyFiles(t *testing.T) {
	ctx := context.Background()
	type tc struct {
		name   string
		mutate func(data []byte) []byte
		want   error
		reason string
	}
	cases := []tc{
		{"truncated payload", func(d []byte) []byte { return d[:len(d)-20] }, keystore.ErrCorrupt, "damaged or truncated"},
		{"truncated header", func(d []byte) []byte { return d[:30] }, keystore.ErrCorrupt, "header is truncated"},
		{"empty file", func(d []byte) []byte { return nil }, keystore.ErrCorrupt, "header is truncated"},
		{"only the header", func(d []byte) []byte { i := bytes.Index(d, []byte("\n\n")); return d[:i+2] }, keystore.ErrCorrupt, "encrypted key is missing"},
		{"not a key file", func(d []byte) []byte { return []byte("hello\nworld\n\n\nxx") }, keystore.ErrCorrupt, "does not start with"},
		{"flipped payload byte", func(d []byte) []byte { d[len(d)-5] ^= 1; return d }, keystore.ErrCorrupt, "damaged or truncated"},
		{"tampered public key", func(d []byte) []byte {
			other, _, _ := ed25519.GenerateKey(rand.Reader)
			pk, _ := keystore.NewPublicKey(other)
			i := bytes.Index(d, []byte("public-key: ")) + len("public-key: ")
			copy(d[i:], b64.EncodeToString(pk.Bytes()))
			return d
		}, keystore.ErrCorrupt, "not the public half"},
		{"tampered algorithm", func(d []byte) []byte {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pk, _ := keystore.NewPublicKey(&k.PublicKey)
			h, ct, _ := splitFile(d)
			_ = h
			return append(header{alg: keystore.P256, pub: pk}.encode(), ct...)
		}, keystore.ErrCorrupt, "not the public half"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, uri := newDir(t, "pw")
			ks := openKS(t, uri, keystore.OpenOptions{})
			k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "k"})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "k.key")
			data, _ := os.ReadFile(path)
			if err := os.WriteFile(path, c.mutate(data), 0o600); err != nil {
				t.Fatal(err)
			}
			before := fileState(t, dir)
			ks2 := openKS(t, uri, keystore.OpenOptions{}) // a fresh process: nothing cached
			_, err = ks2.Signer(ctx, k.URI)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.reason) || !strings.Contains(err.Error(), path) {
				t.Fatalf("got %v; want %v naming %s and saying %q", err, c.want, path, c.reason)
			}
			if fileState(t, dir) != before {
				t.Fatal("a refused Signer changed the keystore directory")
			}
		})
	}
}

func TestPassphrase(t *testing.T) {
	ctx := context.Background()
	dir, uri := newDir(t, "right")
	ks := openKS(t, uri, keystore.OpenOptions{})
	k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "k"})
	if err != nil {
		t.Fatal(err)
	}
	noSource := encodeURI(dir, "", testWorkFactor)
	t.Setenv("CUSTOS_TEST_PASS", "wrong")
	cases := []struct {
		name   string
		uri    string
		prompt func(string) ([]byte, error)
		want   error
		reason string
	}{
		{"wrong passphrase from env", encodeURI(dir, "env:CUSTOS_TEST_PASS", 0), nil, keystore.ErrWrongSecret, "does not decrypt key file " + filepath.Join(dir, "k.key")},
		{"wrong passphrase from prompt", noSource, func(string) ([]byte, error) { return []byte("nope"), nil }, keystore.ErrWrongSecret, "does not decrypt"},
		{"no source and no prompt", noSource, nil, keystore.ErrWrongSecret, "needs a passphrase and none was given"},
		{"missing env var", encodeURI(dir, "env:CUSTOS_TEST_UNSET_VAR", 0), nil, keystore.ErrWrongSecret, "CUSTOS_TEST_UNSET_VAR"},
		{"missing passphrase file", encodeURI(dir, "file:/nonexistent/pass", 0), nil, keystore.ErrWrongSecret, "/nonexistent/pass"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := fileState(t, dir)
			ks := openKS(t, c.uri, keystore.OpenOptions{Prompt: c.prompt})
			_, err := ks.Signer(ctx, k.URI)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %v; want %v saying %q", err, c.want, c.reason)
			}
			if fileState(t, dir) != before {
				t.Fatal("state changed")
			}
			// The public half is still readable without the passphrase.
			if pub, err := ks.PublicKey(ctx, k.URI); err != nil || !pub.Equal(k.Public) {
				t.Fatalf("PublicKey without the passphrase: %v", err)
			}
		})
	}
	t.Run("prompt with the right passphrase", func(t *testing.T) {
		var asked []string
		ks := openKS(t, noSource, keystore.OpenOptions{Prompt: func(what string) ([]byte, error) {
			asked = append(asked, what)
			return []byte("right"), nil
		}})
		s, err := ks.Signer(ctx, k.URI)
		if err != nil {
			t.Fatal(err)
		}
		if len(asked) != 1 || !strings.Contains(asked[0], dir) {
			t.Fatalf("prompted %q", asked)
		}
		// The passphrase is kept (not asked again) and wiped on Close.
		if _, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.P256, Label: "k2"}); err != nil || len(asked) != 1 {
			t.Fatalf("second use: err %v, asked %d times", err, len(asked))
		}
		pass := ks.pass
		_ = ks.Close()
		if !bytes.Equal(pass, make([]byte, len(pass))) {
			t.Fatal("the passphrase was not wiped on Close")
		}
		if _, err := s.Sign(ctx, []byte("x")); !errors.Is(err, keystore.ErrClosed) {
			t.Fatalf("Sign after Close: %v", err)
		}
	})
}

func TestURIs(t *testing.T) {
	for _, c := range []struct {
		in     string
		ok     bool
		dir    string
		label  string
		reason string
	}{
		{"file:/a/b", true, "/a/b", "", ""},
		{"file:///a/b", true, "/a/b", "", ""},
		{"file:/a/b/x.key?passphrase-source=env:P", true, "/a/b", "x", ""},
		{"file:/a/b%20c/x.key", true, "/a/b c", "x", ""},
		{"file:/a/b?work-factor=12", true, "/a/b", "", ""},
		{"file:a/b", false, "", "", "absolute"},
		{"file:/a/../b", false, "", "", "clean"},
		{"pkcs11:token=x", false, "", "", "not a software keystore URI"},
		{"file:/a?passphrase=hunter2", false, "", "", "unknown attribute"},
		{"file:/a?passphrase-source=hunter2", false, "", "", "never written into a URI"},
		{"file:/a?work-factor=5", false, "", "", "work-factor"},
		{"file:/a?work-factor=12&work-factor=13", false, "", "", "given twice"},
		{"file:/a/.key", false, "", "", "not a valid label"},
	} {
		loc, err := parseURI(c.in)
		if c.ok {
			if err != nil || loc.dir != c.dir || loc.label != c.label {
				t.Errorf("%s: got %+v, %v", c.in, loc, err)
			}
			continue
		}
		if !errors.Is(err, keystore.ErrBadURI) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: got %v, want ErrBadURI saying %q", c.in, err, c.reason)
		}
		if strings.Contains(c.in, "hunter2") && err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the query: %v", c.in, err)
		}
	}
	// Round trip, with characters that need escaping.
	loc := location{dir: "/tmp/a b;c", passSource: "file:/tmp/p q", workFactor: 12}
	back, err := parseURI(loc.keystoreURI())
	if err != nil || back != loc {
		t.Fatalf("round trip %q: %+v %v", loc.keystoreURI(), back, err)
	}
	back, err = parseURI(loc.keyURI("lab"))
	if err != nil || back.label != "lab" || back.dir != loc.dir || back.passSource != loc.passSource {
		t.Fatalf("key round trip %q: %+v %v", loc.keyURI("lab"), back, err)
	}
}

func TestKeyFromAnotherDirectory(t *testing.T) {
	_, uri := newDir(t, "pw")
	ks := openKS(t, uri, keystore.OpenOptions{})
	_, err := ks.Signer(context.Background(), "file:/elsewhere/k.key")
	if !errors.Is(err, keystore.ErrNotFound) || !strings.Contains(err.Error(), "not in the software keystore") {
		t.Fatalf("got %v", err)
	}
	_, err = ks.Signer(context.Background(), uri)
	if !errors.Is(err, keystore.ErrBadURI) || !strings.Contains(err.Error(), "not a key") {
		t.Fatalf("keystore URI as key: got %v", err)
	}
}

func TestExportedURIHelpers(t *testing.T) {
	u := KeystoreURI("/a/b/", "", 12)
	if u != "file:/a/b?work-factor=12" {
		t.Fatalf("KeystoreURI = %q", u)
	}
	w, err := WithPassphraseSource(u, "env:P")
	if err != nil || w != "file:/a/b?passphrase-source=env:P&work-factor=12" {
		t.Fatalf("WithPassphraseSource = %q, %v", w, err)
	}
	k, err := WithPassphraseSource("file:/a/b/x.key?passphrase-source=env:Q", "file:/p")
	if err != nil || k != "file:/a/b/x.key?passphrase-source=file:/p" {
		t.Fatalf("WithPassphraseSource(key) = %q, %v", k, err)
	}
	if s, err := PassphraseSource(k); err != nil || s != "file:/p" {
		t.Fatalf("PassphraseSource = %q, %v", s, err)
	}
	if _, err := WithPassphraseSource("pkcs11:token=x", "env:P"); !errors.Is(err, keystore.ErrBadURI) {
		t.Fatalf("non-file URI: %v", err)
	}
}

// A key file whose scrypt work factor is below the floor that creation enforces (MinWorkFactor) is
// refused on load with ErrCorrupt saying so (issue 12.10): a file someone rewrapped with a cheap work
// factor would make the passphrase cheap to guess. The floor itself still loads.
func TestWorkFactorFloorOnLoad(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		logN int
		want string // "" when it must load
	}{
		{MinWorkFactor - 1, fmt.Sprintf("scrypt work factor %d is below the minimum of %d", MinWorkFactor-1, MinWorkFactor)},
		{1, fmt.Sprintf("scrypt work factor 1 is below the minimum of %d", MinWorkFactor)},
		{MinWorkFactor, ""},
	} {
		t.Run(fmt.Sprint(tc.logN), func(t *testing.T) {
			dir, uri := newDir(t, "pw")
			ks := openKS(t, uri, keystore.OpenOptions{})
			k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "k"})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "k.key")
			data, _ := os.ReadFile(path)
			h, ct, err := splitFile(data)
			if err != nil {
				t.Fatal(err)
			}
			// Rewrap the same private key under the same passphrase with work factor logN (as age would).
			der, err := io.ReadAll(mustDecrypt(t, ct, "pw"))
			if err != nil {
				t.Fatal(err)
			}
			rcpt, _ := age.NewScryptRecipient("pw")
			rcpt.SetWorkFactor(tc.logN)
			var buf bytes.Buffer
			w, _ := age.Encrypt(&buf, rcpt)
			_, _ = w.Write(der)
			_ = w.Close()
			if err := os.WriteFile(path, append(h.encode(), buf.Bytes()...), 0o600); err != nil {
				t.Fatal(err)
			}
			before := fileState(t, dir)
			_, err = openKS(t, uri, keystore.OpenOptions{}).Signer(ctx, k.URI)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("work factor %d (the floor) refused: %v", tc.logN, err)
				}
				return
			}
			if !errors.Is(err, keystore.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("got %v; want ErrCorrupt naming %s and saying %q", err, path, tc.want)
			}
			if fileState(t, dir) != before {
				t.Fatal("a refused Signer changed the keystore directory")
			}
		})
	}
}

func mustDecrypt(t *testing.T, ct []byte, pass string) io.Reader {
	t.Helper()
	id, _ := age.NewScryptIdentity(pass)
	r, err := age.Decrypt(bytes.NewReader(ct), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
