package keystore_test

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"testing"

	"github.com/c2sp/wycheproof"

	"github.com/custos-agent/custos/keystore"
)

// Wycheproof vectors run against keystore.PublicKey.Verify, the verify path behind every signature check
// in Custos (key event log, handshake, envelope, agentctl verify): every valid vector must verify, every
// invalid one must be refused with ErrBadSignature, and the counts must be the ones the files declare.

type wpFile struct {
	Algorithm     string    `json:"algorithm"`
	NumberOfTests int       `json:"numberOfTests"`
	TestGroups    []wpGroup `json:"testGroups"`
}

type wpGroup struct {
	Type      string `json:"type"`
	PublicKey struct {
		PK string `json:"pk"` // EdDSA: raw key, hex
	} `json:"publicKey"`
	PublicKeyPEM string   `json:"publicKeyPem"`
	SHA          string   `json:"sha"`
	Tests        []wpTest `json:"tests"`
}

type wpTest struct {
	TCID    int      `json:"tcId"`
	Comment string   `json:"comment"`
	Flags   []string `json:"flags"`
	Msg     string   `json:"msg"`
	Sig     string   `json:"sig"`
	Result  string   `json:"result"` // valid, invalid (acceptable does not occur in these files)
}

func loadVectors(t *testing.T, name string) wpFile {
	t.Helper()
	b, err := fs.ReadFile(wycheproof.TestVectors, name)
	if err != nil {
		t.Fatalf("read %s from github.com/c2sp/wycheproof: %v", name, err)
	}
	var f wpFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return f
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in vector: %v", err)
	}
	return b
}

// runVectors checks every test of f with the key key(group) and returns the counts of valid and invalid.
func runVectors(t *testing.T, f wpFile, key func(wpGroup) (keystore.PublicKey, error)) (valid, invalid int) {
	t.Helper()
	total := 0
	for _, g := range f.TestGroups {
		pub, err := key(g)
		if err != nil {
			t.Fatalf("group key: %v", err)
		}
		for _, tc := range g.Tests {
			total++
			err := pub.Verify(unhex(t, tc.Msg), unhex(t, tc.Sig))
			switch tc.Result {
			case "valid":
				valid++
				if err != nil {
					t.Errorf("tcId %d (%s, %v): a valid signature was refused: %v", tc.TCID, tc.Comment, tc.Flags, err)
				}
			case "invalid":
				invalid++
				if err == nil {
					t.Errorf("tcId %d (%s, %v): an invalid signature verified", tc.TCID, tc.Comment, tc.Flags)
				} else if !errors.Is(err, keystore.ErrBadSignature) {
					t.Errorf("tcId %d: refused with %v, want ErrBadSignature", tc.TCID, err)
				}
			default:
				t.Errorf("tcId %d: unexpected result %q", tc.TCID, tc.Result)
			}
		}
	}
	if total != f.NumberOfTests {
		t.Errorf("ran %d tests, the file declares %d", total, f.NumberOfTests)
	}
	return valid, invalid
}

func TestWycheproofEd25519(t *testing.T) {
	f := loadVectors(t, "ed25519_test.json")
	valid, invalid := runVectors(t, f, func(g wpGroup) (keystore.PublicKey, error) {
		if g.Type != "EddsaVerify" {
			t.Fatalf("unexpected group type %q", g.Type)
		}
		return keystore.ParsePublicKey(keystore.Ed25519, unhex(t, g.PublicKey.PK))
	})
	if valid != 88 || invalid != 63 {
		t.Fatalf("ed25519: %d valid and %d invalid vectors, want 88 and 63", valid, invalid)
	}
	t.Logf("ed25519: %d valid vectors verified, %d invalid refused", valid, invalid)
}

func TestWycheproofECDSAP256(t *testing.T) {
	f := loadVectors(t, "ecdsa_secp256r1_sha256_test.json")
	valid, invalid := runVectors(t, f, func(g wpGroup) (keystore.PublicKey, error) {
		if g.Type != "EcdsaVerify" || g.SHA != "SHA-256" {
			t.Fatalf("unexpected group %q with %q", g.Type, g.SHA)
		}
		pub, err := keystore.ParsePublicKeyPEM([]byte(g.PublicKeyPEM))
		if err == nil && pub.Algorithm != keystore.P256 {
			t.Fatalf("group key is %s", pub.Algorithm)
		}
		return pub, err
	})
	if valid != 174 || invalid != 310 {
		t.Fatalf("ecdsa p256: %d valid and %d invalid vectors, want 174 and 310", valid, invalid)
	}
	t.Logf("ecdsa p256/sha-256 (DER): %d valid vectors verified, %d invalid refused", valid, invalid)
}
