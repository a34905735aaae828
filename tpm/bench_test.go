package tpm

import (
	"context"
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// benchSetup starts swtpm, makes a key, and returns the keystore's signer and a raw signer: the same key
// loaded once more, signed with TPM2_Sign directly on the keystore's own transport (no hashing, no DER,
// no cache check).
func benchSetup(b *testing.B) (keystore.Signer, func(n int)) {
	sim := swtpmtest.Start(b)
	ks := openKS(b, sim, blobDir(b), "")
	k := mustGenerate(b, ks, "bench")
	s := mustSigner(b, ks, k.URI)
	blob, err := readBlob(ks.dir, "bench")
	if err != nil {
		b.Fatal(err)
	}
	var raw tpm2.NamedHandle
	ctx := context.Background()
	err = ks.dev.do(ctx, func(c *conn) error {
		srk, err := ks.createSRK(c)
		if err != nil {
			return err
		}
		defer ks.flush(c, srk.ObjectHandle, "srk")
		priv, _ := tpm2.Unmarshal[tpm2.TPM2BPrivate](blob.Private)
		pub, _ := tpm2.Unmarshal[tpm2.TPM2BPublic](blob.Public)
		lr, err := tpm2.Load{ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, InPrivate: *priv, InPublic: *pub}.Execute(c)
		if err != nil {
			return err
		}
		raw = tpm2.NamedHandle{Handle: lr.ObjectHandle, Name: lr.Name}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = ks.dev.do(ctx, func(c *conn) error { ks.flush(c, raw.Handle, "raw"); return nil })
	})
	digest := sha256.Sum256([]byte("benchmark message"))
	rawSign := func(n int) {
		err := ks.dev.do(ctx, func(c *conn) error {
			for i := 0; i < n; i++ {
				if _, err := (tpm2.Sign{
					KeyHandle:  raw,
					Digest:     tpm2.TPM2BDigest{Buffer: digest[:]},
					InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
					Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
				}).Execute(c); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return s, rawSign
}

// BenchmarkSign compares signing through the keystore with raw TPM2_Sign against the same swtpm, in the
// same run. Blocks of each alternate so that load from other processes hits both alike; the metrics are
// the medians over blocks (the machine is shared, and one descheduled block would skew a mean), and ratio
// is raw time per signature divided by keystore time per signature (keystore speed as a share of raw).
//
//	go test -run '^$' -bench 'Sign$' -benchtime 3000x -count 3 ./tpm/
func BenchmarkSign(b *testing.B) {
	s, rawSign := benchSetup(b)
	msg := []byte("benchmark message")
	ctx := context.Background()
	const block = 10
	var ksBlocks, rawBlocks []float64
	b.ResetTimer()
	for done := 0; done < b.N; done += 2 * block {
		t0 := time.Now()
		for i := 0; i < block; i++ {
			if _, err := s.Sign(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		rawSign(block)
		t2 := time.Now()
		ksBlocks = append(ksBlocks, float64(t1.Sub(t0).Nanoseconds())/block)
		rawBlocks = append(rawBlocks, float64(t2.Sub(t1).Nanoseconds())/block)
	}
	b.StopTimer()
	ksPer, rawPer := median(ksBlocks), median(rawBlocks)
	b.ReportMetric(ksPer, "keystore-ns/sign")
	b.ReportMetric(rawPer, "raw-ns/sign")
	b.ReportMetric(1e9/ksPer, "keystore-sig/s")
	b.ReportMetric(1e9/rawPer, "raw-sig/s")
	b.ReportMetric(rawPer/ksPer, "ratio")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkSignKeystore is the keystore path alone.
func BenchmarkSignKeystore(b *testing.B) {
	s, _ := benchSetup(b)
	msg := []byte("benchmark message")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Sign(context.Background(), msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignRaw is TPM2_Sign alone on the same transport.
func BenchmarkSignRaw(b *testing.B) {
	_, rawSign := benchSetup(b)
	b.ResetTimer()
	rawSign(b.N)
}

// BenchmarkSignPassword signs with a key that has a password: the password travels in an HMAC session
// salted to the storage root key (issue 12.7), which costs a TPM2_ContextLoad of the SRK (created once),
// the salted TPM2_StartAuthSession and a flush on top of TPM2_Sign.
//
//	go test -run '^$' -bench 'SignPassword$' -benchtime 1000x ./tpm/
func BenchmarkSignPassword(b *testing.B) {
	sim := swtpmtest.Start(b)
	b.Setenv("CUSTOS_BENCH_KEYPW", "bench password")
	ks := openKS(b, sim, blobDir(b), "&key-auth-source=env:CUSTOS_BENCH_KEYPW")
	s := mustSigner(b, ks, mustGenerate(b, ks, "bench-pw").URI)
	msg := []byte("benchmark message")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Sign(context.Background(), msg); err != nil {
			b.Fatal(err)
		}
	}
}
