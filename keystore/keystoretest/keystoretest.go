// Package keystoretest is the conformance suite every keystore backend runs (in the manner of SPIRE's
// keymanagertest). A backend's test calls Run with a Harness that makes a fresh, empty keystore.
package keystoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// Harness tells the suite how to reach one backend.
type Harness struct {
	// New prepares fresh, empty backing state (a token, a TPM, a directory) for one subtest and returns a
	// function that opens a keystore on it. The suite calls open more than once to test that keys survive
	// a reopen; each opened keystore is closed by the suite.
	New func(t *testing.T) (open func() (keystore.Keystore, error))
	// Algorithms the backend claims. The suite checks that each works and that the others are refused.
	Algorithms []keystore.Algorithm
	// Concurrency is how many goroutines sign at once in the concurrency test (default 16).
	Concurrency int
	// SignaturesPerGoroutine in the concurrency test (default 8; keep low for slow devices).
	SignaturesPerGoroutine int
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	if h.Concurrency == 0 {
		h.Concurrency = 16
	}
	if h.SignaturesPerGoroutine == 0 {
		h.SignaturesPerGoroutine = 8
	}
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		if !slices.Contains(h.Algorithms, alg) {
			t.Run(string(alg)+"/Refused", func(t *testing.T) { testRefused(t, h, alg) })
			continue
		}
		t.Run(string(alg)+"/GenerateSignVerify", func(t *testing.T) { testSignVerify(t, h, alg) })
		t.Run(string(alg)+"/Reopen", func(t *testing.T) { testReopen(t, h, alg) })
		t.Run(string(alg)+"/Destroy", func(t *testing.T) { testDestroy(t, h, alg) })
		t.Run(string(alg)+"/DuplicateLabel", func(t *testing.T) { testDuplicate(t, h, alg) })
		t.Run(string(alg)+"/ConcurrentSigning", func(t *testing.T) { testConcurrent(t, h, alg) })
	}
	t.Run("List", func(t *testing.T) { testList(t, h) })
	t.Run("UnknownKey", func(t *testing.T) { testUnknown(t, h) })
	t.Run("Info", func(t *testing.T) { testInfo(t, h) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, h) })
	t.Run("DataKeyWrapper", func(t *testing.T) { testDataKey(t, h) })
}

