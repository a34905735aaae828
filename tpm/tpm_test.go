package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

func TestEd25519Refused(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks := openKS(t, sim, dir, "")
	_, err := ks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "ed"})
	wantErr(t, err, keystore.ErrUnsupportedAlgorithm, "no shipping TPM signs Ed25519", "--alg p256")
	if labels, _ := listLabels(dir); len(labels) != 0 {
		t.Fatalf("a refused Generate left files: %v", labels)
	}
}

// A key without a password carries NoDA; a key with one does not, signs only with the right password,
// and a wrong one is a clear ErrWrongSecret.
func TestKeyPassword(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	t.Setenv("CUSTOS_TEST_KEYPW", "correct horse")
	t.Setenv("CUSTOS_TEST_WRONGPW", "wrong horse")

	plain := openKS(t, sim, dir, "")
	pk := mustGenerate(t, plain, "unattended")
	if strings.Contains(pk.URI, "key-auth-source") {
		t.Fatalf("URI of a key without password names a key-auth-source: %s", pk.URI)
	}
	b, err := readBlob(dir, "unattended")
	if err != nil {
		t.Fatal(err)
	}
	if !b.pub.ObjectAttributes.NoDA || b.passwordProtected() {
		t.Fatal("a key without password lacks NoDA")
	}

	withPW := openKS(t, sim, dir, "&key-auth-source=env:CUSTOS_TEST_KEYPW")
	k := mustGenerate(t, withPW, "attended")
	if !strings.Contains(k.URI, "key-auth-source=env:CUSTOS_TEST_KEYPW") {
		t.Fatalf("key URI does not carry its password source: %s", k.URI)
	}
	b, err = readBlob(dir, "attended")
	if err != nil {
		t.Fatal(err)
	}
	if b.pub.ObjectAttributes.NoDA || !b.passwordProtected() {
		t.Fatal("a key with a password carries NoDA")
	}
	mustSignVerify(t, mustSigner(t, withPW, k.URI), "with the right password")

	// The plain keystore, asked for the password key by a URI without a source, says what to add.
	bare := strings.Replace(k.URI, "&key-auth-source=env:CUSTOS_TEST_KEYPW", "", 1)
	_, err = plain.Signer(testCtx(t), bare)
	wantErr(t, err, keystore.ErrWrongSecret, `"attended" has a password`, "key-auth-source=")

	wrong := strings.Replace(k.URI, "CUSTOS_TEST_KEYPW", "CUSTOS_TEST_WRONGPW", 1)
	s := mustSigner(t, plain, wrong) // loading needs no password; signing does
	_, err = s.Sign(testCtx(t), []byte("m"))
	wantErr(t, err, keystore.ErrWrongSecret, "rejected the password for key \"attended\"", "env:CUSTOS_TEST_WRONGPW", "dictionary-attack")

	// Wrong passwords eventually lock the TPM's dictionary-attack protection: a clear sentence. The key
	// without a password carries NoDA and keeps signing through the lockout; the password key is refused
	// even with the right password.
	var locked error
	for i := 0; i < 64 && locked == nil; i++ {
		_, err := s.Sign(testCtx(t), []byte("m"))
		switch {
		case errors.Is(err, keystore.ErrUnavailable):
			locked = err
		case !errors.Is(err, keystore.ErrWrongSecret):
			t.Fatalf("wrong password attempt %d: %v", i, err)
		}
	}
	wantErr(t, locked, keystore.ErrUnavailable, "dictionary-attack lockout", "TPM_RC_LOCKOUT", "tpm2_dictionarylockout")
	mustSignVerify(t, mustSigner(t, plain, pk.URI), "NoDA key during a lockout")
	_, err = mustSigner(t, withPW, k.URI).Sign(testCtx(t), []byte("m"))
	wantErr(t, err, keystore.ErrUnavailable, "TPM_RC_LOCKOUT")
}

