package suite

import (
	"bytes"
	"errors"
	"testing"
)

func TestHPKERoundTrip(t *testing.T) {
	for _, k := range []KEM{KEMX25519, KEMXWing} {
		t.Run(k.String(), func(t *testing.T) {
			key, err := GenerateEncryptionKey(k)
			if err != nil {
				t.Fatal(err)
			}
			if len(key.Public()) != k.PublicKeySize() || CheckPublicKey(k, key.Public()) != nil {
				t.Fatalf("public key of %d bytes", len(key.Public()))
			}
			enc, ct, err := HPKESeal(k, key.Public(), []byte("info"), []byte("aad"), []byte("hello"))
			if err != nil {
				t.Fatal(err)
			}
			if len(enc) != k.EncapsulationSize() {
				t.Fatalf("enc of %d bytes", len(enc))
			}
			pt, err := key.Open(enc, []byte("info"), []byte("aad"), ct)
			if err != nil || string(pt) != "hello" {
				t.Fatalf("open: %q, %v", pt, err)
			}
			for name, f := range map[string]func() ([]byte, error){
				"aad":  func() ([]byte, error) { return key.Open(enc, []byte("info"), []byte("AAD"), ct) },
				"info": func() ([]byte, error) { return key.Open(enc, []byte("inf0"), []byte("aad"), ct) },
				"ct": func() ([]byte, error) {
					c := bytes.Clone(ct)
					c[0] ^= 1
					return key.Open(enc, []byte("info"), []byte("aad"), c)
				},
			} {
				if _, err := f(); !errors.Is(err, ErrOpen) {
					t.Errorf("tampered %s: %v", name, err)
				}
			}
			other, _ := GenerateEncryptionKey(k)
			if _, err := other.Open(enc, []byte("info"), []byte("aad"), ct); err == nil {
				t.Error("another key opened the message")
			}
			seed := key.seed
			key.Wipe()
			if !bytes.Equal(seed, make([]byte, 32)) {
				t.Error("Wipe left the seed in memory")
			}
			if _, err := key.Open(enc, []byte("info"), []byte("aad"), ct); !errors.Is(err, ErrWiped) {
				t.Errorf("open after wipe: %v", err)
			}
		})
	}
	if _, _, err := HPKESeal(KEM(0x10), make([]byte, 65), nil, nil, nil); err == nil {
		t.Error("unknown KEM accepted")
	}
	if _, _, err := HPKESeal(KEMX25519, make([]byte, 31), nil, nil, nil); err == nil {
		t.Error("short public key accepted")
	}
}

func TestMLKEM(t *testing.T) {
	k, err := GenerateMLKEM()
	if err != nil {
		t.Fatal(err)
	}
	ss, ct, err := MLKEMEncapsulate(k.EncapsulationKey())
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.Decapsulate(ct)
	if err != nil || !bytes.Equal(got, ss) {
		t.Fatalf("decapsulate: %v", err)
	}
	if _, err := k.Decapsulate(ct[:100]); err == nil {
		t.Error("short ciphertext accepted")
	}
	if _, _, err := MLKEMEncapsulate(make([]byte, 10)); err == nil {
		t.Error("short encapsulation key accepted")
	}
}

func TestAEADRefusesShapes(t *testing.T) {
	if _, err := NewAEAD(make([]byte, 16)); err == nil {
		t.Fatal("AES-128 key accepted")
	}
	a, _ := NewAEAD(make([]byte, 32))
	if _, err := a.Open(nil, make([]byte, 12), make([]byte, 15), nil); !errors.Is(err, ErrOpen) {
		t.Fatalf("short ciphertext: %v", err)
	}
	if _, err := HKDF([]byte("s"), nil, nil, MaxHKDF+1); err == nil {
		t.Fatal("over-long HKDF accepted")
	}
}
