package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	lhost "github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	tcpt "github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Agent-level benchmarks (docs/benchmarks.md, "Transports"):
//
//	go test -run '^$' -bench . -benchtime 2s ./test/bench
//
// BenchmarkMessages and BenchmarkTasks report MB/s of task input (the bytes a submitter hands to its agent),
// so that they compare directly with the raw baselines' MB/s of frame payload (BenchmarkRaw).

var sizes = []struct {
	name string
	n    int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}}

func randomBytes(tb testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

func (a *agent) setSink(f func(string, *session.Message)) {
	a.mu.Lock()
	a.sink = f
	a.mu.Unlock()
}

// BenchmarkMessages streams task_request messages from one agent to another over each transport: the
// submitter encodes a task request (a fresh task ID and the input), its session seals and signs the
// envelope and writes it through its transport plugin; the network; the executor's plugin; the executor's
// session verifies, checks for replay and opens it, and the executor decodes the task request. One
// direction, as many in flight as the plugins' flow control allows. No store, no handler: BenchmarkTasks
// measures complete tasks.
func BenchmarkMessages(b *testing.B) {
	for _, tn := range transportNames {
		for _, sb := range sandboxModes {
			b.Run(tn+"/"+sb.name, func(b *testing.B) { benchMessages(b, tn, sb.mode) })
		}
	}
}

func benchMessages(b *testing.B, tn string, mode sandbox.Mode) {
	x, y := newAgentSandbox(b, "executor", tn, mode), newAgentSandbox(b, "submitter", tn, mode)
	_, sy := connect(b, x, y, tn)
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			input := randomBytes(b, sz.n)
			ctx := context.Background()
			var got atomic.Int64
			var bad atomic.Value
			done := make(chan struct{})
			target := int64(b.N)
			x.setSink(func(_ string, m *session.Message) {
				req, err := tasks.DecodeRequest(m.Payload)
				if err != nil || len(req.Input) != sz.n || m.Envelope.Header.MessageType != envelope.TaskRequest {
					bad.Store(err)
				}
				if got.Add(1) == target {
					close(done)
				}
			})
			defer x.setSink(nil)
			meter := newCPUMeter(map[string]int{"bench": os.Getpid(), "plugin-tx": y.tr.PID(), "plugin-rx": x.tr.PID()})
			b.SetBytes(int64(sz.n))
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				req := &tasks.Request{TaskID: tasks.NewTaskID(), Handler: "sha256", Input: input}
				if _, err := sy.Send(ctx, envelope.TaskRequest, req.Encode()); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				b.Fatalf("%d of %d messages arrived", got.Load(), b.N)
			}
			el := time.Since(start)
			b.StopTimer()
			if v := bad.Load(); v != nil {
				b.Fatalf("a message did not decode as the task request sent: %v", v)
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			meter.report(b, b.N)
		})
	}
}

// BenchmarkTasks runs complete tasks (handler sha256) from one agent to another over each transport, 64
// in flight: Submit records the task (bbolt, fsync), the request is sent, the executor records it (fsync)
// and acknowledges, runs the handler, records and signs the result (evidence envelope), sends it; the
// submitter verifies the evidence against the executor's delegation and key event log, stores it (fsync)
// and acknowledges; the executor forgets it (fsync).
func BenchmarkTasks(b *testing.B) {
	for _, tn := range transportNames {
		b.Run(tn, func(b *testing.B) {
			x, y := newAgent(b, "executor", tn), newAgent(b, "submitter", tn)
			connect(b, x, y, tn)
			for _, sz := range sizes {
				b.Run(sz.name, func(b *testing.B) {
					input := randomBytes(b, sz.n)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					defer cancel()
					meter := newCPUMeter(map[string]int{"bench": os.Getpid(), "plugin-tx": y.tr.PID(), "plugin-rx": x.tr.PID()})
					b.SetBytes(int64(sz.n))
					b.ResetTimer()
					start := time.Now()
					var next atomic.Int64
					var wg sync.WaitGroup
					errs := make(chan error, 64)
					for w := 0; w < 64; w++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for next.Add(1) <= int64(b.N) {
								o, err := y.engine.Submit(ctx, x.id.String(), "sha256", input)
								if err == nil {
									o, err = y.engine.Wait(ctx, o.TaskID)
								}
								if err == nil && (o.State != tasks.OutDone || o.Status != tasks.ResultOK) {
									err = errTask(o)
								}
								if err != nil {
									errs <- err
									return
								}
							}
						}()
					}
					wg.Wait()
					el := time.Since(start)
					b.StopTimer()
					close(errs)
					if err := <-errs; err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(b.N)/el.Seconds(), "tasks/s")
					meter.report(b, b.N)
				})
			}
		})
	}
}

type taskErr struct{ o *tasks.Outbound }

