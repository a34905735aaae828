package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/keystoretest"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testLog sends the keystore's log to the test's log.
func testLog(t testing.TB) keystore.OpenOptions {
	return keystore.OpenOptions{Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func open(t testing.TB, uri string) keystore.Keystore {
	t.Helper()
	ks, err := pkcs11.Open(testCtx(t), uri, testLog(t))
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks
}

func generate(t testing.TB, ks keystore.Keystore, alg keystore.Algorithm, label string) keystore.Key {
	t.Helper()
	k, err := ks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: alg, Label: label})
	if err != nil {
		t.Fatalf("Generate(%s, %q): %v", alg, label, err)
	}
	return k
}

func signVerify(t testing.TB, ks keystore.Keystore, k keystore.Key, msg string) {
	t.Helper()
	s, err := ks.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatalf("Signer(%s): %v", k.URI, err)
	}
	sig, err := s.Sign(testCtx(t), []byte(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := k.Public.Verify([]byte(msg), sig); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
}

func labels(t testing.TB, ks keystore.Keystore) []string {
	t.Helper()
	keys, err := ks.List(testCtx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.URI)
	}
	return out
}

func TestConformance(t *testing.T) {
	keystoretest.Run(t, keystoretest.Harness{
		New: func(t *testing.T) func() (keystore.Keystore, error) {
			uri := softhsmtest.NewToken(t)
			return func() (keystore.Keystore, error) {
				return pkcs11.Open(testCtx(t), uri, testLog(t))
			}
		},
		Algorithms: []keystore.Algorithm{keystore.Ed25519, keystore.P256},
	})
}

