package session

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Record types: the first plaintext byte of a sealed record (frame type 0x11).
const (
	recHello         byte = handshake.FrameHello
	recChallenge     byte = handshake.FrameChallenge
	recResponse      byte = handshake.FrameResponse
	recAlert         byte = handshake.FrameAlert
	recReauthRequest byte = 0x06
	recClose         byte = 0x07
)

// Message is a received, verified and decrypted envelope.
type Message struct {
	// Envelope is the envelope as received: header, cipher, nonce and signature (Payload.Data is cleared:
	// the ciphertext was decrypted in place).
	Envelope *envelope.Envelope
	// Payload is the plaintext.
	Payload []byte
}

// Session is an authenticated connection to one peer. Send and Receive may be called concurrently (one
// goroutine receiving, any number sending). Any protocol failure closes the session; Err then says why.
type Session struct {
	cfg     *Config
	conn    FrameConn
	role    Role
	localID string

	wmu  sync.Mutex
	send *direction       // guarded by wmu
	keys *delegation.Keys // local delegation in use; guarded by wmu

	recv *direction // owned by the reader goroutine

	mu          sync.Mutex
	peer        *Peer
	sessionID   []byte
	epoch       uint32
	expires     time.Time
	reauthAt    time.Time
	reauthed    chan struct{} // closed when the next re-handshake completes
	pendingI    *initiator    // initiator: re-handshake in flight
	pendingR    *responder    // responder: challenge sent, awaiting response
	pendingKeys *handshake.Keys
	pendingTH   []byte
	pendingAt   time.Time
	requests    rateLimit // initiator: re-authentications the peer asked for
	reHellos    rateLimit // responder: re-authentications the peer started

	// Maintenance runs on a timer, not in a goroutine per session (issue 19: thousands of idle sessions):
	// each pass sets the timer for the next one; wake runs a pass now.
	maintMu sync.Mutex  // serialises passes
	timerMu sync.Mutex  // guards maint and kicks
	maint   *time.Timer // nil when the session is not maintained (tests)
	kicks   uint64      // wake calls: a pass does not push back a timer that a wake set meanwhile

	incoming chan *Message
	notify   atomic.Pointer[func()] // Notify
	done     chan struct{}
	failOnce sync.Once
	err      error
	wg       sync.WaitGroup
}

// Initiate runs the handshake as initiator over conn and returns the established session. expected is
// the agent the caller means to reach (the zero ID accepts any responder that authenticates). On failure
// conn is closed and the error carries a reason code.
func Initiate(ctx context.Context, conn FrameConn, cfg *Config, expected identity.ID) (*Session, error) {
	c, err := cfg.check()
	if err != nil {
		return nil, err
	}
	s, err := initiate(ctx, conn, c, expected)
	if err != nil {
		c.event(Event{Kind: "handshake", Role: Initiator, Peer: expected.String(), Err: err})
		conn.Close()
		return nil, err
	}
	c.event(Event{Kind: "handshake", Role: Initiator, Peer: s.peer.ID.String(), SessionID: s.sessionID})
	return s, nil
}

func initiate(ctx context.Context, conn FrameConn, c *Config, expected identity.ID) (*Session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	in, hello, err := newInitiator(ctx, c, expected)
	if err != nil {
		return nil, err
	}
	if err := conn.WriteFrame(ctx, hello); err != nil {
		return nil, err
	}
	frame, err := readHandshake(ctx, conn)
	if err != nil {
		return nil, err
	}
	resp, err := in.onChallenge(ctx, frame)
	if err != nil {
		return nil, alertAndReturn(ctx, conn, err)
	}
	if err := conn.WriteFrame(ctx, resp); err != nil {
		return nil, err
	}
	keys, th, err := in.keys()
	if err != nil {
		return nil, alertAndReturn(ctx, conn, err)
	}
	defer keys.Wipe()
	if frame, err = readHandshake(ctx, conn); err != nil {
		return nil, err
	}
	est, recv, err := openEstablished(keys.R2I, 0, th, frame)
	if err == nil && string(est.SessionID) != string(keys.SessionID) {
		err = reason.New(reason.KeyConfirmation, "established names another session")
	}
	if err != nil {
		return nil, alertAndReturn(ctx, conn, err)
	}
	send, err := newDirection(keys.I2R, 0)
	if err != nil {
		return nil, err
	}
	if err := c.Peers.PutDelegation(in.peer.Delegation.Delegation); err != nil {
		c.Logger.Warn("peer cache: delegation not stored", "peer", in.peer.ID, "err", err)
	}
	if ra, ok := conn.(interface{ RemoteAddr() string }); ok {
		in.peer.RemoteAddr = ra.RemoteAddr()
	}
	s := newSession(c, conn, Initiator, in.loc, in.peer, keys.SessionID, send, recv)
	s.setTimes(est, in.loc.keys, c.Clock())
	s.start()
	return s, nil
}