func TestOwnerPassword(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	pwFile := filepath.Join(t.TempDir(), "owner")
	if err := os.WriteFile(pwFile, []byte("owner-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrongFile := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(wrongFile, []byte("not-it\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ks := openKS(t, sim, dir, "")
	before := mustGenerate(t, ks, "before")
	// Give the owner hierarchy a password, as an administrator would (tpm2_changeauth -c owner).
	err := ks.dev.do(testCtx(t), func(c *conn) error {
		_, err := tpm2.HierarchyChangeAuth{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("owner-secret")},
		}.Execute(c)
		return err
	})
	if err != nil {
		t.Fatalf("set the owner password: %v", err)
	}
	ks.Close()

	noSource := openKS(t, sim, dir, "")
	_, err = noSource.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "k"})
	wantErr(t, err, keystore.ErrWrongSecret, "has an owner password and none was given", "owner-auth-source=")
	_, err = noSource.Signer(testCtx(t), before.URI)
	wantErr(t, err, keystore.ErrWrongSecret, "owner-auth-source=")

	wrong := openKS(t, sim, dir, "&owner-auth-source=file:"+wrongFile)
	_, err = wrong.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "k"})
	wantErr(t, err, keystore.ErrWrongSecret, "rejected the owner password from file:"+wrongFile)
	if _, err := os.Stat(blobPath(dir, "k")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused Generate left a key file")
	}

	right := openKS(t, sim, dir, "&owner-auth-source=file:"+pwFile)
	k := mustGenerate(t, right, "k")
	if !strings.Contains(k.URI, "owner-auth-source=file:"+pwFile) {
		t.Fatalf("key URI lost the owner password source: %s", k.URI)
	}
	mustSignVerify(t, mustSigner(t, right, k.URI), "owner password from a file")
	// Keys made before the password was set still load: the seed did not change.
	mustSignVerify(t, mustSigner(t, right, before.URI), "key made before the owner password")
}

// The owner password can come from the prompt when no source is named.
func TestOwnerPasswordPrompt(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks := openKS(t, sim, dir, "")
	err := ks.dev.do(testCtx(t), func(c *conn) error {
		_, err := tpm2.HierarchyChangeAuth{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("typed")},
		}.Execute(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ks.Close()
	var asked []string
	answers := []string{"mistyped", "typed"}
	opts := testOpts(t)
	opts.Prompt = func(what string) ([]byte, error) {
		asked = append(asked, what)
		a := answers[0]
		answers = answers[1:]
		return []byte(a), nil
	}
	pks, err := Open(testCtx(t), sim.KeystoreURI(dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer pks.Close()
	_, err = pks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "a"})
	wantErr(t, err, keystore.ErrWrongSecret, "rejected the owner password from the prompt")
	for _, label := range []string{"a", "b"} {
		if _, err := pks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: label}); err != nil {
			t.Fatalf("Generate with a prompted owner password: %v", err)
		}
	}
	if len(asked) != 2 || asked[0] != "TPM owner password" || asked[1] != asked[0] {
		t.Fatalf("prompted %v, want the owner password asked twice (once more after a wrong answer), then kept", asked)
	}
}

// swtpm killed in the middle of signing: a clear error naming the device, then signing works again once
// it is back on the same state.
func TestKillMidSigning(t *testing.T) {
	sim := swtpmtest.Start(t)
	ks := openKS(t, sim, blobDir(t), "")
	k := mustGenerate(t, ks, "agent")
	s := mustSigner(t, ks, k.URI)

	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []error
		signed  int
		stopped = make(chan struct{})
	)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopped:
					return
				default:
				}
				msg := []byte(fmt.Sprintf("message %d", i))
				sig, err := s.Sign(context.Background(), msg)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if verr := k.Public.Verify(msg, sig); verr != nil {
					errs = append(errs, fmt.Errorf("bad signature: %w", verr))
				} else {
					signed++
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	sim.Kill()
	time.Sleep(50 * time.Millisecond)
	close(stopped)
	wg.Wait()
	if signed == 0 {
		t.Fatal("no signature was made before the kill")
	}
	if len(errs) == 0 {
		t.Fatal("signing went on without error while swtpm was dead")
	}
	for _, err := range errs {
		wantErr(t, err, keystore.ErrUnavailable, sim.Device())
	}
	// While it is down: a clear error, and it says what to check.
	_, err := s.Sign(testCtx(t), []byte("while down"))
	wantErr(t, err, keystore.ErrUnavailable, "cannot use the TPM at "+sim.Device(), "is swtpm running")

	sim.Restart()
	mustSignVerify(t, s, "after the restart")
	if err := ks.Ping(testCtx(t)); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
}

