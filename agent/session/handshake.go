package session

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// local is the local agent's side of one handshake.
type local struct {
	keys *delegation.Keys
	log  *identity.Log
	head handshake.Head
	id   string
}

func (c *Config) local(ctx context.Context) (*local, error) {
	keys, err := c.Delegations.Current(ctx)
	if err != nil {
		return nil, err
	}
	log := c.KeyLog()
	if log == nil || len(log.Events) == 0 {
		return nil, reason.New(reason.Internal, "the local key event log is empty")
	}
	last := &log.Events[len(log.Events)-1]
	d := last.Digest()
	l := &local{keys: keys, log: log, head: handshake.Head{Generation: last.Generation, Digest: d[:]}, id: log.Events[0].ID}
	if keys.Delegation.AgentID != l.id {
		return nil, reason.New(reason.Internal, "the local delegation is for %s, the key event log is of %s", keys.Delegation.AgentID, l.id)
	}
	return l, nil
}

func headOf(st identity.State) handshake.Head {
	return handshake.Head{Generation: st.Generation, Digest: append([]byte(nil), st.Head[:]...)}
}

func randomNonce() []byte {
	b := make([]byte, handshake.NonceSize)
	if _, err := rand.Read(b); err != nil {
		panic("session: no randomness: " + err.Error())
	}
	return b
}

// commitPeer stores a verified peer's inline key event log in the peer cache: only after its handshake
// signature and the Validator passed, so that an initiator that did not authenticate, did not solve the
// puzzle or is refused stores nothing (issue 12 item 3).
func (c *Config) commitPeer(p *Peer) error {
	if p.log == nil {
		return nil
	}
	return c.Peers.CommitLog(p.ID, p.log)
}

// verifyPeer resolves and verifies a peer's identity material: its key event log (cached, or sent
// inline: verified in memory and compared with the cache, but not stored), the head it announced, and its
// delegation. It returns the inline log to commit (commitPeer) once the peer has proven itself.
func (c *Config) verifyPeer(id string, announced handshake.Head, inlineLog, encodedDelegation []byte, now time.Time) (identity.State, *delegation.Verified, *identity.Log, error) {
	pid, err := identity.ParseID(id)
	if err != nil {
		return identity.State{}, nil, nil, reason.Wrap(reason.Malformed, err, "peer agent ID")
	}
	var st identity.State
	var inline *identity.Log
	if len(inlineLog) > 0 {
		l, err := identity.DecodeLog(inlineLog)
		if err != nil {
			return st, nil, nil, reason.Wrap(reason.KeyLogInvalid, err, "the key event log %s sent", id)
		}
		if st, err = c.Peers.CheckLog(pid, &l); err != nil {
			return st, nil, nil, err
		}
		inline = &l
	} else {
		var ok bool
		if st, ok, err = c.Peers.State(id); err != nil {
			return st, nil, nil, err
		} else if !ok {
			return st, nil, nil, reason.New(reason.KeyLogMissing, "no key event log of %s is cached and it sent none", id)
		}
	}
	switch have := headOf(st); {
	case have.Equal(announced):
	case announced.Generation < have.Generation:
		return st, nil, nil, reason.New(reason.KeyLogStale, "%s announces key-log generation %d, this agent knows generation %d: refusing a rolled-back identity", id, announced.Generation, have.Generation)
	case len(inlineLog) > 0:
		return st, nil, nil, reason.New(reason.KeyLogInvalid, "the key event log %s sent does not end at the head it announced (generation %d)", id, announced.Generation)
	default:
		return st, nil, nil, reason.New(reason.KeyLogMissing, "%s announces key-log generation %d, this agent knows generation %d, and it sent no log", id, announced.Generation, have.Generation)
	}
	d, err := delegation.Decode(encodedDelegation)
	if err != nil {
		return st, nil, nil, err
	}
	v, err := delegation.Verify(pid, st, d, now)
	if err != nil {
		return st, nil, nil, err
	}
	return st, v, inline, nil
}

