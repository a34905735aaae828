package session

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/keystore"
)

// Benchmarks of the protocol: `go test -run '^$' -bench . -benchtime 1s ./agent/...`; the figures and the
// ratios go to docs/benchmarks.md ("Protocol: handshake and envelope").

// BenchmarkHandshake runs complete handshakes (both sides in this process, so each op costs both
// sides' CPU) and reports handshakes per second and the p99 latency.
func BenchmarkHandshake(b *testing.B) {
	for _, c := range []struct {
		name   string
		hybrid bool
		tcp    bool
		alg    keystore.Algorithm
	}{
		{"x25519/pipe", false, false, keystore.Ed25519},
		{"x25519/tcp", false, true, keystore.Ed25519},
		{"x25519+mlkem768/tcp", true, true, keystore.Ed25519},
	} {
		b.Run(c.name, func(b *testing.B) {
			a, r := newAgent(b, withAlg(c.alg)), newAgent(b)
			a.cfg.Hybrid = c.hybrid
			for _, x := range []*agent{a, r} {
				x.cfg.Replay = replay.New(replay.Config{})
			}
			// Warm the peer caches (the first contact sends and stores key event logs).
			sa, sb := mustConnect(b, a, r)
			sa.Close()
			sb.Close()
			lat := make([]time.Duration, 0, 1024)
			b.ResetTimer()
			for b.Loop() {
				var ca, cb FrameConn
				if c.tcp {
					b.StopTimer()
					ca, cb = tcpPair(b)
					b.StartTimer()
				} else {
					ca, cb = pipePair()
				}
				start := time.Now()
				rc := make(chan result, 1)
				go func() { s, err := Accept(bg, cb, r.cfg); rc <- result{s, err} }()
				sa, err := Initiate(bg, ca, a.cfg, r.ID())
				res := <-rc
				if err != nil || res.err != nil {
					b.Fatal(err, res.err)
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				sa.Close()
				res.s.Close()
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// pair returns the two halves of one established session's crypto, without a connection: the sender's
// direction and keys, and a receiving Session value that can open what the sender seals.
func benchPair(b *testing.B) (*Session, *Session) {
	b.Helper()
	a, r := newAgent(b), newAgent(b)
	big := replay.New(replay.Config{Capacity: 1 << 30, PerSender: 1 << 30})
	a.cfg.Replay, r.cfg.Replay = big, big
	sa, sb := mustConnect(b, a, r)
	return sa, sb
}

func payload(n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

// seal seals and signs one session envelope the way Send does, without writing it.
func (s *Session) sealFrame(p []byte) ([]byte, error) {
	nonce, err := s.send.take()
	if err != nil {
		return nil, err
	}
	h := envelope.NewHeader(s.localID, s.peer.ID.String(), envelope.TaskRequest, s.cfg.Clock())
	e, err := envelope.SealSession(bg, h, p, s.send.aead, nonce, s.keys.Signer())
	if err != nil {
		return nil, err
	}
	return append([]byte{handshake.FrameEnvelope}, e.EncodeBinary()...), nil
}

var sizes = []int{1 << 10, 64 << 10}

func BenchmarkEnvelopeSealSign(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			sa, _ := benchPair(b)
			p := payload(n)
			b.SetBytes(int64(n))
			for b.Loop() {
				if _, err := sa.sealFrame(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEnvelopeVerifyOpen is the receiving path of a session envelope: decode, header checks,
// counter, signature, replay cache, decryption.
func BenchmarkEnvelopeVerifyOpen(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			sa, sb := benchPair(b)
			p := payload(n)
			b.SetBytes(int64(n))
			var frames [][]byte
			for b.Loop() {
				if len(frames) == 0 {
					b.StopTimer()
					frames = sealBatch(b, sa, p, 256)
					b.StartTimer()
				}
				if _, err := sb.openEnvelope(frames[0][1:]); err != nil {
					b.Fatal(err)
				}
				frames = frames[1:]
			}
		})
	}
}

func sealBatch(b *testing.B, s *Session, p []byte, n int) [][]byte {
	out := make([][]byte, 0, n)
	for range n {
		f, err := s.sealFrame(p)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// BenchmarkVerifyOpenVsEd25519 measures the goal "envelope verify+open reaches at least 80% of the rate
// of a bare Ed25519 verification": each op opens one envelope and, interleaved so that both see the same
// machine load, verifies a bare Ed25519 signature over a message of the same size. It reports the median
// time of each (medians shrug off preemption on a shared machine) and the rate ratio (envelope rate /
// bare verify rate) from the medians and from the means.
func BenchmarkVerifyOpenVsEd25519(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			sa, sb := benchPair(b)
			p := payload(n)
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			sig := ed25519.Sign(priv, p)
			var frames [][]byte
			var env, raw []time.Duration
			for b.Loop() {
				if len(frames) == 0 {
					b.StopTimer()
					frames = sealBatch(b, sa, p, 256)
					b.StartTimer()
				}
				t0 := time.Now()
				if _, err := sb.openEnvelope(frames[0][1:]); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if !ed25519.Verify(pub, p, sig) {
					b.Fatal("verify")
				}
				raw = append(raw, time.Since(t1))
				env = append(env, t1.Sub(t0))
				frames = frames[1:]
			}
			b.StopTimer()
			sum := func(d []time.Duration) (t time.Duration) {
				for _, x := range d {
					t += x
				}
				return t
			}
			meanRatio := sum(raw).Seconds() / sum(env).Seconds()
			slices.Sort(env)
			slices.Sort(raw)
			me, mr := env[len(env)/2], raw[len(raw)/2]
			b.ReportMetric(float64(me.Nanoseconds())/1000, "open-p50-µs")
			b.ReportMetric(float64(mr.Nanoseconds())/1000, "ed25519-verify-p50-µs")
			b.ReportMetric(mr.Seconds()/me.Seconds(), "rate-ratio-p50")
			b.ReportMetric(meanRatio, "rate-ratio-mean")
		})
	}
}

// Baselines: the raw primitives at the same sizes.

func BenchmarkRawAES256GCMSeal(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			a, _ := suite.NewAEAD(payload(32))
			p, nonce, out := payload(n), make([]byte, 12), make([]byte, 0, n+16)
			b.SetBytes(int64(n))
			for b.Loop() {
				out, _ = a.Seal(out[:0], nonce, p, nil)
			}
		})
	}
}

func BenchmarkRawAES256GCMOpen(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			a, _ := suite.NewAEAD(payload(32))
			nonce := make([]byte, 12)
			ct, _ := a.Seal(nil, nonce, payload(n), nil)
			out := make([]byte, 0, n)
			b.SetBytes(int64(n))
			for b.Loop() {
				var err error
				if out, err = a.Open(out[:0], nonce, ct, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRawEd25519Sign(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			_, priv, _ := ed25519.GenerateKey(rand.Reader)
			p := payload(n)
			b.SetBytes(int64(n))
			for b.Loop() {
				ed25519.Sign(priv, p)
			}
		})
	}
}

func BenchmarkRawEd25519Verify(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			p := payload(n)
			sig := ed25519.Sign(priv, p)
			b.SetBytes(int64(n))
			for b.Loop() {
				if !ed25519.Verify(pub, p, sig) {
					b.Fatal("verify")
				}
			}
		})
	}
}
