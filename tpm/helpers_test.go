package tpm

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// tlog sends a keystore's log lines to t.Log.
type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testOpts(t testing.TB) keystore.OpenOptions {
	return keystore.OpenOptions{Logger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// blobDir is a not-yet-existing directory for key blobs (Open creates it 0700).
func blobDir(t testing.TB) string { return filepath.Join(t.TempDir(), "tpm") }

// openKS opens a keystore on sim with blobs in dir; extra is appended to the URI ("&key-auth-source=...").
func openKS(t testing.TB, sim *swtpmtest.TPM, dir, extra string) *Keystore {
	t.Helper()
	ks, err := open(testCtx(t), sim.KeystoreURI(dir)+extra, testOpts(t))
	if err != nil {
		t.Fatalf("open TPM keystore: %v", err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks
}

func mustGenerate(t testing.TB, ks *Keystore, label string) keystore.Key {
	t.Helper()
	k, err := ks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: label})
	if err != nil {
		t.Fatalf("Generate(%q): %v", label, err)
	}
	return k
}

func mustSigner(t testing.TB, ks *Keystore, uri string) keystore.Signer {
	t.Helper()
	s, err := ks.Signer(testCtx(t), uri)
	if err != nil {
		t.Fatalf("Signer(%s): %v", uri, err)
	}
	return s
}

func mustSignVerify(t testing.TB, s keystore.Signer, msg string) {
	t.Helper()
	sig, err := s.Sign(testCtx(t), []byte(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := s.Public().Verify([]byte(msg), sig); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
}

// wantErr checks the kind and that the message contains every fragment.
func wantErr(t testing.TB, err error, kind error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Fatalf("got error %q, want kind %v", err, kind)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("error %q does not say %q", err, f)
		}
	}
}
