package session

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// expect checks that err carries code and (when given) a phrase of its sentence.
func expect(t *testing.T, who string, err error, code reason.Code, phrase string) {
	t.Helper()
	if !errors.Is(err, code) || reason.Of(err) != code {
		t.Fatalf("%s: got %v (code %q), want %s", who, err, reason.Of(err), code)
	}
	if phrase != "" && !strings.Contains(err.Error(), phrase) {
		t.Fatalf("%s: %v does not say %q", who, err, phrase)
	}
}

// expectAlert checks that the other side was told code.
func expectAlert(t *testing.T, who string, err error, code reason.Code) {
	t.Helper()
	expect(t, who, err, reason.PeerAlert, string(code))
}

func flipLast(f []byte) []byte {
	g := bytes.Clone(f)
	g[len(g)-3] ^= 0x40
	return g
}

// TestHandshakeRefusals: one case per failure reason of the handshake, each asserting the reason code
// on the side that detects it (and the alert the other side receives).
func TestHandshakeRefusals(t *testing.T) {
	type outcome struct{ errA, errB error }
	cases := []struct {
		name  string
		run   func(t *testing.T) outcome
		check func(t *testing.T, o outcome)
	}{
		{"bad challenge signature", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 1 && n == 0 {
					return flipLast(f) // inside the signature field (the last field)
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.BadSignature, "challenge signature")
			expectAlert(t, "responder", o.errB, reason.BadSignature)
		}},
		{"bad response signature", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 1 {
					return flipLast(f)
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.BadSignature, "response signature")
			expectAlert(t, "initiator", o.errA, reason.BadSignature)
		}},
		{"wrong recipient", func(t *testing.T) outcome {
			a, b, c := newAgent(t), newAgent(t), newAgent(t)
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, c.ID()) // a means to reach c, reaches b
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.WrongRecipient, "the initiator wants")
			expectAlert(t, "initiator", o.errA, reason.WrongRecipient)
		}},
		{"responder other than the one dialled (it ignores responder_id)", func(t *testing.T) outcome {
			a, b, c := newAgent(t), newAgent(t), newAgent(t)
			b.cfg.testAnyRecipient = true // b answers a hello meant for c, with its own valid signature
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, c.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.WrongRecipient, "dialled")
			expectAlert(t, "responder", o.errB, reason.WrongRecipient)
		}},
		{"changed transcript hash in the response", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 1 {
					r, err := handshake.DecodeResponse(f)
					if err != nil {
						t.Error(err)
						return f
					}
					r.TranscriptHash[0] ^= 1
					return r.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.TranscriptMismatch, "different hello or challenge")
			expectAlert(t, "initiator", o.errA, reason.TranscriptMismatch)
		}},
		{"delegation expired", func(t *testing.T) outcome {
			late := agenttest.NewClock(time.Now().Add(-2 * time.Hour))
			a, b := newAgent(t, withMgrClock(late.Now)), newAgent(t)
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.DelegationExpired, "expired at")
			expectAlert(t, "initiator", o.errA, reason.DelegationExpired)
		}},
		{"delegation not yet valid", func(t *testing.T) outcome {
			early := agenttest.NewClock(time.Now().Add(2 * time.Hour))
			a, b := newAgent(t), newAgent(t, withMgrClock(early.Now))
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.DelegationNotYetValid, "valid from")
			expectAlert(t, "responder", o.errB, reason.DelegationNotYetValid)
		}},
		{"delegation not signed by the current key", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			// a rotates its identity but keeps presenting a delegation signed by the old key.
			a.id.Rotate(t)
			l := identity.Log{Events: append([]identity.Event{}, a.id.Log.Events...)}
			a.setLog(&l)
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.DelegationWrongKey, "generation 0")
			expectAlert(t, "initiator", o.errA, reason.DelegationWrongKey)
		}},
		{"stale hello timestamp", func(t *testing.T) outcome {
			slow := agenttest.NewClock(time.Now().Add(-40 * time.Second))
			a, b := newAgent(t, withClock(slow.Now), withMgrClock(time.Now)), newAgent(t)
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.StaleTimestamp, "old")
			expectAlert(t, "initiator", o.errA, reason.StaleTimestamp)
		}},
		{"future hello timestamp", func(t *testing.T) outcome {
			fast := agenttest.NewClock(time.Now().Add(40 * time.Second))
			a, b := newAgent(t, withClock(fast.Now), withMgrClock(time.Now)), newAgent(t)
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.FutureTimestamp, "in the future")
			expectAlert(t, "initiator", o.errA, reason.FutureTimestamp)
		}},
		{"stale challenge timestamp", func(t *testing.T) outcome {
			slow := agenttest.NewClock(time.Now().Add(-40 * time.Second))
			a, b := newAgent(t), newAgent(t, withClock(slow.Now), withMgrClock(time.Now))
			// The responder's replay window runs on true time (it accepts the hello); its own clock, which
			// stamps the challenge, is 40 s slow.
			b.cfg.Replay = a.replay
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.StaleTimestamp, "old")
			expectAlert(t, "responder", o.errB, reason.StaleTimestamp)
		}},
		{"unknown version offered", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 0 {
					h, err := handshake.DecodeHello(f, []uint16{1})
					if err != nil {
						t.Error(err)
					}
					h.Versions = []uint16{7, 2}
					return h.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "responder", o.errB, reason.UnknownVersion, "[7 2]")
			expectAlert(t, "initiator", o.errA, reason.UnknownVersion)
		}},
		{"unknown version chosen", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 1 && n == 0 {
					c, err := handshake.DecodeChallenge(f)
					if err != nil {
						t.Error(err)
					}
					c.Version = 3
					return c.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.UnknownVersion, "version 3")
			expectAlert(t, "responder", o.errB, reason.UnknownVersion)
		}},
		{"MITM swaps the initiator's ephemeral key", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 0 {
					return swapHelloKey(t, f)
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.TranscriptMismatch, "different hello")
			expectAlert(t, "responder", o.errB, reason.TranscriptMismatch)
		}},
		{"MITM swaps the initiator's ephemeral key and fixes the echo", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			var original []byte
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				switch {
				case dir == 0 && n == 0:
					original = f
					return swapHelloKey(t, f)
				case dir == 1 && n == 0:
					c, err := handshake.DecodeChallenge(f)
					if err != nil {
						t.Error(err)
					}
					c.HelloHash = handshake.HelloHash(original) // hide the swap from the echo
					return c.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.BadSignature, "challenge signature")
			expectAlert(t, "responder", o.errB, reason.BadSignature)
		}},
		{"MITM swaps the responder's ephemeral key", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 1 && n == 0 {
					c, err := handshake.DecodeChallenge(f)
					if err != nil {
						t.Error(err)
					}
					k, _ := suite.GenerateX25519()
					c.X25519 = k.PublicKey().Bytes()
					return c.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.BadSignature, "challenge signature")
			expectAlert(t, "responder", o.errB, reason.BadSignature)
		}},
		{"MITM strips ML-KEM (downgrade)", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			a.cfg.Hybrid = true
			ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 0 {
					h, err := handshake.DecodeHello(f, []uint16{1})
					if err != nil {
						t.Error(err)
					}
					h.MLKEM = nil
					return h.Encode()
				}
				return f
			})
			_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.TranscriptMismatch, "")
			expectAlert(t, "responder", o.errB, reason.TranscriptMismatch)
		}},
		{"validator refuses", func(t *testing.T) outcome {
			a, b := newAgent(t), newAgent(t)
			a.cfg.Validator = ValidatorFunc(func(context.Context, *Peer) error { return errors.New("on the blocked list") })
			ca, cb := pipePair()
			_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
			return outcome{errA, errB}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.ValidatorRefused, "blocked list")
			expectAlert(t, "responder", o.errB, reason.ValidatorRefused)
		}},
		{"timeout", func(t *testing.T) outcome {
			a := newAgent(t)
			a.cfg.HandshakeTimeout = 200 * time.Millisecond
			ca, cb := pipePair()
			go func() { // a responder that reads and never answers
				for {
					if _, err := cb.ReadFrame(bg); err != nil {
						return
					}
				}
			}()
			defer cb.Close()
			_, err := Initiate(bg, ca, a.cfg, identity.ID{})
			return outcome{errA: err}
		}, func(t *testing.T, o outcome) {
			expect(t, "initiator", o.errA, reason.Timeout, "")
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.check(t, c.run(t)) })
	}
}