// A key URI alone (module-path and pin-source included, no PIN) reopens the keystore and the key.
func TestKeyURIReopens(t *testing.T) {
	tok := softhsmtest.New(t)
	ks, err := pkcs11.Open(testCtx(t), tok.URI, keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[keystore.Algorithm]keystore.Key{}
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		keys[alg] = generate(t, ks, alg, "reopen-"+string(alg))
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	for alg, k := range keys {
		for _, want := range []string{"pkcs11:token=" + tok.Label + ";object=reopen-" + string(alg) + ";id=%",
			"module-path=" + tok.ModulePath, "pin-source=file:" + tok.PINFile} {
			if !strings.Contains(k.URI, want) {
				t.Errorf("key URI %s lacks %q", k.URI, want)
			}
		}
		if strings.Contains(k.URI, string(pin)) || strings.Contains(k.URI, "pin-value") {
			t.Fatalf("key URI carries the PIN: %s", k.URI)
		}
		ks2 := open(t, k.URI)
		pub, err := ks2.PublicKey(testCtx(t), k.URI)
		if err != nil || !pub.Equal(k.Public) {
			t.Fatalf("PublicKey from the reopened key URI: %v (equal=%v)", err, pub.Equal(k.Public))
		}
		signVerify(t, ks2, k, "reopened from "+string(alg))
		// The key can also be addressed by label alone, or by id alone.
		byLabel := strings.Replace(k.URI, k.URI[strings.Index(k.URI, ";id="):strings.Index(k.URI, "?")], "", 1)
		signVerify(t, ks2, keystore.Key{URI: byLabel, Public: k.Public}, "by label")
		if err := ks2.Close(); err != nil {
			t.Fatal(err)
		}
	}
	info := open(t, keys[keystore.P256].URI).Info()
	if info.Backend != "pkcs11" || info.URI != tok.URI || info.HardwareBacked {
		t.Errorf("Info = %+v, want backend pkcs11, URI %s, not hardware-backed (SoftHSM)", info, tok.URI)
	}
	if !slices.Equal(info.Algorithms, []keystore.Algorithm{keystore.Ed25519, keystore.P256}) {
		t.Errorf("Info.Algorithms = %v", info.Algorithms)
	}
}

// Without pin-source the PIN comes from the prompt, which is wiped after login; pin-source=env: works.
func TestPINSources(t *testing.T) {
	tok := softhsmtest.New(t)
	pin, err := os.ReadFile(tok.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	noSource := strings.Replace(tok.URI, "&pin-source=file:"+tok.PINFile, "", 1)
	if noSource == tok.URI {
		t.Fatalf("could not strip pin-source from %s", tok.URI)
	}
	var given []byte
	var asked string
	ks, err := pkcs11.Open(testCtx(t), noSource, keystore.OpenOptions{Prompt: func(what string) ([]byte, error) {
		asked = what
		given = bytes.Clone(pin)
		return given, nil
	}})
	if err != nil {
		t.Fatalf("Open with a prompt: %v", err)
	}
	if !strings.Contains(asked, tok.Label) {
		t.Errorf("prompt %q does not name the token", asked)
	}
	if !bytes.Equal(given, make([]byte, len(given))) {
		t.Error("the prompted PIN was not zeroed after login")
	}
	k := generate(t, ks, keystore.Ed25519, "prompted")
	if strings.Contains(k.URI, "pin-source") {
		t.Errorf("key URI names a pin-source although none was given: %s", k.URI)
	}
	signVerify(t, ks, k, "prompted")
	_ = ks.Close()

	t.Setenv("CUSTOS_TEST_PIN", string(pin))
	envURI := noSource + "&pin-source=env:CUSTOS_TEST_PIN"
	ks = open(t, envURI)
	signVerify(t, ks, k, "env")
}

// Every bad input gets one error of the right kind with a sentence that says what to do, and the
// token is left as it was.
func TestBadInput(t *testing.T) {
	tok := softhsmtest.New(t)
	good := open(t, tok.URI)
	kept := generate(t, good, keystore.Ed25519, "kept")
	before := labels(t, good)
	dir := t.TempDir()
	wrongPIN := filepath.Join(dir, "wrong.pin")
	if err := os.WriteFile(wrongPIN, []byte("00000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withPIN := func(src string) string {
		return strings.Replace(tok.URI, "pin-source=file:"+tok.PINFile, "pin-source="+src, 1)
	}
	q := "?module-path=" + tok.ModulePath + "&pin-source=file:" + tok.PINFile
	tests := []struct {
		name string
		uri  string
		kind error
		want []string
	}{
		{"missing module", strings.Replace(tok.URI, tok.ModulePath, "/nonexistent/libsofthsm2.so", 1),
			keystore.ErrUnavailable, []string{"/nonexistent/libsofthsm2.so", "install softhsm2", "check module-path"}},
		{"module is not a PKCS#11 library", strings.Replace(tok.URI, tok.ModulePath, wrongPIN, 1),
			keystore.ErrUnavailable, []string{wrongPIN, "PKCS#11"}},
		{"missing token", "pkcs11:token=no-such-token" + q,
			keystore.ErrUnavailable, []string{`"no-such-token"`, "softhsm2-util --init-token --free --label", tok.Label}},
		{"wrong serial", "pkcs11:token=" + tok.Label + ";serial=0000" + q,
			keystore.ErrUnavailable, []string{"has serial " + tok.Serial + ", not 0000", "correct serial="}},
		{"unknown serial alone", "pkcs11:serial=0000" + q, keystore.ErrUnavailable, []string{`serial "0000"`, tok.Label}},
		{"pin-value in query", tok.URI + "&pin-value=1234", keystore.ErrBadURI, []string{"pin-value", "pin-source=file:"}},
		{"pin-value in path", "pkcs11:token=" + tok.Label + ";pin-value=1234" + q, keystore.ErrBadURI, []string{"pin-value"}},
		{"not a pkcs11 URI", "tpm:object=x", keystore.ErrBadURI, []string{`"pkcs11:"`}},
		{"no token", "pkcs11:object=x" + q, keystore.ErrBadURI, []string{"token=<label>"}},
		{"no module-path", "pkcs11:token=" + tok.Label + "?pin-source=file:" + tok.PINFile, keystore.ErrBadURI, []string{"module-path"}},
		{"relative module-path", "pkcs11:token=" + tok.Label + "?module-path=libsofthsm2.so&pin-source=file:" + tok.PINFile,
			keystore.ErrBadURI, []string{"absolute"}},
		{"slot-id", "pkcs11:token=" + tok.Label + ";slot-id=1" + q, keystore.ErrBadURI, []string{"never by slot"}},
		{"unknown attribute", "pkcs11:token=" + tok.Label + ";colour=blue" + q, keystore.ErrBadURI, []string{`"colour"`}},
		{"repeated attribute", "pkcs11:token=" + tok.Label + ";token=x" + q, keystore.ErrBadURI, []string{"given twice"}},
		{"bad percent escape", "pkcs11:token=%zz" + q, keystore.ErrBadURI, []string{"path attributes"}},
		{"pin-source of unknown kind", withPIN("literal:1234"), keystore.ErrBadURI, []string{`kind "literal"`, "file:", "env:"}},
		{"PIN as pin-source", withPIN("12345678"), keystore.ErrBadURI, []string{"pin-source of unknown kind", "file:"}},
		{"no pin-source and no prompt", strings.Replace(tok.URI, "&pin-source=file:"+tok.PINFile, "", 1),
			keystore.ErrBadURI, []string{"pin-source", tok.Label}},
		{"unreadable pin file", withPIN("file:" + filepath.Join(dir, "absent")), keystore.ErrUnavailable, []string{"absent"}},
		{"wrong PIN", withPIN("file:" + wrongPIN), keystore.ErrWrongSecret,
			[]string{"the PIN from file:" + wrongPIN + " was refused by token \"" + tok.Label + "\""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := pkcs11.Open(testCtx(t), tc.uri, keystore.OpenOptions{})
			if err == nil {
				_ = ks.Close()
				t.Fatalf("Open(%s) succeeded", tc.uri)
			}
			if !errors.Is(err, tc.kind) {
				t.Fatalf("Open: got %v, want kind %v", err, tc.kind)
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "1234") {
				t.Errorf("error repeats the PIN: %v", err)
			}
			if after := labels(t, good); !slices.Equal(before, after) {
				t.Errorf("keys changed: before %v, after %v", before, after)
			}
			signVerify(t, good, kept, "still works")
		})
	}
}

// The wrong-PIN check still holds when this process is already logged in to the token (where the
// token itself answers CKR_USER_ALREADY_LOGGED_IN without looking at the PIN), and on a token no
// keystore of the process has open.
func TestWrongPIN(t *testing.T) {
	for _, loggedIn := range []bool{false, true} {
		t.Run(map[bool]string{false: "fresh", true: "already-logged-in"}[loggedIn], func(t *testing.T) {
			tok := softhsmtest.New(t)
			var before []string
			if loggedIn {
				ks := open(t, tok.URI)
				generate(t, ks, keystore.P256, "p")
				before = labels(t, ks)
			}
			wrong := filepath.Join(t.TempDir(), "pin")
			if err := os.WriteFile(wrong, []byte("99999999"), 0o600); err != nil {
				t.Fatal(err)
			}
			uri := strings.Replace(tok.URI, tok.PINFile, wrong, 1)
			_, err := pkcs11.Open(testCtx(t), uri, keystore.OpenOptions{})
			want := "the PIN from file:" + wrong + " was refused by token \"" + tok.Label + "\""
			if !errors.Is(err, keystore.ErrWrongSecret) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Open with a wrong PIN: got %v, want ErrWrongSecret saying %q", err, want)
			}
			ks := open(t, tok.URI)
			if after := labels(t, ks); !slices.Equal(before, after) {
				t.Fatalf("keys changed: before %v, after %v", before, after)
			}
		})
	}
}

func TestGenerateRefusals(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	taken := generate(t, ks, keystore.Ed25519, "taken")
	before := labels(t, ks)
	tests := []struct {
		name  string
		req   keystore.GenerateRequest
		kind  error
		words string
	}{
		{"label used by a key of the other algorithm", keystore.GenerateRequest{Algorithm: keystore.P256, Label: "taken"}, keystore.ErrExists, `"taken"`},
		{"empty label", keystore.GenerateRequest{Algorithm: keystore.P256}, keystore.ErrBadURI, "label is empty"},
		{"control character", keystore.GenerateRequest{Algorithm: keystore.P256, Label: "a\nb"}, keystore.ErrBadURI, "control"},
		{"long label", keystore.GenerateRequest{Algorithm: keystore.P256, Label: strings.Repeat("x", 129)}, keystore.ErrBadURI, "too long"},
		{"unknown algorithm", keystore.GenerateRequest{Algorithm: "rsa2048", Label: "r"}, keystore.ErrUnsupportedAlgorithm, "rsa2048"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ks.Generate(testCtx(t), tc.req)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("Generate(%+v): got %v, want %v mentioning %q", tc.req, err, tc.kind, tc.words)
			}
			if after := labels(t, ks); !slices.Equal(before, after) {
				t.Fatalf("keys changed: before %v, after %v", before, after)
			}
		})
	}
	signVerify(t, ks, taken, "unharmed")
}