// testDataKey checks the optional DataKeyWrapper capability (skipped for a backend without it): a wrapped
// data key unwraps to itself after a reopen, carries no plaintext, and a damaged blob is refused.
func testDataKey(t *testing.T, h Harness) {
	f := h.New(t)
	ks := open(t, f)
	w, ok := ks.(keystore.DataKeyWrapper)
	if !ok {
		t.Skipf("%s keystore does not wrap data keys", ks.Info().Backend)
	}
	dk := make([]byte, 32)
	for i := range dk {
		dk[i] = byte(0xa0 + i)
	}
	blob, err := w.WrapDataKey(ctx(t), dk)
	if err != nil {
		t.Fatalf("WrapDataKey: %v", err)
	}
	if len(blob) == 0 || bytes.Contains(blob, dk[:8]) {
		t.Fatal("the wrapped data key is empty or shows the plaintext")
	}
	again, err := w.WrapDataKey(ctx(t), dk)
	if err != nil || bytes.Equal(again, blob) {
		t.Fatalf("a second wrap = %v, equal to the first: %v (want a fresh wrap)", err, bytes.Equal(again, blob))
	}
	_ = ks.Close()
	w2, ok := open(t, f).(keystore.DataKeyWrapper)
	if !ok {
		t.Fatal("the reopened keystore lost the DataKeyWrapper capability")
	}
	got, err := w2.UnwrapDataKey(ctx(t), blob)
	if err != nil || !bytes.Equal(got, dk) {
		t.Fatalf("UnwrapDataKey after reopen = %x, %v; want %x", got, err, dk)
	}
	bad := bytes.Clone(blob)
	bad[len(bad)-1] ^= 1
	if got, err := w2.UnwrapDataKey(ctx(t), bad); err == nil {
		t.Fatalf("a damaged blob unwrapped to %x", got)
	}
	if _, err := w2.UnwrapDataKey(ctx(t), nil); err == nil {
		t.Fatal("an empty blob unwrapped")
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func open(t *testing.T, f func() (keystore.Keystore, error)) keystore.Keystore {
	t.Helper()
	ks, err := f()
	if err != nil {
		t.Fatalf("open keystore: %v", err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks
}

func generate(t *testing.T, ks keystore.Keystore, alg keystore.Algorithm, label string) keystore.Key {
	t.Helper()
	k, err := ks.Generate(ctx(t), keystore.GenerateRequest{Algorithm: alg, Label: label})
	if err != nil {
		t.Fatalf("Generate(%s, %q): %v", alg, label, err)
	}
	if k.URI == "" || k.Label != label || k.Public.Algorithm != alg || k.Public.IsZero() {
		t.Fatalf("Generate returned an incomplete key: %+v", k)
	}
	return k
}

func signAndCheck(t *testing.T, s keystore.Signer, pub keystore.PublicKey, msg []byte) []byte {
	t.Helper()
	sig, err := s.Sign(ctx(t), msg)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatalf("signature from the keystore does not verify: %v", err)
	}
	return sig
}

func testSignVerify(t *testing.T, h Harness, alg keystore.Algorithm) {
	ks := open(t, h.New(t))
	k := generate(t, ks, alg, "conformance-sign")
	s, err := ks.Signer(ctx(t), k.URI)
	if err != nil {
		t.Fatalf("Signer: %v", err)
	}
	if !s.Public().Equal(k.Public) {
		t.Fatal("Signer.Public differs from the generated key")
	}
	pub, err := ks.PublicKey(ctx(t), k.URI)
	if err != nil {
		t.Fatalf("PublicKey: %v", err)
	}
	if !pub.Equal(k.Public) {
		t.Fatal("PublicKey differs from the generated key")
	}
	for _, msg := range [][]byte{{}, []byte("custos"), make([]byte, 1<<16)} {
		sig := signAndCheck(t, s, pub, msg)
		if alg == keystore.Ed25519 && len(sig) != 64 {
			t.Fatalf("ed25519 signature is %d bytes, want 64", len(sig))
		}
		tampered := append([]byte("x"), msg...)
		if err := pub.Verify(tampered, sig); !errors.Is(err, keystore.ErrBadSignature) {
			t.Fatalf("signature verified over a different message (err=%v)", err)
		}
	}
	// A signature from another key must not verify under this one.
	other := generate(t, ks, alg, "conformance-other")
	os, err := ks.Signer(ctx(t), other.URI)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := os.Sign(ctx(t), []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Verify([]byte("m"), sig); err == nil {
		t.Fatal("signature by another key verified")
	}
}

func testReopen(t *testing.T, h Harness, alg keystore.Algorithm) {
	opener := h.New(t)
	ks1, err := opener()
	if err != nil {
		t.Fatal(err)
	}
	k := generate(t, ks1, alg, "conformance-reopen")
	if err := ks1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ks2 := open(t, opener)
	pub, err := ks2.PublicKey(ctx(t), k.URI)
	if err != nil {
		t.Fatalf("PublicKey after reopen: %v", err)
	}
	if !pub.Equal(k.Public) {
		t.Fatal("public key changed across reopen")
	}
	s, err := ks2.Signer(ctx(t), k.URI)
	if err != nil {
		t.Fatalf("Signer after reopen: %v", err)
	}
	signAndCheck(t, s, k.Public, []byte("after reopen"))
}

func testDestroy(t *testing.T, h Harness, alg keystore.Algorithm) {
	ks := open(t, h.New(t))
	k := generate(t, ks, alg, "conformance-destroy")
	keep := generate(t, ks, alg, "conformance-keep")
	if err := ks.Destroy(ctx(t), k.URI); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := ks.Signer(ctx(t), k.URI); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Signer after Destroy: got %v, want ErrNotFound", err)
	}
	if _, err := ks.PublicKey(ctx(t), k.URI); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("PublicKey after Destroy: got %v, want ErrNotFound", err)
	}
	if err := ks.Destroy(ctx(t), k.URI); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("second Destroy: got %v, want ErrNotFound", err)
	}
	s, err := ks.Signer(ctx(t), keep.URI)
	if err != nil {
		t.Fatalf("the other key was harmed by Destroy: %v", err)
	}
	signAndCheck(t, s, keep.Public, []byte("still here"))
}

func testDuplicate(t *testing.T, h Harness, alg keystore.Algorithm) {
	ks := open(t, h.New(t))
	k := generate(t, ks, alg, "conformance-dup")
	_, err := ks.Generate(ctx(t), keystore.GenerateRequest{Algorithm: alg, Label: "conformance-dup"})
	if !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("Generate with a label in use: got %v, want ErrExists", err)
	}
	pub, err := ks.PublicKey(ctx(t), k.URI)
	if err != nil || !pub.Equal(k.Public) {
		t.Fatalf("the existing key changed after a refused Generate (err=%v)", err)
	}
}