func swapHelloKey(t *testing.T, f []byte) []byte {
	h, err := handshake.DecodeHello(f, []uint16{1})
	if err != nil {
		t.Error(err)
		return f
	}
	k, _ := suite.GenerateX25519()
	h.X25519 = k.PublicKey().Bytes()
	return h.Encode()
}

// TestKeyLogRefusals: forks, rollbacks and compromised peers.
func TestKeyLogRefusals(t *testing.T) {
	t.Run("fork marks the peer compromised", func(t *testing.T) {
		a, b := newAgent(t), newAgent(t)
		// The holder of a's pre-committed key signs two different rotations: b learns one.
		forked := a.id.Fork(t)
		a.rotate(t)
		mustConnect(t, a, b)
		if st, _, _ := b.peers.State(a.ID().String()); st.Generation != 1 {
			t.Fatalf("b knows generation %d", st.Generation)
		}
		// Then a presents the other history (its state is equally valid on its own).
		fst, err := forked.Verify()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.mgr.SetIdentity(bg, a.id.Current(), fst); err != nil {
			t.Fatal(err)
		}
		a.setLog(&forked)
		ca, cb := pipePair()
		_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
		expect(t, "responder", errB, reason.KeyLogFork, "marked compromised")
		if !errors.Is(errB, identity.ErrDuplicity) {
			t.Fatalf("not wrapped as duplicity: %v", errB)
		}
		expectAlert(t, "initiator", errA, reason.KeyLogFork)
		// From now on a is refused outright, whatever it presents.
		a.setLog(&a.id.Log)
		if _, err := a.mgr.SetIdentity(bg, a.id.Current(), a.id.State); err != nil {
			t.Fatal(err)
		}
		ca, cb = pipePair()
		_, _, errA, errB = connect(t, a, b, ca, cb, b.ID())
		expect(t, "responder", errB, reason.PeerCompromised, "compromised")
		expectAlert(t, "initiator", errA, reason.PeerCompromised)
	})
	t.Run("rolled-back key log", func(t *testing.T) {
		a, b := newAgent(t), newAgent(t)
		old := a.id.Log
		oldSigner, oldState := a.id.Current(), a.id.State
		a.rotate(t)
		mustConnect(t, a, b)
		// a (or whoever stole a's old key) presents generation 0 again.
		a.setLog(&identity.Log{Events: old.Events[:1]})
		if _, err := a.mgr.SetIdentity(bg, oldSigner, oldState); err != nil {
			t.Fatal(err)
		}
		ca, cb := pipePair()
		_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
		expect(t, "responder", errB, reason.KeyLogStale, "rolled-back")
		expectAlert(t, "initiator", errA, reason.KeyLogStale)
	})
	t.Run("rolled-back responder key log", func(t *testing.T) {
		a, b := newAgent(t), newAgent(t)
		old := b.id.Log
		oldSigner, oldState := b.id.Current(), b.id.State
		b.rotate(t)
		mustConnect(t, a, b) // a caches b at generation 1
		// b (or whoever stole b's old key) answers with generation 0 again.
		b.setLog(&identity.Log{Events: old.Events[:1]})
		if _, err := b.mgr.SetIdentity(bg, oldSigner, oldState); err != nil {
			t.Fatal(err)
		}
		ca, cb := pipePair()
		_, _, errA, errB := connect(t, a, b, ca, cb, b.ID())
		expect(t, "initiator", errA, reason.KeyLogStale, "rolled-back")
		expectAlert(t, "responder", errB, reason.KeyLogStale)
	})
	t.Run("newer head without the log", func(t *testing.T) {
		a, b := newAgent(t), newAgent(t)
		mustConnect(t, a, b) // b caches a at generation 0
		a.rotate(t)
		ia, ib := startProxy(t, func(dir, n int, f []byte) []byte {
			if dir == 0 && n == 1 { // strip the log b asked for
				r, err := handshake.DecodeResponse(f)
				if err != nil {
					t.Error(err)
				}
				r.Log = nil
				return r.Encode()
			}
			return f
		})
		_, _, errA, errB := connect(t, a, b, ia, ib, b.ID())
		expect(t, "responder", errB, reason.KeyLogMissing, "did not send")
		expectAlert(t, "initiator", errA, reason.KeyLogMissing)
	})
}