// initiator is the initiator's handshake state.
type initiator struct {
	cfg       *Config
	loc       *local
	expected  identity.ID // zero: any responder
	eph       *ecdh.PrivateKey
	kem       *suite.MLKEMKey
	helloMsg  *handshake.Hello
	hello     []byte
	challenge []byte
	chMsg     *handshake.Challenge
	response  []byte
	peer      *Peer
}

func newInitiator(ctx context.Context, cfg *Config, expected identity.ID) (*initiator, []byte, error) {
	loc, err := cfg.local(ctx)
	if err != nil {
		return nil, nil, err
	}
	in := &initiator{cfg: cfg, loc: loc, expected: expected}
	if in.eph, err = suite.GenerateX25519(); err != nil {
		return nil, nil, reason.Wrap(reason.Internal, err, "ephemeral key")
	}
	h := &handshake.Hello{
		Versions: cfg.Versions, InitiatorID: loc.id, Head: loc.head, Delegation: loc.keys.Encoded(),
		X25519: in.eph.PublicKey().Bytes(), Nonce: randomNonce(), Timestamp: cfg.Clock().Unix(),
	}
	if !expected.IsZero() {
		h.ResponderID = expected.String()
		if st, ok, err := cfg.Peers.State(h.ResponderID); err != nil {
			return nil, nil, err
		} else if ok {
			h.PeerHead = headOf(st)
		}
	}
	if cfg.Hybrid {
		if in.kem, err = suite.GenerateMLKEM(); err != nil {
			return nil, nil, reason.Wrap(reason.Internal, err, "ML-KEM key")
		}
		h.MLKEM = in.kem.EncapsulationKey()
	}
	in.helloMsg, in.hello = h, h.Encode()
	return in, in.hello, nil
}

// onChallenge verifies the responder and returns the response frame.
func (in *initiator) onChallenge(ctx context.Context, frame []byte) ([]byte, error) {
	c, err := handshake.DecodeChallenge(frame)
	if err != nil {
		return nil, err
	}
	in.challenge, in.chMsg = frame, c
	if !bytes.Equal(c.HelloHash, handshake.HelloHash(in.hello)) {
		return nil, reason.New(reason.TranscriptMismatch, "the responder received a different hello than this agent sent (altered in transit)")
	}
	if !contains(in.helloMsg.Versions, c.Version) {
		return nil, reason.New(reason.UnknownVersion, "the responder chose version %d, which this agent did not offer (%v)", c.Version, in.helloMsg.Versions)
	}
	if !in.expected.IsZero() && c.ResponderID != in.expected.String() {
		return nil, reason.New(reason.WrongRecipient, "dialled %s but %s answered", in.expected, c.ResponderID)
	}
	now := in.cfg.Clock()
	if err := replay.CheckTime(c.Timestamp, now, in.cfg.Replay.Window(), 0); err != nil {
		return nil, err
	}
	if (len(in.helloMsg.MLKEM) == 0) != (len(c.MLKEMCipher) == 0) {
		return nil, reason.New(reason.Malformed, "challenge: an ML-KEM ciphertext must be sent exactly when the hello offered ML-KEM")
	}
	st, v, inline, err := in.cfg.verifyPeer(c.ResponderID, c.Head, c.Log, c.Delegation, now)
	if err != nil {
		return nil, err
	}
	if err := v.OpKey.Verify(handshake.ChallengeSigningInput(in.hello, c.EncodeUnsigned()), c.Signature); err != nil {
		return nil, reason.Wrap(reason.BadSignature, err, "the challenge signature does not verify under %s's operational key", c.ResponderID)
	}
	in.peer = &Peer{ID: st.ID, State: st, Delegation: v, Role: Responder, Version: c.Version, Puzzle: c.Puzzle, log: inline}
	if in.cfg.Validator != nil {
		if err := in.cfg.Validator.Validate(ctx, in.peer); err != nil {
			return nil, reason.Wrap(reason.ValidatorRefused, err, "responder %s", c.ResponderID)
		}
	}
	if err := in.cfg.commitPeer(in.peer); err != nil {
		return nil, err
	}
	r := &handshake.Response{TranscriptHash: handshake.Transcript(in.hello, in.challenge), Grants: in.cfg.Grants}
	if c.WantLog {
		r.Log = in.loc.log.Encode()
	}
	if len(c.Puzzle) > 0 {
		if in.cfg.Solver == nil {
			return nil, reason.New(reason.ValidatorRefused, "the responder requires a puzzle solution and this agent has no solver")
		}
		if r.Solution, err = in.cfg.Solver.Solve(ctx, c.Puzzle, handshake.PuzzleBinding(in.helloMsg, c)); err != nil {
			return nil, reason.Wrap(reason.Internal, err, "solve the responder's puzzle")
		}
	}
	sig, err := in.loc.keys.Signer().Sign(ctx, handshake.ResponseSigningInput(in.hello, in.challenge, r.EncodeUnsigned()))
	if err != nil {
		return nil, reason.Wrap(reason.DelegationUnavailable, err, "sign the response")
	}
	r.Signature = sig
	in.response = r.Encode()
	return in.response, nil
}

