package software

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// BenchmarkSign compares signing through the software backend (a decrypted key behind the Keystore and
// Signer interfaces) with the standard library in memory, in the same run.
//
//	go test -run '^$' -bench 'Sign|Unlock' -benchtime 1s ./keystore/software/
func BenchmarkSign(b *testing.B) {
	msg := make([]byte, 256)
	ctx := context.Background()
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		b.Run(string(alg)+"/software", func(b *testing.B) {
			_, uri := benchDir(b)
			ks, err := Open(ctx, uri, keystore.OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ks.Close()
			k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: alg, Label: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			// A fresh keystore, so the signer comes from decrypting the file.
			ks2, err := Open(ctx, uri, keystore.OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ks2.Close()
			s, err := ks2.Signer(ctx, k.URI)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Sign(ctx, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(alg)+"/stdlib", func(b *testing.B) {
			b.ReportAllocs()
			switch alg {
			case keystore.Ed25519:
				_, priv, _ := ed25519.GenerateKey(rand.Reader)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					_ = ed25519.Sign(priv, msg)
				}
			case keystore.P256:
				priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					d := sha256.Sum256(msg)
					if _, err := ecdsa.SignASN1(rand.Reader, priv, d[:]); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkUnlock is the cost of loading a key from its file (scrypt, decrypt, parse, check): paid once
// per key per process, at the default work factor and at the test one.
func BenchmarkUnlock(b *testing.B) {
	ctx := context.Background()
	for _, wf := range []int{DefaultWorkFactor, MinWorkFactor} {
		b.Run(fmt.Sprintf("work-factor=%d", wf), func(b *testing.B) {
			dir, uri := benchDir(b)
			uri = encodeURI(dir, mustSource(b, uri), wf)
			ks, err := Open(ctx, uri, keystore.OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "unlock"})
			_ = ks.Close()
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ks, err := Open(ctx, uri, keystore.OpenOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ks.Signer(ctx, k.URI); err != nil {
					b.Fatal(err)
				}
				_ = ks.Close()
			}
		})
	}
}

func benchDir(b *testing.B) (string, string) {
	b.Helper()
	root := b.TempDir()
	dir := root + "/keys"
	pf := root + "/pass"
	if err := os.WriteFile(pf, []byte("benchmark passphrase\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	return dir, encodeURI(dir, "file:"+pf, testWorkFactor)
}

func mustSource(b *testing.B, uri string) string {
	s, err := PassphraseSource(uri)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkSignInterleaved signs alternately through the software backend and with the standard library,
// timing each call, so that both see the same machine load (the figures in docs/benchmarks.md).
//
//	go test -run '^$' -bench SignInterleaved -benchtime 2s ./keystore/software/
func BenchmarkSignInterleaved(b *testing.B) {
	msg := make([]byte, 256)
	ctx := context.Background()
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		b.Run(string(alg), func(b *testing.B) {
			_, uri := benchDir(b)
			ks, err := Open(ctx, uri, keystore.OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ks.Close()
			k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: alg, Label: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			ks2, err := Open(ctx, uri, keystore.OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer ks2.Close()
			s, err := ks2.Signer(ctx, k.URI)
			if err != nil {
				b.Fatal(err)
			}
			_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
			ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			stdlib := func() {
				if alg == keystore.Ed25519 {
					_ = ed25519.Sign(edPriv, msg)
					return
				}
				d := sha256.Sum256(msg)
				if _, err := ecdsa.SignASN1(rand.Reader, ecPriv, d[:]); err != nil {
					b.Fatal(err)
				}
			}
			var sw, std time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := s.Sign(ctx, msg); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				stdlib()
				t2 := time.Now()
				sw += t1.Sub(t0)
				std += t2.Sub(t1)
			}
			b.ReportMetric(float64(sw.Nanoseconds())/float64(b.N), "software-ns/sig")
			b.ReportMetric(float64(std.Nanoseconds())/float64(b.N), "stdlib-ns/sig")
			b.ReportMetric(float64(sw)/float64(std), "software/stdlib")
		})
	}
}