// TestFrameRefusals: framing limits on a real TCP connection.
func TestFrameRefusals(t *testing.T) {
	raw := func(t *testing.T, write func(c net.Conn)) error {
		b := newAgent(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return
			}
			write(c)
		}()
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_, err = Accept(bg, NewNetConn(c, 0), b.cfg)
		return err
	}
	t.Run("truncated frame", func(t *testing.T) {
		err := raw(t, func(c net.Conn) {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], 100)
			c.Write(append(hdr[:], make([]byte, 10)...))
			c.Close()
		})
		expect(t, "responder", err, reason.TruncatedFrame, "inside a frame")
	})
	t.Run("oversized frame", func(t *testing.T) {
		err := raw(t, func(c net.Conn) {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], DefaultMaxFrame+1)
			c.Write(hdr[:])
			time.Sleep(100 * time.Millisecond)
			c.Close()
		})
		expect(t, "responder", err, reason.OversizedFrame, "limit")
	})
	t.Run("truncated hello", func(t *testing.T) {
		a := newAgent(t)
		_, hello, err := newInitiator(bg, mustCheck(t, a.cfg), identity.ID{})
		if err != nil {
			t.Fatal(err)
		}
		err = raw(t, func(c net.Conn) {
			nc := NewNetConn(c, 0)
			nc.WriteFrame(bg, hello[:len(hello)-5])
			time.Sleep(100 * time.Millisecond)
			c.Close()
		})
		expect(t, "responder", err, reason.Malformed, "ends inside")
	})
	t.Run("oversized write refused", func(t *testing.T) {
		ca, cb := pipePair()
		defer ca.Close()
		defer cb.Close()
		expect(t, "writer", ca.WriteFrame(bg, make([]byte, DefaultMaxFrame+1)), reason.OversizedFrame, "exceeds")
	})
}