// keys derives the session keys (after onChallenge).
func (in *initiator) keys() (*handshake.Keys, []byte, error) {
	ss, err := suite.X25519(in.eph, in.chMsg.X25519)
	if err != nil {
		return nil, nil, reason.Wrap(reason.Malformed, err, "the responder's ephemeral key")
	}
	var pq []byte
	if in.kem != nil {
		if pq, err = in.kem.Decapsulate(in.chMsg.MLKEMCipher); err != nil {
			return nil, nil, reason.Wrap(reason.Malformed, err, "the responder's ML-KEM ciphertext")
		}
	}
	th := handshake.Transcript(in.hello, in.challenge, in.response)
	k, err := handshake.DeriveKeys(th, ss, pq)
	if err != nil {
		return nil, nil, reason.Wrap(reason.Internal, err, "key schedule")
	}
	return k, th, nil
}

// responder is the responder's handshake state.
type responder struct {
	cfg       *Config
	loc       *local
	reauthOf  *Peer // re-handshake: the peer must be the same agent
	helloMsg  *handshake.Hello
	hello     []byte
	chMsg     *handshake.Challenge
	challenge []byte
	eph       *ecdh.PrivateKey
	pq        []byte
	version   uint16
	remote    string
}

// onHello checks the hello and returns the challenge frame.
func (r *responder) onHello(ctx context.Context, frame []byte) ([]byte, error) {
	h, err := handshake.DecodeHello(frame, r.cfg.Versions)
	if err != nil {
		return nil, err
	}
	r.helloMsg, r.hello = h, frame
	if r.loc, err = r.cfg.local(ctx); err != nil {
		return nil, err
	}
	if h.ResponderID != "" && h.ResponderID != r.loc.id && !r.cfg.testAnyRecipient {
		return nil, reason.New(reason.WrongRecipient, "the initiator wants %s, this agent is %s", h.ResponderID, r.loc.id)
	}
	if r.reauthOf != nil && (h.InitiatorID != r.reauthOf.ID.String() || h.ResponderID != r.loc.id) {
		return nil, reason.New(reason.WrongRecipient, "a re-authentication must be between the same two agents")
	}
	if err := r.cfg.Replay.CheckTime(h.Timestamp); err != nil {
		return nil, err
	}
	// Cheap refusals from the cache before any signing; none of them trusts the hello.
	wantLog := true
	if st, ok, err := r.cfg.Peers.State(h.InitiatorID); err != nil {
		return nil, err
	} else if ok {
		if h.Head.Generation < st.Generation {
			return nil, reason.New(reason.KeyLogStale, "%s announces key-log generation %d, this agent knows generation %d: refusing a rolled-back identity", h.InitiatorID, h.Head.Generation, st.Generation)
		}
		wantLog = !headOf(st).Equal(h.Head)
	}
	r.version, _ = handshake.Negotiate(h.Versions, r.cfg.Versions)
	if r.eph, err = suite.GenerateX25519(); err != nil {
		return nil, reason.Wrap(reason.Internal, err, "ephemeral key")
	}
	c := &handshake.Challenge{
		Version: r.version, HelloHash: handshake.HelloHash(frame), ResponderID: r.loc.id, Head: r.loc.head,
		WantLog: wantLog, Delegation: r.loc.keys.Encoded(), X25519: r.eph.PublicKey().Bytes(),
		Nonce: randomNonce(), Timestamp: r.cfg.Clock().Unix(),
	}
	if !h.PeerHead.Equal(r.loc.head) {
		c.Log = r.loc.log.Encode()
	}
	if len(h.MLKEM) > 0 {
		var ct []byte
		if r.pq, ct, err = suite.MLKEMEncapsulate(h.MLKEM); err != nil {
			return nil, reason.Wrap(reason.Malformed, err, "the initiator's ML-KEM key")
		}
		c.MLKEMCipher = ct
	}
	if r.cfg.Puzzler != nil && r.reauthOf == nil {
		if c.Puzzle, err = r.cfg.Puzzler.Puzzle(ctx, h.InitiatorID, handshake.PuzzleBinding(h, c)); err != nil {
			return nil, reason.Wrap(reason.Internal, err, "issue a puzzle")
		}
	}
	sig, err := r.loc.keys.Signer().Sign(ctx, handshake.ChallengeSigningInput(frame, c.EncodeUnsigned()))
	if err != nil {
		return nil, reason.Wrap(reason.DelegationUnavailable, err, "sign the challenge")
	}
	c.Signature = sig
	r.chMsg, r.challenge = c, c.Encode()
	return r.challenge, nil
}