// Key URIs that name another token or module, or no key, are refused; the token is untouched.
func TestForeignKeyURIs(t *testing.T) {
	tok := softhsmtest.New(t)
	ks := open(t, tok.URI)
	k := generate(t, ks, keystore.Ed25519, "mine")
	before := labels(t, ks)
	tests := []struct {
		name, uri string
		kind      error
		words     string
	}{
		{"other token", strings.Replace(k.URI, "token="+tok.Label, "token=someone-else", 1), keystore.ErrNotFound, `"someone-else"`},
		{"other module", strings.Replace(k.URI, tok.ModulePath, "/usr/lib/other/libp11.so", 1), keystore.ErrNotFound, "/usr/lib/other/libp11.so"},
		{"no key", tok.URI, keystore.ErrBadURI, "object="},
		{"unknown label", strings.Replace(tok.URI, "?", ";object=nobody?", 1), keystore.ErrNotFound, `"nobody"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for op, f := range map[string]func() error{
				"Signer":    func() error { _, err := ks.Signer(testCtx(t), tc.uri); return err },
				"PublicKey": func() error { _, err := ks.PublicKey(testCtx(t), tc.uri); return err },
				"Destroy":   func() error { return ks.Destroy(testCtx(t), tc.uri) },
			} {
				if err := f(); !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.words) {
					t.Errorf("%s(%s): got %v, want %v mentioning %q", op, tc.uri, err, tc.kind, tc.words)
				}
			}
			if after := labels(t, ks); !slices.Equal(before, after) {
				t.Fatalf("keys changed: before %v, after %v", before, after)
			}
		})
	}
	signVerify(t, ks, k, "unharmed")
}

// A signer whose key was destroyed reports ErrKeyLost, and so does one whose key vanished underneath.
func TestSignerAfterDestroy(t *testing.T) {
	tok := softhsmtest.New(t)
	ks := open(t, tok.URI)
	other := open(t, tok.URI) // a second keystore of the process on the same token
	k := generate(t, ks, keystore.Ed25519, "doomed")
	s1, err := ks.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := other.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []keystore.Signer{s1, s2} {
		if _, err := s.Sign(testCtx(t), []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	if err := ks.Destroy(testCtx(t), k.URI); err != nil {
		t.Fatal(err)
	}
	for i, s := range []keystore.Signer{s1, s2} {
		if _, err := s.Sign(testCtx(t), []byte("after")); !errors.Is(err, keystore.ErrKeyLost) {
			t.Errorf("signer %d after Destroy: got %v, want ErrKeyLost", i, err)
		}
	}
}

func TestClosed(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	k := generate(t, ks, keystore.P256, "k")
	s, err := ks.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Sign(testCtx(t), []byte("m")); !errors.Is(err, keystore.ErrClosed) {
		t.Errorf("Sign after Close: got %v, want ErrClosed", err)
	}
	for name, f := range map[string]func() error{
		"List":      func() error { _, err := ks.List(testCtx(t)); return err },
		"PublicKey": func() error { _, err := ks.PublicKey(testCtx(t), k.URI); return err },
		"Destroy":   func() error { return ks.Destroy(testCtx(t), k.URI) },
		"Ping":      func() error { return ks.(keystore.Pinger).Ping(testCtx(t)) },
	} {
		if err := f(); !errors.Is(err, keystore.ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrClosed", name, err)
		}
	}
}

func TestPing(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	p, ok := ks.(keystore.Pinger)
	if !ok {
		t.Fatal("the pkcs11 keystore is not a keystore.Pinger")
	}
	if err := p.Ping(testCtx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// Ping notices a lost login and repairs it.
	h := pkcs11.HooksOf(ks)
	if err := h.Logout(); err != nil {
		t.Fatal(err)
	}
	if err := p.Ping(testCtx(t)); err != nil {
		t.Fatalf("Ping after logout: %v", err)
	}
	if h.Recoveries() != 1 {
		t.Fatalf("recoveries = %d, want 1", h.Recoveries())
	}
}

func TestContextCancelled(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	k := generate(t, ks, keystore.Ed25519, "k")
	s, err := ks.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Sign(ctx, []byte("m")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sign with a cancelled context: got %v, want context.Canceled", err)
	}
}