func mustCheck(t *testing.T, c *Config) *Config {
	cc, err := c.check()
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// TestSessionRefusals: one case per failure reason of an established session, asserted on the receiver.
func TestSessionRefusals(t *testing.T) {
	type env = envelope.Envelope
	alter := func(change func(e *env)) func(t *testing.T) func(int, int, []byte) []byte {
		return func(t *testing.T) func(int, int, []byte) []byte { return alterFirstEnvelope(t, change) }
	}
	cases := []struct {
		name   string
		proxy  func(t *testing.T) func(dir, n int, f []byte) []byte // nil: no proxy
		send   func(t *testing.T, s *Session)
		code   reason.Code
		phrase string
	}{
		// Cases with code BadSignature run with the sender signing its envelopes (Config.SignEnvelopes).
		{"bad signature (signed envelope, payload altered in transit)", alter(func(e *env) { e.Payload.Data[0] ^= 1 }), nil, reason.BadSignature, "envelope"},
		{"bad signature (signed envelope, header altered in transit)", alter(func(e *env) { e.Header.MessageType = envelope.Heartbeat }), nil, reason.BadSignature, "envelope"},
		{"unsigned envelope, payload altered in transit", alter(func(e *env) { e.Payload.Data[0] ^= 1 }), nil, reason.DecryptFailed, "message authentication failed"},
		{"unsigned envelope, header altered in transit (it is the associated data)", alter(func(e *env) { e.Header.MessageType = envelope.Heartbeat }), nil, reason.DecryptFailed, "message authentication failed"},
		{"counter reuse (frame replayed in transit)", func(t *testing.T) func(int, int, []byte) []byte {
			var first []byte
			return func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 2 {
					first = f
				}
				if dir == 0 && n == 3 {
					return first
				}
				return f
			}
		}, nil, reason.CounterReuse, "reused counter"},
		{"out-of-order counter (frame dropped in transit)", func(t *testing.T) func(int, int, []byte) []byte {
			return func(dir, n int, f []byte) []byte {
				if dir == 0 && n == 2 {
					return nil
				}
				return f
			}
		}, nil, reason.CounterReuse, "out-of-order counter"},
		{"unknown envelope version", alter(func(e *env) { e.Header.Version = "2.0" }), nil, reason.UnknownVersion, `"2.0"`},
		{"unknown message type", alter(func(e *env) { e.Header.MessageType = "task_cancel" }), nil, reason.UnknownMessageType, "task_cancel"},
		{"replayed message ID", nil, func(t *testing.T, s *Session) {
			h := envelope.NewHeader(s.LocalID(), s.Peer().ID.String(), envelope.TaskRequest, time.Now())
			s.sendEnvelope(bg, h, []byte("one"))
			s.sendEnvelope(bg, h, []byte("two")) // same ID, next counter
		}, reason.ReplayedMessage, "already received"},
		{"wrong recipient", nil, func(t *testing.T, s *Session) {
			other := agenttest.NewIdentity(t, keystore.Ed25519).ID().String()
			s.sendEnvelope(bg, envelope.NewHeader(s.LocalID(), other, envelope.TaskRequest, time.Now()), []byte("x"))
		}, reason.WrongRecipient, "addressed to"},
		{"sender other than the session peer", nil, func(t *testing.T, s *Session) {
			other := agenttest.NewIdentity(t, keystore.Ed25519).ID().String()
			s.sendEnvelope(bg, envelope.NewHeader(other, s.Peer().ID.String(), envelope.TaskRequest, time.Now()), []byte("x"))
		}, reason.UnexpectedMessage, "claims sender"},
		{"stale timestamp", nil, func(t *testing.T, s *Session) {
			s.sendEnvelope(bg, envelope.NewHeader(s.LocalID(), s.Peer().ID.String(), envelope.TaskRequest, time.Now().Add(-40*time.Second)), []byte("x"))
		}, reason.StaleTimestamp, "old"},
		{"future timestamp", nil, func(t *testing.T, s *Session) {
			s.sendEnvelope(bg, envelope.NewHeader(s.LocalID(), s.Peer().ID.String(), envelope.TaskRequest, time.Now().Add(40*time.Second)), []byte("x"))
		}, reason.FutureTimestamp, "in the future"},
		{"undecryptable payload", nil, func(t *testing.T, s *Session) {
			wrong, _ := suite.NewAEAD(make([]byte, 32))
			s.wmu.Lock()
			defer s.wmu.Unlock()
			nonce, _ := s.send.take()
			e, err := envelope.SealSession(bg, envelope.NewHeader(s.LocalID(), s.Peer().ID.String(), envelope.TaskRequest, time.Now()), []byte("x"), wrong, nonce, s.keys.Signer())
			if err != nil {
				t.Error(err)
			}
			s.conn.WriteFrame(bg, append([]byte{handshake.FrameEnvelope}, e.EncodeBinary()...))
		}, reason.DecryptFailed, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := newAgent(t), newAgent(t)
			a.cfg.SignEnvelopes = c.code == reason.BadSignature
			var ia, ib FrameConn
			if c.proxy != nil {
				ia, ib = startProxy(t, c.proxy(t))
			} else {
				ia, ib = pipePair()
			}
			sa, sb, errA, errB := connect(t, a, b, ia, ib, b.ID())
			if errA != nil || errB != nil {
				t.Fatal(errA, errB)
			}
			if c.send != nil {
				go c.send(t, sa)
			} else {
				go func() {
					for range 3 {
						if _, err := sa.Send(bg, envelope.TaskRequest, []byte("payload")); err != nil {
							return
						}
					}
				}()
			}
			ctx, cancel := context.WithTimeout(bg, 5*time.Second)
			defer cancel()
			var err error
			for err == nil {
				var m *Message
				if m, err = sb.Receive(ctx); err == nil && c.send == nil && c.code != reason.CounterReuse {
					t.Fatalf("received %q despite the fault", m.Payload)
				}
			}
			expect(t, "receiver", err, c.code, c.phrase)
			// The sender is told why, under the session key.
			select {
			case <-sa.Done():
				expectAlert(t, "sender", sa.Err(), c.code)
			case <-time.After(5 * time.Second):
				t.Fatal("the sender was not told")
			}
		})
	}
}