// onResponse verifies the initiator and derives the session keys.
func (r *responder) onResponse(ctx context.Context, frame []byte) (*Peer, *handshake.Keys, []byte, error) {
	p, err := handshake.DecodeResponse(frame)
	if err != nil {
		return nil, nil, nil, err
	}
	if subtle.ConstantTimeCompare(p.TranscriptHash, handshake.Transcript(r.hello, r.challenge)) != 1 {
		return nil, nil, nil, reason.New(reason.TranscriptMismatch, "the initiator saw a different hello or challenge (altered in transit)")
	}
	binding := handshake.PuzzleBinding(r.helloMsg, r.chMsg)
	// The cheap refusals first (the puzzle, a Blocked agent), before any of the initiator's material is
	// verified: a throw-away identity that did no work costs no signature verification and no storage.
	if r.cfg.Admit != nil {
		claimed, err := identity.ParseID(r.helloMsg.InitiatorID)
		if err != nil {
			return nil, nil, nil, reason.Wrap(reason.Malformed, err, "initiator agent ID")
		}
		early := &Peer{ID: claimed, Role: Initiator, Version: r.version, Puzzle: r.chMsg.Puzzle, Solution: p.Solution, Binding: binding, RemoteAddr: r.remote}
		if err := r.cfg.Admit.Validate(ctx, early); err != nil {
			return nil, nil, nil, reason.Wrap(reason.ValidatorRefused, err, "initiator %s", r.helloMsg.InitiatorID)
		}
	}
	if r.chMsg.WantLog && len(p.Log) == 0 {
		return nil, nil, nil, reason.New(reason.KeyLogMissing, "%s did not send the key event log this agent asked for", r.helloMsg.InitiatorID)
	}
	st, v, inline, err := r.cfg.verifyPeer(r.helloMsg.InitiatorID, r.helloMsg.Head, p.Log, r.helloMsg.Delegation, r.cfg.Clock())
	if err != nil {
		return nil, nil, nil, err
	}
	if err := v.OpKey.Verify(handshake.ResponseSigningInput(r.hello, r.challenge, p.EncodeUnsigned()), p.Signature); err != nil {
		return nil, nil, nil, reason.Wrap(reason.BadSignature, err, "the response signature does not verify under %s's operational key", r.helloMsg.InitiatorID)
	}
	peer := &Peer{ID: st.ID, State: st, Delegation: v, Role: Initiator, Version: r.version, Grants: p.Grants,
		Puzzle: r.chMsg.Puzzle, Solution: p.Solution, Binding: binding, RemoteAddr: r.remote, log: inline}
	if r.cfg.Validator != nil {
		if err := r.cfg.Validator.Validate(ctx, peer); err != nil {
			return nil, nil, nil, reason.Wrap(reason.ValidatorRefused, err, "initiator %s", r.helloMsg.InitiatorID)
		}
	}
	if err := r.cfg.commitPeer(peer); err != nil {
		return nil, nil, nil, err
	}
	ss, err := suite.X25519(r.eph, r.helloMsg.X25519)
	if err != nil {
		return nil, nil, nil, reason.Wrap(reason.Malformed, err, "the initiator's ephemeral key")
	}
	th := handshake.Transcript(r.hello, r.challenge, frame)
	k, err := handshake.DeriveKeys(th, ss, r.pq)
	if err != nil {
		return nil, nil, nil, reason.Wrap(reason.Internal, err, "key schedule")
	}
	return peer, k, th, nil
}

