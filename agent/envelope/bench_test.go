package envelope

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/suite"
)

// The two encodings of one envelope (ADR 0005): what decoding costs on the receiving path.

func benchEnvelope(b *testing.B, n int) *Envelope {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(b, clock, suite.KEMX25519), newParty(b, clock, suite.KEMX25519)
	p := make([]byte, n)
	rand.Read(p)
	e, err := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), p, sessionKey(b), make([]byte, 12), alice.k.Signer())
	if err != nil {
		b.Fatal(err)
	}
	return e
}

func BenchmarkDecode(b *testing.B) {
	for _, n := range []int{1 << 10, 64 << 10} {
		e := benchEnvelope(b, n)
		bin, js := e.EncodeBinary(), e.EncodeJSON()
		b.Run(fmt.Sprintf("binary/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(len(bin)))
			for b.Loop() {
				if _, err := DecodeBinary(bin); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("json/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(len(js)))
			for b.Loop() {
				if _, err := DecodeJSON(js); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHash compares hashing the ciphertext with SHA-256 (what signing a digest of it would cost)
// with SHA-512 (what Ed25519 does internally over the signed bytes).
func BenchmarkHash(b *testing.B) {
	for _, n := range []int{1 << 10, 64 << 10} {
		p := make([]byte, n)
		b.Run(fmt.Sprintf("sha256/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				sha256.Sum256(p)
			}
		})
		b.Run(fmt.Sprintf("sha512/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				sha512.Sum512(p)
			}
		})
	}
}