// Accept runs the handshake as responder over conn and returns the established session. On failure conn
// is closed (after an alert frame naming the reason) and the error carries a reason code.
func Accept(ctx context.Context, conn FrameConn, cfg *Config) (*Session, error) {
	c, err := cfg.check()
	if err != nil {
		return nil, err
	}
	s, claimed, err := accept(ctx, conn, c)
	if err != nil {
		c.event(Event{Kind: "handshake", Role: Responder, Peer: claimed, Err: err})
		conn.Close()
		return nil, err
	}
	c.event(Event{Kind: "handshake", Role: Responder, Peer: s.peer.ID.String(), SessionID: s.sessionID})
	return s, nil
}

func accept(ctx context.Context, conn FrameConn, c *Config) (*Session, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	r := &responder{cfg: c}
	if ra, ok := conn.(interface{ RemoteAddr() string }); ok {
		r.remote = ra.RemoteAddr()
	}
	frame, err := readHandshake(ctx, conn)
	if err != nil {
		return nil, "", err
	}
	ch, err := r.onHello(ctx, frame)
	claimed := ""
	if r.helloMsg != nil {
		claimed = r.helloMsg.InitiatorID
	}
	if err != nil {
		return nil, claimed, alertAndReturn(ctx, conn, err)
	}
	if err := conn.WriteFrame(ctx, ch); err != nil {
		return nil, claimed, err
	}
	if frame, err = readHandshake(ctx, conn); err != nil {
		return nil, claimed, err
	}
	peer, keys, th, err := r.onResponse(ctx, frame)
	if err != nil {
		return nil, claimed, alertAndReturn(ctx, conn, err)
	}
	defer keys.Wipe()
	est := r.established(peer, keys)
	frameEst, send, err := sealEstablished(keys.R2I, 0, th, c.alterEstablished(est))
	if err != nil {
		return nil, claimed, err
	}
	recv, err := newDirection(keys.I2R, 0)
	if err != nil {
		return nil, claimed, err
	}
	if err := conn.WriteFrame(ctx, frameEst); err != nil {
		return nil, claimed, err
	}
	if err := c.Peers.PutDelegation(peer.Delegation.Delegation); err != nil {
		c.Logger.Warn("peer cache: delegation not stored", "peer", peer.ID, "err", err)
	}
	s := newSession(c, conn, Responder, r.loc, peer, keys.SessionID, send, recv)
	s.setTimes(est, r.loc.keys, c.Clock())
	s.start()
	return s, claimed, nil
}

// established computes the session's timing: re-authenticate every ReauthInterval, and close at the
// latest when either delegation expires or the interval plus grace passes without re-authentication.
func (r *responder) established(peer *Peer, keys *handshake.Keys) *handshake.Established {
	now := r.cfg.Clock()
	exp := now.Add(r.cfg.ReauthInterval + r.cfg.ReauthGrace)
	if na := peer.Delegation.NotAfter; na.Before(exp) {
		exp = na
	}
	if na := r.loc.keys.NotAfter(); na.Before(exp) {
		exp = na
	}
	return &handshake.Established{SessionID: keys.SessionID, Reauth: uint64(r.cfg.ReauthInterval / time.Second), Expires: exp.Unix()}
}

func readHandshake(ctx context.Context, conn FrameConn) ([]byte, error) {
	frame, err := conn.ReadFrame(ctx)
	if err != nil {
		return nil, err
	}
	if len(frame) > handshake.MaxMessage {
		return nil, reason.New(reason.OversizedFrame, "handshake frame of %d bytes exceeds %d", len(frame), handshake.MaxMessage)
	}
	if len(frame) > 0 && frame[0] == handshake.FrameAlert {
		a, err := handshake.DecodeAlert(frame[1:])
		if err != nil {
			return nil, err
		}
		return nil, reason.Wrap(reason.PeerAlert, reason.FromPeerCode(a.Code), "the peer refused the handshake")
	}
	return frame, nil
}

