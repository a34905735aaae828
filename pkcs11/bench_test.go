package pkcs11_test

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

// benchKey is one key on the benchmark token, with what the raw baseline needs.
type benchKey struct {
	alg    keystore.Algorithm
	signer keystore.Signer
	priv   p11.ObjectHandle
	mech   uint
}

// BenchmarkSign compares signing through the keystore (Signer.Sign: pooled session, cached handle,
// C_SignInit + C_Sign; P-256 also hashes the message and converts r||s to DER) with raw miekg/pkcs11
// (C_SignInit + C_Sign on one session held by the loop, P-256 over a digest computed in advance), on
// the same token and key in the same run, serially and with b.RunParallel (the raw variant gives every
// goroutine its own session). The "paired" variants alternate one keystore and one raw signature per
// iteration and report both latencies and their ratio, which is robust against load from other
// processes on the machine.
//
//	go test -run '^$' -bench . -benchtime 2s -count 3 ./pkcs11/
func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	ks, err := pkcs11.Open(ctx, softhsmtest.NewToken(b), keystore.OpenOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ks.Close() })
	h := pkcs11.HooksOf(ks)
	msg := make([]byte, 256) // about the size of a handshake transcript or delegation
	digest := sha256.Sum256(msg)

	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: alg, Label: "bench-" + string(alg)})
		if err != nil {
			b.Fatal(err)
		}
		bk := benchKey{alg: alg, mech: pkcs11.MechEdDSA}
		if alg == keystore.P256 {
			bk.mech = pkcs11.MechECDSA
		}
		if bk.signer, err = ks.Signer(ctx, k.URI); err != nil {
			b.Fatal(err)
		}
		if bk.priv, err = h.PrivateHandle(ctx, k.URI); err != nil {
			b.Fatal(err)
		}
		rawInput := msg
		if alg == keystore.P256 {
			rawInput = digest[:]
		}
		mech := []*p11.Mechanism{p11.NewMechanism(bk.mech, nil)}
		rawSign := func(c *p11.Ctx, sh p11.SessionHandle) {
			if err := c.SignInit(sh, mech, bk.priv); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Sign(sh, rawInput); err != nil {
				b.Fatal(err)
			}
		}
		withSession := func(f func(c *p11.Ctx, sh p11.SessionHandle)) {
			c, slot := h.Ctx()
			sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = c.CloseSession(sh) }()
			f(c, sh)
		}

		b.Run(string(alg)+"/keystore", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bk.signer.Sign(ctx, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(string(alg)+"/raw-miekg", func(b *testing.B) {
			b.ReportAllocs()
			withSession(func(c *p11.Ctx, sh p11.SessionHandle) {
				for b.Loop() {
					rawSign(c, sh)
				}
			})
		})
		b.Run(string(alg)+"/keystore-parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bk.signer.Sign(ctx, msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(string(alg)+"/raw-miekg-parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				withSession(func(c *p11.Ctx, sh p11.SessionHandle) {
					for pb.Next() {
						rawSign(c, sh)
					}
				})
			})
		})
		b.Run(string(alg)+"/paired", func(b *testing.B) {
			var p pairs
			withSession(func(c *p11.Ctx, sh p11.SessionHandle) {
				for b.Loop() {
					t0 := time.Now()
					rawSign(c, sh)
					t1 := time.Now()
					if _, err := bk.signer.Sign(ctx, msg); err != nil {
						b.Fatal(err)
					}
					p.add(time.Since(t1), t1.Sub(t0))
				}
			})
			p.report(b)
		})
		b.Run(string(alg)+"/paired-parallel", func(b *testing.B) {
			var all pairs
			var mu sync.Mutex
			b.RunParallel(func(pb *testing.PB) {
				var p pairs
				withSession(func(c *p11.Ctx, sh p11.SessionHandle) {
					for pb.Next() {
						t0 := time.Now()
						rawSign(c, sh)
						t1 := time.Now()
						if _, err := bk.signer.Sign(ctx, msg); err != nil {
							b.Error(err)
							return
						}
						p.add(time.Since(t1), t1.Sub(t0))
					}
				})
				mu.Lock()
				all.ks = append(all.ks, p.ks...)
				all.raw = append(all.raw, p.raw...)
				mu.Unlock()
			})
			all.report(b)
		})
	}
}

// pairs holds the latencies of the keystore and raw signatures of a paired benchmark.
type pairs struct{ ks, raw []time.Duration }

func (p *pairs) add(ks, raw time.Duration) {
	p.ks = append(p.ks, ks)
	p.raw = append(p.raw, raw)
}

// report gives the median latency of each kind (medians, because other processes on the machine add
// long outliers to single signatures) and the keystore's speed as a percentage of raw: 100 is as fast,
// more is faster.
func (p *pairs) report(b *testing.B) {
	if len(p.ks) == 0 {
		return
	}
	ks, raw := median(p.ks), median(p.raw)
	b.ReportMetric(float64(ks.Nanoseconds()), "keystore-ns/sig")
	b.ReportMetric(float64(raw.Nanoseconds()), "raw-ns/sig")
	b.ReportMetric(100*float64(raw)/float64(ks), "keystore-%-of-raw")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
