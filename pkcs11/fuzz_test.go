package pkcs11

import (
	"bytes"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

// FuzzParseRef: any string either parses, and then the URIs we print from it parse back to the same
// reference, or is refused as ErrBadURI; a pin-value never parses.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=custos?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
		"pkcs11:token=a%20b;serial=01;object=k;id=%01%02%FF?module-path=/m.so&pin-source=env:PIN",
		"pkcs11:token=x;pin-value=1?module-path=/m.so",
		"pkcs11:serial=1?module-path=/m.so",
		"pkcs11:token=x;slot-id=3?module-path=/m.so",
		"pkcs11:token=%zz",
		"pkcs11:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseRef(s)
		if err != nil {
			if !errors.Is(err, keystore.ErrBadURI) {
				t.Fatalf("parseRef(%q): error %v is not ErrBadURI", s, err)
			}
			return
		}
		if u, err := keystore.ParseURI(s, "pkcs11"); err == nil {
			for _, a := range append(u.Path, u.Query...) {
				if a.Name == "pin-value" {
					t.Fatalf("parseRef(%q) accepted a pin-value", s)
				}
			}
		}
		back, err := parseRef(r.keystoreURI())
		if err != nil {
			t.Fatalf("keystoreURI %q of %q does not parse: %v", r.keystoreURI(), s, err)
		}
		if back.label != r.label || back.serial != r.serial || back.modulePath != r.modulePath || back.pinSource != r.pinSource || back.namesKey() {
			t.Fatalf("keystoreURI round trip: %+v -> %q -> %+v", r, r.keystoreURI(), back)
		}
		if !r.namesKey() {
			return
		}
		k := r.keyURI(r.object, r.id)
		back, err = parseRef(k)
		if err != nil {
			t.Fatalf("keyURI %q of %q does not parse: %v", k, s, err)
		}
		if back.object != r.object || !bytes.Equal(back.id, r.id) || back.label != r.label {
			t.Fatalf("keyURI round trip: %+v -> %q -> %+v", r, k, back)
		}
	})
}

// FuzzRawToDER: the DER we make from r||s is exactly what encoding/asn1 makes from the same integers.
func FuzzRawToDER(f *testing.F) {
	f.Add(bytes.Repeat([]byte{0}, 64))
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Add(append(bytes.Repeat([]byte{0}, 31), bytes.Repeat([]byte{0x80}, 33)...))
	f.Fuzz(func(t *testing.T, raw []byte) {
		der, err := rawECDSAToDER(raw)
		if len(raw) != 64 {
			if !errors.Is(err, keystore.ErrCorrupt) {
				t.Fatalf("rawECDSAToDER(%d bytes): got %v, want ErrCorrupt", len(raw), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		want, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(der, want) {
			t.Fatalf("rawECDSAToDER(%x) = %x, encoding/asn1 says %x", raw, der, want)
		}
	})
}
