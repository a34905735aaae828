package keystore

import (
	"bytes"
	"errors"
	"testing"
)

func TestPublicKeyEncodings(t *testing.T) {
	for _, alg := range []Algorithm{Ed25519, P256} {
		s, err := GenerateMemorySigner(alg)
		if err != nil {
			t.Fatal(err)
		}
		pub := s.Public()
		raw := pub.Bytes()
		back, err := ParsePublicKey(alg, raw)
		if err != nil || !back.Equal(pub) || !bytes.Equal(back.Bytes(), raw) {
			t.Fatalf("%s: raw round trip failed: %v", alg, err)
		}
		fromPEM, err := ParsePublicKeyPEM(pub.PEM())
		if err != nil || !fromPEM.Equal(pub) {
			t.Fatalf("%s: PEM round trip failed: %v", alg, err)
		}
		sig, err := s.Sign(t.Context(), []byte("m"))
		if err != nil {
			t.Fatal(err)
		}
		if err := back.Verify([]byte("m"), sig); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if err := back.Verify([]byte("n"), sig); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("%s: wrong message: %v", alg, err)
		}
	}
	if _, err := ParsePublicKey(P256, append([]byte{5}, make([]byte, 32)...)); err == nil {
		t.Fatal("bad point prefix accepted")
	}
	if _, err := ParsePublicKey(P256, append([]byte{2}, bytes.Repeat([]byte{0xff}, 32)...)); err == nil {
		t.Fatal("x >= p accepted")
	}
}

func TestURIRoundTrip(t *testing.T) {
	in := "pkcs11:token=my%20token;object=gen0?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
	u, err := ParseURI(in, "pkcs11")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := u.Get("token"); v != "my token" {
		t.Fatalf("token = %q", v)
	}
	if v, _ := u.Get("pin-source"); v != "file:/run/pin" {
		t.Fatalf("pin-source = %q", v)
	}
	if u.String() != in {
		t.Fatalf("String() = %q", u.String())
	}
	for _, bad := range []string{"tpm:x=1", "pkcs11:token", "pkcs11:a=1;a=2", "pkcs11:a=%zz"} {
		if _, err := ParseURI(bad, "pkcs11"); !errors.Is(err, ErrBadURI) {
			t.Errorf("ParseURI(%q): got %v, want ErrBadURI", bad, err)
		}
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/pin"
	if err := writeFile(p, "1234\n"); err != nil {
		t.Fatal(err)
	}
	b, err := ReadSecret("file:" + p)
	if err != nil || string(b) != "1234" {
		t.Fatalf("file: %q %v", b, err)
	}
	t.Setenv("CUSTOS_TEST_PIN", "abcd")
	b, err = ReadSecret("env:CUSTOS_TEST_PIN")
	if err != nil || string(b) != "abcd" {
		t.Fatalf("env: %q %v", b, err)
	}
	Wipe(b)
	if string(b) != "\x00\x00\x00\x00" {
		t.Fatal("Wipe did not zero")
	}
	for _, bad := range []string{"1234", "env:CUSTOS_UNSET_VARIABLE_X", "file:" + dir + "/missing", "literal:1234"} {
		if _, err := ReadSecret(bad); err == nil {
			t.Errorf("ReadSecret(%q) succeeded", bad)
		}
	}
}