func (e taskErr) Error() string {
	return "task " + e.o.TaskID + " ended " + e.o.State + " " + e.o.Status + " " + e.o.ErrorCode + " " + e.o.Error
}

func errTask(o *tasks.Outbound) error { return taskErr{o} }

// BenchmarkConnect measures full connects per transport: the dialer's plugin connects (TLS 1.3 / wss /
// libp2p Noise), both hosts verify the peer's binding (operational-key signature, delegation, key event
// log), then the agent handshake runs (ephemeral X25519, signatures, delegation checks, key confirmation).
// Peer caches are warm after the first connect. Sessions are closed outside the timed part.
func BenchmarkConnect(b *testing.B) {
	for _, tn := range transportNames {
		for _, sb := range sandboxModes {
			b.Run(tn+"/"+sb.name, func(b *testing.B) { benchConnect(b, tn, sb.mode) })
		}
	}
}

func benchConnect(b *testing.B, tn string, mode sandbox.Mode) {
	x, y := newAgentSandbox(b, "listener", tn, mode), newAgentSandbox(b, "dialer", tn, mode)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	addr := "127.0.0.1:0"
	if tn == "libp2p" {
		addr = "/ip4/127.0.0.1/tcp/0"
	}
	l, err := x.tr.Listen(ctx, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	sa, sb := handshake(b, ctx, x, y, l) // warm the peer caches
	sa.Close()
	sb.Close()
	meter := newCPUMeter(map[string]int{"bench": os.Getpid(), "plugin-dialer": y.tr.PID(), "plugin-listener": x.tr.PID()})
	b.ResetTimer()
	var busy time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		sa, sb := handshake(b, ctx, x, y, l)
		busy += time.Since(t0)
		b.StopTimer()
		sa.Close()
		sb.Close()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/busy.Seconds(), "connects/s")
	meter.report(b, b.N)
}

// BenchmarkRaw is the baseline of the same run: one-way streaming of frames of each size over one TLS
// 1.3 connection on loopback TCP (mutual, Ed25519 certificates) and over one raw /custos/1.0.0 stream
// between two go-libp2p hosts configured like the plugin's (TCP, Noise, yamux), both ends in this process,
// no plugins and no agent protocol.
func BenchmarkRaw(b *testing.B) {
	b.Run("tls13", func(b *testing.B) {
		w, r := tlsPair(b)
		for _, sz := range sizes {
			b.Run(sz.name, func(b *testing.B) { stream(b, w, r, sz.n) })
		}
	})
	b.Run("libp2p", func(b *testing.B) {
		w, r := libp2pPair(b)
		for _, sz := range sizes {
			b.Run(sz.name, func(b *testing.B) { stream(b, w, r, sz.n) })
		}
	})
}

func stream(b *testing.B, w, r *framer, size int) {
	frame := randomBytes(b, size)
	ctx := context.Background()
	b.SetBytes(int64(size))
	errc := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := 0; i < b.N; i++ {
			if err := w.WriteFrame(ctx, frame); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < b.N; i++ {
		f, err := r.ReadFrame(ctx)
		if err != nil || len(f) != size {
			b.Fatalf("read %d: %d bytes, %v", i, len(f), err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}

func tlsPair(b *testing.B) (*framer, *framer) {
	cert := func() tls.Certificate {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			b.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	}
	srv := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert()}, ClientAuth: tls.RequireAnyClientCert}
	cli := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert()}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).HandshakeContext(context.Background())
		}
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		b.Fatal(err)
	}
	sc, ok := <-accepted
	if !ok {
		b.Fatal("server handshake failed")
	}
	b.Cleanup(func() { cc.Close(); sc.Close() })
	return newFramer(cc), newFramer(sc)
}

func libp2pPeer(b *testing.B) lhost.Host {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	sk, err := crypto.UnmarshalEd25519PrivateKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	h, err := golibp2p.New(golibp2p.Identity(sk), golibp2p.NoListenAddrs, golibp2p.Transport(tcpt.NewTCPTransport),
		golibp2p.Muxer(yamux.ID, yamux.DefaultTransport), golibp2p.DisableRelay(), golibp2p.Security(noise.ID, noise.New))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close() })
	return h
}

func libp2pPair(b *testing.B) (*framer, *framer) {
	srv, cli := libp2pPeer(b), libp2pPeer(b)
	if err := srv.Network().Listen(ma.StringCast("/ip4/127.0.0.1/tcp/0")); err != nil {
		b.Fatal(err)
	}
	streams := make(chan network.Stream, 1)
	srv.SetStreamHandler("/custos/1.0.0", func(s network.Stream) { streams <- s })
	ctx := context.Background()
	if err := cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}); err != nil {
		b.Fatal(err)
	}
	cs, err := cli.NewStream(ctx, srv.ID(), "/custos/1.0.0")
	if err != nil {
		b.Fatal(err)
	}
	w := newFramer(cs)
	if err := w.WriteFrame(ctx, []byte("open")); err != nil { // the handler runs once data arrives
		b.Fatal(err)
	}
	ss := <-streams
	r := newFramer(ss)
	if _, err := r.ReadFrame(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cs.Close(); ss.Close() })
	return w, r
}

