package pkcs11_test

import (
	"bytes"
	"errors"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

// Every key the backend makes is read back from SoftHSM: the private half is a token object, private,
// sensitive, never extractable, and its value cannot be read; both halves share label and a 16-byte id.
func TestKeyAttributes(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	ar, ok := ks.(pkcs11.AttributeReader)
	if !ok {
		t.Fatal("the pkcs11 keystore is not a pkcs11.AttributeReader")
	}
	h := pkcs11.HooksOf(ks)
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		t.Run(string(alg), func(t *testing.T) {
			k := generate(t, ks, alg, "attrs-"+string(alg))
			got, err := ar.KeyAttributes(testCtx(t), k.URI)
			if err != nil {
				t.Fatalf("KeyAttributes: %v", err)
			}
			want := pkcs11.KeyAttributes{Token: true, Private: true, Sensitive: true, Extractable: false,
				NeverExtractable: true, AlwaysSensitive: true}
			if got != want {
				t.Fatalf("KeyAttributes = %+v, want %+v", got, want)
			}
			priv, err := h.PrivateHandle(testCtx(t), k.URI)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := h.PublicHandle(testCtx(t), k.URI)
			if err != nil {
				t.Fatal(err)
			}
			err = h.Raw(func(c *p11.Ctx, slot uint) error {
				sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
				if err != nil {
					return err
				}
				defer func() { _ = c.CloseSession(sh) }()
				// The private value must not come out.
				_, verr := c.GetAttributeValue(sh, priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
				var rv p11.Error
				if !errors.As(verr, &rv) || rv != p11.CKR_ATTRIBUTE_SENSITIVE {
					t.Errorf("C_GetAttributeValue(CKA_VALUE) of the private key: got %v, want CKR_ATTRIBUTE_SENSITIVE", verr)
				}
				// Nor may it be made extractable after the fact.
				serr := c.SetAttributeValue(sh, priv, []*p11.Attribute{p11.NewAttribute(p11.CKA_EXTRACTABLE, true)})
				if serr == nil {
					t.Error("C_SetAttributeValue(CKA_EXTRACTABLE=true) on the private key succeeded")
				}
				a, err := c.GetAttributeValue(sh, priv, []*p11.Attribute{
					p11.NewAttribute(p11.CKA_ID, nil), p11.NewAttribute(p11.CKA_LABEL, nil)})
				if err != nil {
					return err
				}
				b, err := c.GetAttributeValue(sh, pub, []*p11.Attribute{
					p11.NewAttribute(p11.CKA_ID, nil), p11.NewAttribute(p11.CKA_LABEL, nil), p11.NewAttribute(p11.CKA_TOKEN, nil)})
				if err != nil {
					return err
				}
				if len(a[0].Value) != 16 || !bytes.Equal(a[0].Value, b[0].Value) {
					t.Errorf("CKA_ID private %x, public %x: want the same 16 bytes", a[0].Value, b[0].Value)
				}
				if string(a[1].Value) != k.Label || string(b[1].Value) != k.Label {
					t.Errorf("CKA_LABEL private %q, public %q: want %q", a[1].Value, b[1].Value, k.Label)
				}
				if !bytes.Equal(b[2].Value, []byte{1}) {
					t.Errorf("public key CKA_TOKEN = %v, want true", b[2].Value)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	// Unknown keys are reported as such.
	if _, err := ar.KeyAttributes(testCtx(t), "pkcs11:token=x;object=y?module-path="+softhsmtest.ModulePath(t)); !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("KeyAttributes of a key on another token: got %v, want ErrNotFound", err)
	}
}