func testConcurrent(t *testing.T, h Harness, alg keystore.Algorithm) {
	ks := open(t, h.New(t))
	k := generate(t, ks, alg, "conformance-concurrent")
	s, err := ks.Signer(ctx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, h.Concurrency*h.SignaturesPerGoroutine)
	for g := 0; g < h.Concurrency; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < h.SignaturesPerGoroutine; i++ {
				msg := []byte(fmt.Sprintf("goroutine %d message %d", g, i))
				sig, err := s.Sign(c, msg)
				if err != nil {
					errs <- fmt.Errorf("goroutine %d: sign: %w", g, err)
					return
				}
				if err := k.Public.Verify(msg, sig); err != nil {
					errs <- fmt.Errorf("goroutine %d: signature %d does not verify: %w", g, i, err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testList(t *testing.T, h Harness) {
	ks := open(t, h.New(t))
	var want []string
	for i, alg := range h.Algorithms {
		for j := 0; j < 2; j++ {
			k := generate(t, ks, alg, fmt.Sprintf("conformance-list-%d-%d", i, j))
			want = append(want, k.URI)
		}
	}
	gone := generate(t, ks, h.Algorithms[0], "conformance-list-gone")
	if err := ks.Destroy(ctx(t), gone.URI); err != nil {
		t.Fatal(err)
	}
	keys, err := ks.List(ctx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got []string
	for _, k := range keys {
		got = append(got, k.URI)
		if k.Public.IsZero() {
			t.Errorf("List returned %s without a public key", k.URI)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("List is missing %s (got %v)", w, got)
		}
	}
	if slices.Contains(got, gone.URI) {
		t.Errorf("List still shows destroyed key %s", gone.URI)
	}
}

func testUnknown(t *testing.T, h Harness) {
	ks := open(t, h.New(t))
	k := generate(t, ks, h.Algorithms[0], "conformance-known")
	if err := ks.Destroy(ctx(t), k.URI); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Signer(ctx(t), k.URI); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Signer(unknown key): got %v, want ErrNotFound", err)
	}
	if _, err := ks.Signer(ctx(t), "bogus:nothing"); !errors.Is(err, keystore.ErrBadURI) && !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("Signer(malformed URI): got %v, want ErrBadURI or ErrNotFound", err)
	}
	if _, err := ks.Generate(ctx(t), keystore.GenerateRequest{Algorithm: h.Algorithms[0]}); err == nil {
		t.Error("Generate with an empty label succeeded")
	}
}

func testRefused(t *testing.T, h Harness, alg keystore.Algorithm) {
	ks := open(t, h.New(t))
	_, err := ks.Generate(ctx(t), keystore.GenerateRequest{Algorithm: alg, Label: "conformance-refused"})
	if !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
		t.Fatalf("Generate(%s) on a backend that does not claim it: got %v, want ErrUnsupportedAlgorithm", alg, err)
	}
}

func testInfo(t *testing.T, h Harness) {
	ks := open(t, h.New(t))
	info := ks.Info()
	if info.Backend == "" || info.URI == "" {
		t.Fatalf("Info is incomplete: %+v", info)
	}
	if !slices.Equal(sortedAlgs(info.Algorithms), sortedAlgs(h.Algorithms)) {
		t.Fatalf("Info.Algorithms = %v, harness claims %v", info.Algorithms, h.Algorithms)
	}
}

func testClosed(t *testing.T, h Harness) {
	opener := h.New(t)
	ks, err := opener()
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, err = ks.Generate(ctx(t), keystore.GenerateRequest{Algorithm: h.Algorithms[0], Label: "after-close"})
	if !errors.Is(err, keystore.ErrClosed) {
		t.Fatalf("Generate after Close: got %v, want ErrClosed", err)
	}
}

func sortedAlgs(a []keystore.Algorithm) []keystore.Algorithm {
	b := slices.Clone(a)
	slices.Sort(b)
	return b
}