// alertAndReturn tells the peer why (best effort, unauthenticated) and returns err.
func alertAndReturn(ctx context.Context, conn FrameConn, err error) error {
	code := reason.Of(err)
	if code == reason.PeerAlert || code == reason.Closed || code == reason.Timeout || code == reason.TruncatedFrame {
		return err
	}
	a := &handshake.Alert{Code: alertCode(err)}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = conn.WriteFrame(wctx, append([]byte{handshake.FrameAlert}, a.Encode()...))
	return err
}

// alertCode is the code an alert about err carries: err's code, except that a validator's refusal of the
// grants the initiator presented is named (reason.HandshakeRefusalAlerts) in place of validator_refused;
// any other refusal stays validator_refused, so the responder's policy does not leak (ADR 0087).
func alertCode(err error) reason.Code {
	code := reason.Of(err)
	if code == reason.ValidatorRefused {
		if rc := reason.RefusalCode(err); reason.PublicRefusal(rc) {
			return rc
		}
	}
	return code
}

func newSession(c *Config, conn FrameConn, role Role, loc *local, peer *Peer, sid []byte, send, recv *direction) *Session {
	return &Session{
		cfg: c, conn: conn, role: role, localID: loc.id, send: send, keys: loc.keys, recv: recv,
		peer: peer, sessionID: append([]byte(nil), sid...), reauthed: make(chan struct{}),
		incoming: make(chan *Message, incomingQueue), done: make(chan struct{}),
	}
}

// setTimes sets when the session re-authenticates and expires (s.mu held, s.peer set). est is what the
// responder sent (or, on the responder, what it computed); each side bounds it by its own rules, so no
// value the peer controls extends the session: see sessionTimes.
func (s *Session) setTimes(est *handshake.Established, local *delegation.Keys, now time.Time) {
	s.expires, s.reauthAt = sessionTimes(s.cfg, est, s.peer.Delegation.NotAfter, local.NotAfter(), now)
}

// sessionTimes computes a session's expiry and re-authentication time at now from the peer's "established"
// message est. The expiry is the earliest of est.Expires, the peer's and the local delegation's not_after,
// now + the local ReauthInterval + ReauthGrace, and now + MaxSessionLifetime. Re-authentication is due at
// the earliest of now + est.Reauth (compared in seconds: a count from the wire is never multiplied into a
// Duration), now + the local ReauthInterval, and three quarters of the way to the expiry, less a random
// jitter of up to a fifth of that delay.
func sessionTimes(c *Config, est *handshake.Established, peerNotAfter, localNotAfter time.Time, now time.Time) (expires, reauthAt time.Time) {
	expires = now.Add(min(c.ReauthInterval+c.ReauthGrace, MaxSessionLifetime))
	for _, t := range []time.Time{time.Unix(est.Expires, 0), peerNotAfter, localNotAfter} {
		if t.Before(expires) {
			expires = t
		}
	}
	interval := min(c.ReauthInterval, MaxSessionLifetime)
	if est.Reauth < uint64(interval/time.Second) {
		interval = time.Duration(est.Reauth) * time.Second // below MaxSessionLifetime: no overflow
	}
	reauthAt = now.Add(interval)
	if alt := now.Add(expires.Sub(now) * 3 / 4); alt.Before(reauthAt) {
		reauthAt = alt
	}
	// Jitter: sessions established together (an agent restarting, a network healing) would otherwise
	// re-authenticate together at every interval. Each is moved earlier by a random part of the last
	// fifth of its delay: never later than the rules above allow (issue 19).
	if j := reauthAt.Sub(now) / 5; j > 0 {
		reauthAt = reauthAt.Add(-rand.N(j))
	}
	return expires, reauthAt
}

func (s *Session) start() {
	if !s.cfg.testNoMaintain {
		s.timerMu.Lock()
		s.maint = time.AfterFunc(0, s.maintain) // its first pass waits for timerMu, so maint is set
		s.timerMu.Unlock()
	}
	s.wg.Add(1)
	go s.readLoop()
}

// LocalID is the local agent's ID.
func (s *Session) LocalID() string { return s.localID }

// Role is the local role in the first handshake (the initiator drives re-authentication).
func (s *Session) Role() Role { return s.role }

// Peer is the verified peer (updated by every re-authentication).
func (s *Session) Peer() *Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peer
}