// A TPM that was cleared (new owner seed) or replaced cannot load the key any more: ErrKeyLost with
// the sentence that tells the operator what to do, both for a new Signer and for one that was signing.
func TestTPMClearedOrReplaced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reset func(*swtpmtest.TPM)
	}{
		{"TPM2_Clear", func(s *swtpmtest.TPM) { s.Clear() }},
		{"fresh state", func(s *swtpmtest.TPM) { s.Fresh() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := swtpmtest.Start(t)
			dir := blobDir(t)
			ks := openKS(t, sim, dir, "")
			k := mustGenerate(t, ks, "agent-gen0")
			s := mustSigner(t, ks, k.URI)
			mustSignVerify(t, s, "before")
			blobBefore, _ := os.ReadFile(blobPath(dir, "agent-gen0"))

			tc.reset(sim)

			const sentence = "the TPM was reset or replaced; this key is gone; recover with the recovery key (agentctl recover --recovery URI)"
			_, err := s.Sign(testCtx(t), []byte("after"))
			wantErr(t, err, keystore.ErrKeyLost, sentence, `"agent-gen0"`)
			_, err = ks.Signer(testCtx(t), k.URI)
			wantErr(t, err, keystore.ErrKeyLost, sentence)
			ks2 := openKS(t, sim, dir, "")
			_, err = ks2.Signer(testCtx(t), k.URI)
			wantErr(t, err, keystore.ErrKeyLost, sentence)
			// The blob is untouched (nothing is deleted behind the operator's back) and its public key
			// is still readable, for the recovery event.
			blobAfter, _ := os.ReadFile(blobPath(dir, "agent-gen0"))
			if string(blobAfter) != string(blobBefore) {
				t.Fatal("the key file changed")
			}
			pub, err := ks2.PublicKey(testCtx(t), k.URI)
			if err != nil || !pub.Equal(k.Public) {
				t.Fatalf("PublicKey of a lost key: %v", err)
			}
			// New keys work on the new TPM.
			mustSignVerify(t, mustSigner(t, ks2, mustGenerate(t, ks2, "agent-gen1").URI), "new key")
		})
	}
}

// A blob whose bytes were changed is refused with a clear integrity error (ErrCorrupt); the file is not
// touched.
func TestTamperedBlob(t *testing.T) {
	edits := []struct {
		name  string
		edit  func(t *testing.T, b *Blob, raw []byte) []byte
		words []string
	}{
		{"private byte flipped", func(t *testing.T, b *Blob, _ []byte) []byte {
			b.Private[len(b.Private)/2] ^= 0x01
			return reencode(t, b)
		}, []string{"refused to load", "integrity check failed", "TPM_RC_INTEGRITY"}},
		{"integrity HMAC flipped", func(t *testing.T, b *Blob, _ []byte) []byte {
			b.Private[4] ^= 0x80
			return reencode(t, b)
		}, []string{"integrity check failed"}},
		{"public attribute changed", func(t *testing.T, b *Blob, _ []byte) []byte {
			// Set STClear (bit 2 of the big-endian attributes): still a template this package accepts.
			pub := b.Public
			attrs := 2 + 2 + 2 // size, type, nameAlg
			pub[attrs+3] ^= 0x04
			return reencode(t, b)
		}, []string{"integrity check failed"}},
		{"public key replaced", func(t *testing.T, b *Blob, _ []byte) []byte {
			// Swap in another valid P-256 point: the blob decodes, the TPM's integrity check refuses it.
			other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			pub := *b.pub
			pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: other.X.FillBytes(make([]byte, 32))},
				Y: tpm2.TPM2BECCParameter{Buffer: other.Y.FillBytes(make([]byte, 32))},
			})
			b.Public = tpm2.Marshal(tpm2.New2B(pub))
			return reencode(t, b)
		}, []string{"integrity check failed"}},
		{"not JSON", func(t *testing.T, b *Blob, raw []byte) []byte { return raw[:len(raw)/2] }, []string{"invalid key blob", "not a JSON key blob"}},
		{"wrong label inside", func(t *testing.T, b *Blob, _ []byte) []byte { b.Label = "someone-else"; return reencode(t, b) }, []string{"holds key \"someone-else\""}},
	}
	for _, tc := range edits {
		t.Run(tc.name, func(t *testing.T) {
			sim := swtpmtest.Start(t)
			dir := blobDir(t)
			ks := openKS(t, sim, dir, "")
			k := mustGenerate(t, ks, "victim")
			path := blobPath(dir, "victim")
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b, err := DecodeBlob(raw)
			if err != nil {
				t.Fatal(err)
			}
			tampered := tc.edit(t, b, raw)
			if err := os.WriteFile(path, tampered, 0o600); err != nil {
				t.Fatal(err)
			}
			ks2 := openKS(t, sim, dir, "")
			_, err = ks2.Signer(testCtx(t), k.URI)
			wantErr(t, err, keystore.ErrCorrupt, tc.words...)
			if errors.Is(err, keystore.ErrKeyLost) {
				t.Fatal("a tampered blob was reported as a lost key")
			}
			after, _ := os.ReadFile(path)
			if string(after) != string(tampered) {
				t.Fatal("the keystore rewrote a tampered file")
			}
			if hs := sim.TransientHandles(); len(hs) != 0 {
				t.Fatalf("a refused load left transient objects: %x", hs)
			}
		})
	}
}

func reencode(t *testing.T, b *Blob) []byte {
	t.Helper()
	data, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
