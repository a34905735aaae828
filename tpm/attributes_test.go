package tpm

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// TestKeyAttributes reads a created key back from the TPM (TPM2_ReadPublic on the loaded object, not the
// blob file) and checks what makes it non-exportable: FixedTPM (it cannot be duplicated off this TPM),
// FixedParent (nor to another parent), SensitiveDataOrigin (the TPM generated the private key, nobody
// supplied it), an unrestricted signing key that cannot decrypt; NoDA exactly when it has no password.
// The blob check (TestDecodeBlob) refuses files that say otherwise; this test catches a template that
// stopped asking for them even if the blob check were relaxed the same way (issue 21.6).
func TestKeyAttributes(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	t.Setenv("CUSTOS_TEST_KEYPW", "correct horse")
	for _, tc := range []struct {
		name, extra string
		password    bool
	}{
		{"no password", "", false},
		{"password", "&key-auth-source=env:CUSTOS_TEST_KEYPW", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks := openKS(t, sim, dir, tc.extra)
			label := "attrs"
			if tc.password {
				label = "attrs-pw"
			}
			k := mustGenerate(t, ks, label)
			s := mustSigner(t, ks, k.URI) // loads the key
			var pub *tpm2.TPMTPublic
			var name []byte
			err := ks.dev.do(testCtx(t), func(c *conn) error {
				h, ok := ks.current(c, label, s.(*signer).name)
				if !ok {
					t.Fatal("the signer's key is not loaded")
				}
				rp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(c)
				if err != nil {
					return err
				}
				name = rp.Name.Buffer
				pub, err = rp.OutPublic.Contents()
				return err
			})
			if err != nil {
				t.Fatalf("TPM2_ReadPublic: %v", err)
			}
			if !bytes.Equal(name, s.(*signer).name) {
				t.Fatal("the loaded object is not the key of the blob file")
			}
			got := pub.ObjectAttributes
			want := tpm2.TPMAObject{
				FixedTPM:            true,
				FixedParent:         true,
				SensitiveDataOrigin: true,
				UserWithAuth:        true,
				SignEncrypt:         true,
				NoDA:                !tc.password,
			}
			if got != want {
				t.Fatalf("the TPM says the key's attributes are %+v, want %+v", got, want)
			}
			if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 {
				t.Fatalf("type %v, name algorithm %v", pub.Type, pub.NameAlg)
			}
		})
	}
}