// ID names the session (from the latest handshake's key schedule).
func (s *Session) ID() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.sessionID...)
}

// Expires is when the session closes unless re-authenticated.
func (s *Session) Expires() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expires
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended (nil while it runs).
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Send seals and sends a message of type t, signed when Config.SignEnvelopes is set (ADR 0032).
func (s *Session) Send(ctx context.Context, t envelope.MessageType, payload []byte) (*envelope.Envelope, error) {
	return s.sendEnvelope(ctx, envelope.NewHeader(s.localID, s.Peer().ID.String(), t, s.cfg.Clock()), payload)
}

func (s *Session) sendEnvelope(ctx context.Context, h envelope.Header, payload []byte) (*envelope.Envelope, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.Err(); err != nil {
		return nil, reason.Wrap(reason.Closed, err, "session")
	}
	nonce, err := s.send.take()
	if err != nil {
		return nil, err
	}
	var signer keystore.Signer
	if s.cfg.SignEnvelopes {
		signer = s.keys.Signer()
	}
	frame, e, err := envelope.AppendSealSession(ctx, []byte{handshake.FrameEnvelope}, h, payload, s.send.aead, nonce, signer)
	if err != nil {
		s.send.next-- // nothing was sent: the counter is not used
		return nil, err
	}
	if err := s.conn.WriteFrame(ctx, frame); err != nil {
		s.failWrite(ctx, err) // a frame may be half-written: the stream is unusable
		return nil, err
	}
	return e, nil
}

// alertWait bounds how long a failed write waits for the reader to report why the peer closed.
const alertWait = 2 * time.Second