// BenchmarkPaired is the headline comparison, robust to the load of a shared machine: each op is one
// round of four back-to-back measurements on the same 2 cores, each streaming the same number of frames
// of the same size one way: raw TLS 1.3 (in process), frames through the TCP plugins alone (host →
// plugin → TLS 1.3 → plugin → host, no agent protocol), task_request messages between two agents over
// the TCP plugins (as BenchmarkMessages, the default configuration: session envelopes authenticated by
// the session AEAD, ADR 0032), and the same between two agents whose sender signs every session
// envelope (session.sign_envelopes: true). It reports the median of each over the rounds and the medians
// of the per-round ratios.
func BenchmarkPaired(b *testing.B) {
	x, y := newAgent(b, "executor", "tcp"), newAgent(b, "submitter", "tcp")
	_, sy := connect(b, x, y, "tcp")
	xs, ys := newAgent(b, "executor-signed", "tcp"), newAgent(b, "submitter-signed", "tcp")
	ys.signEnvelopes = true
	_, sys := connect(b, xs, ys, "tcp")
	// A second connection between the same plugins, used without the agent protocol.
	ctx := context.Background()
	l, err := x.tr.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	pw, err := y.tr.Dial(ctx, l.Addrs()[0], x.id.String())
	if err != nil {
		b.Fatal(err)
	}
	defer pw.Close()
	pr, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer pr.Close()
	tw, tr := tlsPair(b)
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			frames := 300
			if sz.n < 4096 {
				frames = 3000
			}
			frame := randomBytes(b, sz.n)
			var raw, plug, agt, sgn, rPlug, rAgt, rSgn []float64
			mbps := func(d time.Duration) float64 { return float64(frames*sz.n) / d.Seconds() / 1e6 }
			for i := 0; i < b.N; i++ {
				r := timeStream(b, frames, func() error { return tw.WriteFrame(ctx, frame) }, func() error { _, err := tr.ReadFrame(ctx); return err })
				p := timeStream(b, frames, func() error { return pw.WriteFrame(ctx, frame) }, func() error { _, err := pr.ReadFrame(ctx); return err })
				a := timeMessages(b, x, sy, frames, frame, false)
				s := timeMessages(b, xs, sys, frames, frame, true)
				raw, plug, agt, sgn = append(raw, mbps(r)), append(plug, mbps(p)), append(agt, mbps(a)), append(sgn, mbps(s))
				rPlug, rAgt, rSgn = append(rPlug, mbps(p)/mbps(r)), append(rAgt, mbps(a)/mbps(r)), append(rSgn, mbps(s)/mbps(r))
			}
			b.ReportMetric(median(raw), "raw-tls-MB/s")
			b.ReportMetric(median(plug), "plugin-MB/s")
			b.ReportMetric(median(agt), "agent-MB/s")
			b.ReportMetric(median(sgn), "agent-signed-MB/s")
			b.ReportMetric(median(rPlug), "plugin/raw")
			b.ReportMetric(median(rAgt), "agent/raw")
			b.ReportMetric(median(rSgn), "agent-signed/raw")
		})
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// timeStream writes n frames from one goroutine while reading them in this one and returns the time.
func timeStream(b *testing.B, n int, write, read func() error) time.Duration {
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		for i := 0; i < n; i++ {
			if err := write(); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < n; i++ {
		if err := read(); err != nil {
			b.Fatalf("read %d: %v", i, err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// timeMessages sends n task_request messages with input from the session s to agent x and returns the
// time until x decoded the last; each must arrive signed or unsigned as signed says.
func timeMessages(b *testing.B, x *agent, s *session.Session, n int, input []byte, signed bool) time.Duration {
	var got atomic.Int64
	done := make(chan struct{})
	x.setSink(func(_ string, m *session.Message) {
		if _, err := tasks.DecodeRequest(m.Payload); err != nil {
			b.Error(err)
		}
		if m.Envelope.Signed() != signed {
			b.Errorf("a message arrived with signed=%v, want %v", m.Envelope.Signed(), signed)
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	defer x.setSink(nil)
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < n; i++ {
		req := &tasks.Request{TaskID: tasks.NewTaskID(), Handler: "sha256", Input: input}
		if _, err := s.Send(ctx, envelope.TaskRequest, req.Encode()); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("%d of %d messages arrived", got.Load(), n)
	}
	return time.Since(start)
}