func contains(vs []uint16, v uint16) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// direction is one direction's AEAD state: key, epoch and the next counter.
type direction struct {
	epoch uint32
	aead  *suite.AEAD
	next  uint64
}

func newDirection(key []byte, epoch uint32) (*direction, error) {
	a, err := suite.NewAEAD(key)
	if err != nil {
		return nil, reason.Wrap(reason.Internal, err, "session key")
	}
	return &direction{epoch: epoch, aead: a}, nil
}

// maxCounter: a session re-authenticates long before; refusing beyond it keeps nonces unique.
const maxCounter = 1 << 62

// seal takes the next nonce.
func (d *direction) take() ([]byte, error) {
	if d.next >= maxCounter {
		return nil, reason.New(reason.SessionExpired, "the session's message counter is exhausted: re-authenticate")
	}
	n := make([]byte, suite.AEADNonceSize)
	binary.BigEndian.PutUint32(n, d.epoch)
	binary.BigEndian.PutUint64(n[4:], d.next)
	d.next++
	return n, nil
}

// check refuses any nonce but the next expected one.
func (d *direction) check(nonce []byte) error {
	if len(nonce) != suite.AEADNonceSize {
		return reason.New(reason.Malformed, "session nonce of %d bytes", len(nonce))
	}
	epoch, ctr := binary.BigEndian.Uint32(nonce), binary.BigEndian.Uint64(nonce[4:])
	if epoch != d.epoch || ctr != d.next {
		kind := "out-of-order"
		if epoch < d.epoch || (epoch == d.epoch && ctr < d.next) {
			kind = "reused"
		}
		return reason.New(reason.CounterReuse, "%s counter: got epoch %d counter %d, expected epoch %d counter %d", kind, epoch, ctr, d.epoch, d.next)
	}
	return nil
}

var recordAADPrefix = []byte("custos/v1/record\x00")

func sealEstablished(key []byte, epoch uint32, th []byte, e *handshake.Established) ([]byte, *direction, error) {
	d, err := newDirection(key, epoch)
	if err != nil {
		return nil, nil, err
	}
	nonce, _ := d.take()
	frame := append([]byte{handshake.FrameEstablished}, nonce...)
	frame, err = d.aead.Seal(frame, nonce, e.Encode(), handshake.EstablishedAAD(th))
	if err != nil {
		return nil, nil, reason.Wrap(reason.Internal, err, "seal established")
	}
	return frame, d, nil
}

func openEstablished(key []byte, epoch uint32, th, frame []byte) (*handshake.Established, *direction, error) {
	if len(frame) < 1+suite.AEADNonceSize || frame[0] != handshake.FrameEstablished {
		return nil, nil, reason.New(reason.UnexpectedMessage, "expected an established frame")
	}
	d, err := newDirection(key, epoch)
	if err != nil {
		return nil, nil, err
	}
	nonce := frame[1 : 1+suite.AEADNonceSize]
	if err := d.check(nonce); err != nil {
		return nil, nil, err
	}
	pt, err := d.aead.Open(nil, nonce, frame[1+suite.AEADNonceSize:], handshake.EstablishedAAD(th))
	if err != nil {
		return nil, nil, reason.New(reason.KeyConfirmation, "established does not open under the derived session key: the peers derived different keys")
	}
	d.next++
	e, err := handshake.DecodeEstablished(pt)
	if err != nil {
		return nil, nil, err
	}
	return e, d, nil
}