// failWrite ends the session after a failed write. A write fails when the peer has closed the
// connection, and a peer that refuses something sends its alert before it closes: the alert is then on
// its way to (or already in) the reader. Ending the session at once with "closed" would race the reader
// and lose the reason the protocol promises (the receiver's refusal code), so the reader gets the first
// word, for at most alertWait; it ends promptly either way, with the alert or at the end of the stream.
// When the caller's context ended the write, the connection may be fine and nothing is coming: fail now.
func (s *Session) failWrite(ctx context.Context, err error) {
	if ctx.Err() == nil {
		t := time.NewTimer(alertWait)
		select {
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
	}
	s.fail(err)
}

// Receive returns the next message.
func (s *Session) Receive(ctx context.Context) (*Message, error) {
	select {
	case m := <-s.incoming:
		return m, nil
	default:
	}
	select {
	case m := <-s.incoming:
		return m, nil
	case <-s.done:
		select {
		case m := <-s.incoming:
			return m, nil
		default:
		}
		return nil, s.err
	case <-ctx.Done():
		return nil, reason.Wrap(reason.Of(ctx.Err()), ctx.Err(), "receive")
	}
}

// Notify has f called whenever a received message is queued and once when the session ends, from the
// session's own goroutines, with no lock held: f must not block. With TryReceive it lets a caller take
// messages without a goroutine parked in Receive for every session (issue 19). f replaces an earlier
// one; messages queued before Notify are not announced (check Queued).
func (s *Session) Notify(f func()) { s.notify.Store(&f) }

func (s *Session) notifyNow() {
	if f := s.notify.Load(); f != nil {
		(*f)()
	}
}

// TryReceive returns the next queued message without waiting; ok is false when none is queued.
func (s *Session) TryReceive() (m *Message, ok bool) {
	select {
	case m := <-s.incoming:
		return m, true
	default:
		return nil, false
	}
}

// Queued is the number of received messages waiting to be taken.
func (s *Session) Queued() int { return len(s.incoming) }

// writeRecord seals and sends a control record (wmu held by the caller).
func (s *Session) writeRecordLocked(ctx context.Context, typ byte, body []byte) error {
	nonce, err := s.send.take()
	if err != nil {
		return err
	}
	frame := append([]byte{handshake.FrameRecord}, nonce...)
	frame, err = s.send.aead.Seal(frame, nonce, append([]byte{typ}, body...), append(recordAADPrefix, nonce...))
	if err != nil {
		s.send.next--
		return reason.Wrap(reason.Internal, err, "seal record")
	}
	return s.conn.WriteFrame(ctx, frame)
}

func (s *Session) writeRecord(ctx context.Context, typ byte, body []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.Err(); err != nil {
		return err
	}
	return s.writeRecordLocked(ctx, typ, body)
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	for {
		frame, err := s.conn.ReadFrame(context.Background())
		if err != nil {
			s.fail(err)
			return
		}
		if err := s.handle(frame); err != nil {
			s.fail(err)
			return
		}
	}
}

func (s *Session) handle(frame []byte) error {
	if len(frame) == 0 {
		return reason.New(reason.Malformed, "empty frame")
	}
	// Nothing is accepted once the session has ended or expired, even before the maintenance goroutine
	// notices the expiry.
	select {
	case <-s.done:
		return s.err
	default:
	}
	if exp := s.Expires(); !s.cfg.Clock().Before(exp) {
		return reason.New(reason.SessionExpired, "the session was not re-authenticated before %s", exp.UTC().Format(time.RFC3339))
	}
	switch frame[0] {
	case handshake.FrameEnvelope:
		m, err := s.openEnvelope(frame[1:])
		if err != nil {
			return err
		}
		select {
		case s.incoming <- m:
			s.notifyNow()
		case <-s.done:
		}
		return nil
	case handshake.FrameRecord:
		typ, body, err := s.openRecord(frame)
		if err != nil {
			return err
		}
		return s.handleRecord(typ, body)
	case handshake.FrameEstablished:
		return s.onReEstablished(frame)
	case handshake.FrameHello, handshake.FrameChallenge, handshake.FrameResponse, handshake.FrameAlert:
		return reason.New(reason.UnexpectedMessage, "unsealed handshake frame 0x%02x inside a session", frame[0])
	}
	return reason.New(reason.UnknownMessageType, "frame type 0x%02x", frame[0])
}

// openEnvelope checks, verifies and decrypts a session envelope, in this order: form, sender and
// recipient, timestamp window, counter, signature (when it carries one), decryption (the AEAD with the
// header as associated data: what authenticates an unsigned envelope), message ID. The frame is the
// session's own (FrameConn), so the payload is decrypted in place. Nothing is recorded in the replay
// cache for a message that is not authentic.
func (s *Session) openEnvelope(b []byte) (*Message, error) {
	e, err := envelope.DecodeBinary(b)
	if err != nil {
		return nil, err
	}
	if e.Payload.Cipher != envelope.AES256GCM {
		return nil, reason.New(reason.Malformed, "envelope %s uses cipher %s inside a session (want %s)", e.Header.MessageID, e.Payload.Cipher, envelope.AES256GCM)
	}
	peer := s.Peer()
	if e.Header.SenderID != peer.ID.String() {
		return nil, reason.New(reason.UnexpectedMessage, "envelope claims sender %s inside a session with %s", e.Header.SenderID, peer.ID)
	}
	if err := e.CheckRecipient(s.localID); err != nil {
		return nil, err
	}
	if err := s.cfg.Replay.CheckTime(e.Header.Timestamp); err != nil {
		return nil, err
	}
	if err := s.recv.check(e.Payload.Nonce); err != nil {
		return nil, err
	}
	if e.Signed() {
		if err := e.Verify(peer.Delegation.OpKey); err != nil {
			return nil, err
		}
	}
	pt, err := e.OpenSessionInPlace(s.recv.aead)
	if err != nil {
		return nil, err
	}
	if err := s.cfg.Replay.Check(e.Header.SenderID, e.Header.MessageID, e.Header.Timestamp); err != nil {
		return nil, err
	}
	s.recv.next++
	return &Message{Envelope: e, Payload: pt}, nil
}

func (s *Session) openRecord(frame []byte) (byte, []byte, error) {
	if len(frame) < 1+suite.AEADNonceSize+suite.AEADTagSize+1 {
		return 0, nil, reason.New(reason.Malformed, "record of %d bytes is too short", len(frame))
	}
	nonce := frame[1 : 1+suite.AEADNonceSize]
	if err := s.recv.check(nonce); err != nil {
		return 0, nil, err
	}
	pt, err := s.recv.aead.Open(nil, nonce, frame[1+suite.AEADNonceSize:], append(recordAADPrefix, nonce...))
	if err != nil {
		return 0, nil, reason.Wrap(reason.DecryptFailed, err, "record")
	}
	s.recv.next++
	return pt[0], pt[1:], nil
}

func (s *Session) handleRecord(typ byte, body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	defer cancel()
	switch typ {
	case recHello:
		return s.onReHello(ctx, body)
	case recChallenge:
		return s.onReChallenge(ctx, body)
	case recResponse:
		return s.onReResponse(ctx, body)
	case recReauthRequest:
		if s.role != Initiator {
			return reason.New(reason.UnexpectedMessage, "re-authentication request sent to the responder")
		}
		if !s.allowReauth(&s.requests) {
			// Refused, not fatal: the session goes on (the peer closes it at its expiry if it insists).
			err := reason.New(reason.ReauthRateLimited, "the peer asked for re-authentication more than %d times in a row, faster than one per %s: request refused",
				s.cfg.ReauthBurst, s.cfg.reauthEvery())
			s.cfg.Logger.Warn("re-authentication request refused", "peer", s.Peer().ID, "err", err)
			s.cfg.event(Event{Kind: "reauth_refused", Role: s.role, Peer: s.Peer().ID.String(), Err: err, SessionID: s.ID()})
			return nil
		}
		go func() {
			if err := s.Reauthenticate(context.Background()); err != nil {
				s.cfg.Logger.Warn("re-authentication requested by the peer failed", "peer", s.Peer().ID, "err", err)
			}
		}()
		return nil
	case recAlert:
		a, err := handshake.DecodeAlert(body)
		if err != nil {
			return err
		}
		return reason.Wrap(reason.PeerAlert, reason.FromPeerCode(a.Code), "the peer closed the session")
	case recClose:
		return reason.New(reason.Closed, "the peer closed the session")
	}
	return reason.New(reason.UnknownMessageType, "record type 0x%02x", typ)
}

// Re-authentication. The initiator sends hello, then response, as records under the current keys and
// switches its sending key right after the response; the responder answers with a challenge record, and
// after verifying the response sends "established" under the new key and switches both directions; the
// initiator switches its receiving key when that established frame arrives. Each direction therefore
// changes key at one well-defined frame, while envelopes keep flowing.

// Reauthenticate runs a fresh handshake inside the session (new ephemeral keys, new session keys, the
// peer's and the local agent's current delegations and key event logs). On the responder side it asks
// the initiator to do so and waits. A failed re-authentication closes the session.
func (s *Session) Reauthenticate(ctx context.Context) error {
	if s.role == Responder {
		s.mu.Lock()
		wait := s.reauthed
		s.mu.Unlock()
		if err := s.writeRecord(ctx, recReauthRequest, nil); err != nil {
			return err
		}
		return s.awaitReauth(ctx, wait)
	}
	// Prepare outside the lock (it may sign a new delegation with a slow identity key).
	in, hello, err := newInitiator(ctx, s.cfg, s.Peer().ID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	wait := s.reauthed
	if s.pendingI != nil {
		s.mu.Unlock()
		return s.awaitReauth(ctx, wait) // one is already running: wait for it
	}
	s.pendingI, s.pendingAt = in, s.cfg.Clock()
	s.mu.Unlock()
	if err := s.writeRecord(ctx, recHello, hello); err != nil {
		s.failWrite(ctx, err)
		return err
	}
	return s.awaitReauth(ctx, wait)
}

func (s *Session) awaitReauth(ctx context.Context, wait chan struct{}) error {
	t := time.NewTimer(s.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case <-wait:
		return nil
	case <-s.done:
		return s.err
	case <-ctx.Done():
		err := reason.Wrap(reason.Of(ctx.Err()), ctx.Err(), "re-authentication did not complete")
		s.fail(err)
		return err
	case <-t.C:
		err := reason.New(reason.Timeout, "re-authentication did not complete within %s", s.cfg.HandshakeTimeout)
		s.fail(err)
		return err
	}
}

func (s *Session) onReHello(ctx context.Context, body []byte) error {
	s.mu.Lock()
	busy := s.role != Responder || s.pendingR != nil
	peer := s.peer
	s.mu.Unlock()
	if busy {
		return reason.New(reason.UnexpectedMessage, "re-authentication hello out of turn")
	}
	if !s.allowReauth(&s.reHellos) {
		return reason.New(reason.ReauthRateLimited, "the initiator re-authenticated more than %d times in a row, faster than one per %s",
			s.cfg.ReauthBurst, s.cfg.reauthEvery())
	}
	r := &responder{cfg: s.cfg, reauthOf: peer, remote: peer.RemoteAddr}
	ch, err := r.onHello(ctx, body)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.pendingR, s.pendingAt = r, s.cfg.Clock()
	s.mu.Unlock()
	return s.writeRecord(ctx, recChallenge, ch)
}

func (s *Session) onReChallenge(ctx context.Context, body []byte) error {
	s.mu.Lock()
	in := s.pendingI
	s.mu.Unlock()
	if in == nil || in.challenge != nil {
		return reason.New(reason.UnexpectedMessage, "re-authentication challenge out of turn")
	}
	resp, err := in.onChallenge(ctx, body)
	if err != nil {
		return err
	}
	keys, th, err := in.keys()
	if err != nil {
		return err
	}
	s.mu.Lock()
	next := s.epoch + 1
	s.pendingKeys, s.pendingTH = keys, th
	s.mu.Unlock()
	send, err := newDirection(keys.I2R, next)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writeRecordLocked(ctx, recResponse, resp); err != nil {
		return err
	}
	s.send, s.keys = send, in.loc.keys
	return nil
}

func (s *Session) onReEstablished(frame []byte) error {
	s.mu.Lock()
	in, keys, th, next := s.pendingI, s.pendingKeys, s.pendingTH, s.epoch+1
	s.mu.Unlock()
	if in == nil || keys == nil {
		return reason.New(reason.UnexpectedMessage, "established frame out of turn")
	}
	defer keys.Wipe()
	est, recv, err := openEstablished(keys.R2I, next, th, frame)
	if err == nil && string(est.SessionID) != string(keys.SessionID) {
		err = reason.New(reason.KeyConfirmation, "established names another session")
	}
	if err != nil {
		return err
	}
	s.recv = recv
	s.storeDelegation(in.peer)
	s.completeReauth(in.peer, in.loc.keys, keys.SessionID, est)
	return nil
}

func (s *Session) onReResponse(ctx context.Context, body []byte) error {
	s.mu.Lock()
	r := s.pendingR
	s.mu.Unlock()
	if r == nil {
		return reason.New(reason.UnexpectedMessage, "re-authentication response out of turn")
	}
	peer, keys, th, err := r.onResponse(ctx, body)
	if err != nil {
		return err
	}
	defer keys.Wipe()
	if !peer.ID.Equal(r.reauthOf.ID) {
		return reason.New(reason.WrongRecipient, "re-authenticated as %s, the session is with %s", peer.ID, r.reauthOf.ID)
	}
	s.mu.Lock()
	next := s.epoch + 1
	s.mu.Unlock()
	est := r.established(peer, keys)
	frame, send, err := sealEstablished(keys.R2I, next, th, s.cfg.alterEstablished(est))
	if err != nil {
		return err
	}
	recv, err := newDirection(keys.I2R, next)
	if err != nil {
		return err
	}
	// The new state is in place before "established" leaves, so that when the initiator sees the
	// re-authentication complete, so does this side.
	s.storeDelegation(peer)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.recv = recv
	s.completeReauth(peer, r.loc.keys, keys.SessionID, est)
	if err := s.conn.WriteFrame(ctx, frame); err != nil {
		return err
	}
	s.send, s.keys = send, r.loc.keys
	return nil
}

func (s *Session) storeDelegation(peer *Peer) {
	if err := s.cfg.Peers.PutDelegation(peer.Delegation.Delegation); err != nil {
		s.cfg.Logger.Warn("peer cache: delegation not stored", "peer", peer.ID, "err", err)
	}
}

func (s *Session) completeReauth(peer *Peer, local *delegation.Keys, sid []byte, est *handshake.Established) {
	s.mu.Lock()
	if peer.RemoteAddr == "" {
		peer.RemoteAddr = s.peer.RemoteAddr
	}
	s.peer, s.sessionID = peer, append([]byte(nil), sid...)
	s.epoch++
	s.setTimes(est, local, s.cfg.Clock())
	s.pendingI, s.pendingR, s.pendingKeys, s.pendingTH = nil, nil, nil, nil
	close(s.reauthed)
	s.reauthed = make(chan struct{})
	s.mu.Unlock()
	s.wake()
	s.cfg.event(Event{Kind: "reauth", Role: s.role, Peer: peer.ID.String(), SessionID: sid})
}

// wake runs a maintenance pass now (the session's times changed).
func (s *Session) wake() {
	s.timerMu.Lock()
	defer s.timerMu.Unlock()
	if s.maint != nil {
		s.kicks++
		s.maint.Reset(0)
	}
}

// maintain is one maintenance pass, run by the session's timer: it re-authenticates on time (initiator),
// closes the session when it expires or a re-handshake stalls, and sets the timer for the next pass.
func (s *Session) maintain() {
	s.maintMu.Lock()
	defer s.maintMu.Unlock()
	s.timerMu.Lock()
	kicks := s.kicks
	s.timerMu.Unlock()
	select {
	case <-s.done:
		return
	default:
	}
	{
		s.mu.Lock()
		now := s.cfg.Clock()
		expires, reauthAt, pendingAt := s.expires, s.reauthAt, s.pendingAt
		pending := s.pendingI != nil || s.pendingR != nil
		s.mu.Unlock()
		if !now.Before(expires) {
			s.fail(reason.New(reason.SessionExpired, "the session was not re-authenticated before %s", expires.UTC().Format(time.RFC3339)))
			return
		}
		if pending && now.Sub(pendingAt) > s.cfg.HandshakeTimeout {
			s.fail(reason.New(reason.Timeout, "re-authentication did not complete within %s", s.cfg.HandshakeTimeout))
			return
		}
		wake := expires.Sub(now)
		if pending {
			wake = min(wake, s.cfg.HandshakeTimeout-now.Sub(pendingAt)+time.Millisecond)
		}
		if s.role == Initiator && !pending && !s.cfg.noAutoReauth {
			if !now.Before(reauthAt) {
				go func() {
					if err := s.Reauthenticate(context.Background()); err != nil {
						s.cfg.Logger.Warn("scheduled re-authentication failed", "peer", s.Peer().ID, "err", err)
					}
				}()
				wake = min(wake, s.cfg.HandshakeTimeout)
			} else {
				wake = min(wake, reauthAt.Sub(now))
			}
		}
		s.timerMu.Lock()
		if s.kicks == kicks { // else a wake set the timer to run a pass now: keep that
			s.maint.Reset(max(wake, time.Millisecond))
		}
		s.timerMu.Unlock()
	}
}

// fail ends the session with err: it tells the peer why (a sealed alert, best effort) and closes the
// connection.
func (s *Session) fail(err error) {
	s.failOnce.Do(func() {
		s.err = err
		close(s.done)
		s.timerMu.Lock()
		if s.maint != nil {
			s.maint.Stop()
		}
		s.timerMu.Unlock()
		code := reason.Of(err)
		peer, sid := s.Peer().ID.String(), s.ID()
		s.cfg.Logger.Debug("session ended", "peer", peer, "reason", code, "err", err)
		if s.wmu.TryLock() {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			switch {
			case code == reason.Closed && errors.Is(err, errLocalClose):
				_ = s.writeRecordLocked(ctx, recClose, nil)
			case code != reason.Closed && code != reason.PeerAlert && code != reason.TruncatedFrame && code != reason.OversizedFrame:
				_ = s.writeRecordLocked(ctx, recAlert, (&handshake.Alert{Code: alertCode(err)}).Encode())
			}
			cancel()
			s.wmu.Unlock()
		}
		s.conn.Close()
		kind := "closed"
		if code != reason.Closed {
			kind = "refused"
		}
		s.cfg.event(Event{Kind: kind, Role: s.role, Peer: peer, Err: err, SessionID: sid})
		s.notifyNow()
	})
}

var errLocalClose = errors.New("closed by the local agent")

// Close ends the session (telling the peer) and waits for its goroutines.
func (s *Session) Close() error {
	s.fail(reason.Wrap(reason.Closed, errLocalClose, "session"))
	s.wg.Wait()
	return nil
}

// String describes the session for logs.
func (s *Session) String() string {
	p := s.Peer()
	return fmt.Sprintf("session %x (%s with %s)", s.ID(), s.role, p.ID)
}

// rateLimit is a token bucket for the re-authentications a peer causes (s.mu guards it).
type rateLimit struct {
	tokens float64
	last   time.Time
}

// allowReauth takes a token from l: ReauthBurst in a row, then one per reauthEvery.
func (s *Session) allowReauth(l *rateLimit) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now, burst := s.cfg.Clock(), float64(s.cfg.ReauthBurst)
	if l.last.IsZero() {
		l.tokens, l.last = burst, now
	}
	if el := now.Sub(l.last); el > 0 {
		l.tokens = min(burst, l.tokens+float64(el)/float64(s.cfg.reauthEvery()))
		l.last = now
	}
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
