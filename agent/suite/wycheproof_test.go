package suite

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"slices"
	"testing"

	"github.com/c2sp/wycheproof"
)

// Wycheproof vectors run against this package's wrappers (the code paths the protocol uses).

type wpFile[G any] struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []G `json:"testGroups"`
}

func load[G any](t *testing.T, name string) wpFile[G] {
	t.Helper()
	b, err := fs.ReadFile(wycheproof.TestVectors, name)
	if err != nil {
		t.Fatal(err)
	}
	var f wpFile[G]
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type hexStr string

type aeadGroup struct {
	IVSize  int `json:"ivSize"`
	KeySize int `json:"keySize"`
	TagSize int `json:"tagSize"`
	Tests   []struct {
		TcID   int      `json:"tcId"`
		Key    hexStr   `json:"key"`
		IV     hexStr   `json:"iv"`
		AAD    hexStr   `json:"aad"`
		Msg    hexStr   `json:"msg"`
		CT     hexStr   `json:"ct"`
		Tag    hexStr   `json:"tag"`
		Result string   `json:"result"`
		Flags  []string `json:"flags"`
	} `json:"tests"`
}

func TestWycheproofAESGCM(t *testing.T) {
	f := load[aeadGroup](t, "aes_gcm_test.json")
	ran, refusedShapes := 0, 0
	for _, g := range f.TestGroups {
		for _, tc := range g.Tests {
			key, iv, aad := unhex(t, string(tc.Key)), unhex(t, string(tc.IV)), unhex(t, string(tc.AAD))
			msg, ct, tag := unhex(t, string(tc.Msg)), unhex(t, string(tc.CT)), unhex(t, string(tc.Tag))
			sealed := append(append([]byte{}, ct...), tag...)
			a, err := NewAEAD(key)
			if g.KeySize != 256 {
				if err == nil {
					t.Fatalf("tc %d: NewAEAD accepted a %d-bit key", tc.TcID, g.KeySize)
				}
				refusedShapes++
				continue
			}
			if err != nil {
				t.Fatalf("tc %d: %v", tc.TcID, err)
			}
			if g.IVSize != 96 || g.TagSize != 128 {
				// This wrapper takes only 96-bit nonces and 128-bit tags: other shapes must be refused.
				if g.IVSize != 96 {
					if _, err := a.Open(nil, iv, sealed, aad); err == nil {
						t.Fatalf("tc %d: Open accepted a %d-bit nonce", tc.TcID, g.IVSize)
					}
					if _, err := a.Seal(nil, iv, msg, aad); err == nil {
						t.Fatalf("tc %d: Seal accepted a %d-bit nonce", tc.TcID, g.IVSize)
					}
				}
				refusedShapes++
				continue
			}
			ran++
			pt, err := a.Open(nil, iv, sealed, aad)
			switch tc.Result {
			case "valid":
				if err != nil || !bytes.Equal(pt, msg) {
					t.Fatalf("tc %d (%v): Open = %x, %v", tc.TcID, tc.Flags, pt, err)
				}
				out, err := a.Seal(nil, iv, msg, aad)
				if err != nil || !bytes.Equal(out, sealed) {
					t.Fatalf("tc %d (%v): Seal = %x, %v", tc.TcID, tc.Flags, out, err)
				}
			case "invalid":
				if !errors.Is(err, ErrOpen) {
					t.Fatalf("tc %d (%v): invalid ciphertext opened (err %v)", tc.TcID, tc.Flags, err)
				}
			default:
				t.Fatalf("tc %d: unexpected result %q", tc.TcID, tc.Result)
			}
		}
	}
	if ran < 50 {
		t.Fatalf("only %d AES-256-GCM vectors ran", ran)
	}
	t.Logf("aes_gcm_test.json: %d vectors checked, %d other key/nonce shapes refused", ran, refusedShapes)
}

type hkdfGroup struct {
	Tests []struct {
		TcID   int      `json:"tcId"`
		IKM    hexStr   `json:"ikm"`
		Salt   hexStr   `json:"salt"`
		Info   hexStr   `json:"info"`
		Size   int      `json:"size"`
		OKM    hexStr   `json:"okm"`
		Result string   `json:"result"`
		Flags  []string `json:"flags"`
	} `json:"tests"`
}

func TestWycheproofHKDF(t *testing.T) {
	f := load[hkdfGroup](t, "hkdf_sha256_test.json")
	ran := 0
	for _, g := range f.TestGroups {
		for _, tc := range g.Tests {
			ran++
			okm, err := HKDF(unhex(t, string(tc.IKM)), unhex(t, string(tc.Salt)), unhex(t, string(tc.Info)), tc.Size)
			switch tc.Result {
			case "valid":
				if err != nil || !bytes.Equal(okm, unhex(t, string(tc.OKM))) {
					t.Fatalf("tc %d (%v): %x, %v", tc.TcID, tc.Flags, okm, err)
				}
			case "invalid":
				if err == nil {
					t.Fatalf("tc %d (%v): accepted", tc.TcID, tc.Flags)
				}
			default:
				t.Fatalf("tc %d: unexpected result %q", tc.TcID, tc.Result)
			}
		}
	}
	if ran != f.NumberOfTests {
		t.Fatalf("ran %d of %d", ran, f.NumberOfTests)
	}
}

type xdhGroup struct {
	Curve string `json:"curve"`
	Tests []struct {
		TcID    int      `json:"tcId"`
		Public  hexStr   `json:"public"`
		Private hexStr   `json:"private"`
		Shared  hexStr   `json:"shared"`
		Result  string   `json:"result"`
		Flags   []string `json:"flags"`
	} `json:"tests"`
}

func TestWycheproofX25519(t *testing.T) {
	f := load[xdhGroup](t, "x25519_test.json")
	ran, lowOrder := 0, 0
	for _, g := range f.TestGroups {
		if g.Curve != "curve25519" {
			t.Fatalf("unexpected curve %q", g.Curve)
		}
		for _, tc := range g.Tests {
			ran++
			priv, err := X25519Private(unhex(t, string(tc.Private)))
			if err != nil {
				t.Fatalf("tc %d: %v", tc.TcID, err)
			}
			ss, err := X25519(priv, unhex(t, string(tc.Public)))
			want := unhex(t, string(tc.Shared))
			switch {
			case slices.Contains(tc.Flags, "ZeroSharedSecret"):
				// RFC 7748 section 6.1: the all-zero output must be refused; the protocol does.
				lowOrder++
				if !errors.Is(err, ErrLowOrder) {
					t.Fatalf("tc %d (%v): all-zero shared secret not refused: %x, %v", tc.TcID, tc.Flags, ss, err)
				}
			case tc.Result == "valid" || tc.Result == "acceptable":
				// Twist points and non-canonical encodings are acceptable: RFC 7748 X25519 takes them.
				if err != nil || !bytes.Equal(ss, want) {
					t.Fatalf("tc %d (%s %v): %x, %v; want %x", tc.TcID, tc.Result, tc.Flags, ss, err, want)
				}
			default:
				if err == nil {
					t.Fatalf("tc %d (%s %v): accepted", tc.TcID, tc.Result, tc.Flags)
				}
			}
		}
	}
	if ran != f.NumberOfTests || lowOrder == 0 {
		t.Fatalf("ran %d of %d (%d low-order)", ran, f.NumberOfTests, lowOrder)
	}
}
