package mailbox

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Audit event types of the mailbox (docs/privacy.md lists them with their details).
const (
	// Delivered: the recipient acknowledged a stored message (the sender's copy is deleted).
	Delivered audit.EventType = "mailbox.delivered"
	// Refused: a delivery refused, by the recipient (its record) or as reported in its ack (the sender's).
	Refused audit.EventType = "mailbox.refused"
	// Received: this agent accepted a message (Details: message_id; never the content).
	Received audit.EventType = "mailbox.received"
)

// Keys is this agent's delegations (delegation.Manager).
type Keys interface {
	Current(ctx context.Context) (*delegation.Keys, error)
	Live() []*delegation.Keys
}

// Peers is the peer cache (peers.Cache): other agents' verified key event logs and delegations.
type Peers interface {
	Log(id string) (identity.Log, identity.State, bool, error)
	Delegations(id string) ([]*delegation.Delegation, error)
}

// Service is the mailbox of a running agent: Post (the gateway's side), PeerUp and Handle (delivery and
// acknowledgement over sessions, both sides).
type Service struct {
	Self  string
	Store *Store
	Keys  Keys
	Peers Peers
	// Send sends a session message to a connected peer (sessions.Manager.Send).
	Send func(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error
	// Connected, when set, says whether a session with peer is up: a message posted then is delivered
	// at once.
	Connected func(peer string) bool
	// Audit writes an audit record (the daemon's).
	Audit func(typ audit.EventType, actor, subject string, outcome audit.Outcome, details map[string]any)
	// Window is the clock skew allowed for a timestamp in the future (the replay window).
	Window time.Duration
	Now    func() time.Time
	Logger *slog.Logger

	mu     sync.Mutex
	flight map[string]time.Time // recipient\x00id -> when it was last sent (no resend within Window)
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Service) window() time.Duration {
	if s.Window > 0 {
		return s.Window
	}
	return 30 * time.Second
}

// recipientKey is the newest delegation of to that is unexpired and verifies against its cached log.
func (s *Service) recipientKey(to string, now time.Time) (*delegation.Delegation, error) {
	id, err := identity.ParseID(to)
	if err != nil {
		return nil, reason.Wrap(reason.BadRequest, err, "recipient")
	}
	_, st, ok, err := s.Peers.Log(to)
	if err != nil {
		return nil, err
	}
	var ds []*delegation.Delegation
	if ok {
		if ds, err = s.Peers.Delegations(to); err != nil {
			return nil, err
		}
	}
	for _, d := range ds { // newest first
		if _, err := delegation.Verify(id, st, d, now); err == nil {
			return d, nil
		}
	}
	return nil, reason.New(reason.RecipientKeyUnknown, "this agent holds no unexpired delegation (encryption key) of %s: the recipient must connect to this agent once first, then messages can be left for it", to)
}

// Post seals data to the recipient's delegated encryption key (an HPKE envelope of type mailbox, signed
// by this agent's operational key) and stores the sealed envelope; it expires after the retention or
// when the recipient's key does, whichever is first. The plaintext is not kept.
func (s *Service) Post(ctx context.Context, to string, data []byte) (*Stored, error) {
	lim := s.Store.Limits()
	if len(data) > lim.MaxMessage {
		return nil, reason.New(reason.TooLarge, "the message of %d bytes is over the mailbox's limit of %d", len(data), lim.MaxMessage)
	}
	if to == s.Self {
		return nil, reason.New(reason.BadRequest, "a message to this agent itself: nothing to store and forward")
	}
	now := s.now()
	d, err := s.recipientKey(to, now)
	if err != nil {
		return nil, err
	}
	k, err := s.Keys.Current(ctx)
	if err != nil {
		return nil, err
	}
	e, err := envelope.SealHPKE(ctx, envelope.NewHeader(s.Self, to, envelope.Mailbox, now), data, d.KEM, d.EncKey, k.Signer())
	if err != nil {
		return nil, fmt.Errorf("mailbox: seal: %w", err)
	}
	exp := now.Add(lim.Retention).Unix()
	exp = min(exp, d.NotAfter)
	m := &Stored{Recipient: to, MessageID: e.Header.MessageID, Created: now.Unix(), Expires: exp,
		Envelope: e.EncodeBinary(), Delegation: k.Encoded()}
	if err := s.Store.Put(m); err != nil {
		return nil, err
	}
	if s.Connected != nil && s.Connected(to) {
		go s.PeerUp(context.WithoutCancel(ctx), to)
	}
	return m, nil
}

// Sweep prunes expired messages every interval until ctx ends.
func (s *Service) Sweep(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if out, in, err := s.Store.Prune(s.now()); err != nil {
			s.log().Error("mailbox: prune", "err", err)
		} else if out+in > 0 {
			s.log().Info("mailbox: expired messages deleted", "undelivered", out, "received", in)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PeerUp delivers the messages waiting for peer (the session manager calls it when a session comes up).
// Each is sent at most once per window; it stays stored until the recipient acknowledges it.
func (s *Service) PeerUp(ctx context.Context, peer string) {
	now := s.now()
	ms, err := s.Store.Pending(peer, now)
	if err != nil {
		s.log().Error("mailbox: pending messages", "peer", peer, "err", err)
		return
	}
	for _, m := range ms {
		k := peer + "\x00" + m.MessageID
		s.mu.Lock()
		if s.flight == nil {
			s.flight = map[string]time.Time{}
		}
		for fk, t := range s.flight {
			if now.Sub(t) > s.window() {
				delete(s.flight, fk)
			}
		}
		_, busy := s.flight[k]
		if !busy {
			s.flight[k] = now
		}
		s.mu.Unlock()
		if busy {
			continue
		}
		if err := s.Send(ctx, peer, envelope.Mailbox, m.Delivery()); err != nil {
			s.log().Warn("mailbox: delivery failed; kept for the next session", "peer", peer, "message_id", m.MessageID, "err", err)
			s.mu.Lock()
			delete(s.flight, k)
			s.mu.Unlock()
		}
	}
}

// Handle takes a mailbox or mailbox_ack message from peer (after authorization).
func (s *Service) Handle(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	switch t {
	case envelope.Mailbox:
		id, err := s.Receive(ctx, peer, payload)
		if id == "" {
			return err // not even a message ID: nothing to answer
		}
		if err != nil {
			code := reason.Of(err)
			s.Audit(Refused, peer, id, audit.OutcomeDenied, map[string]any{"message_id": id, "reason": string(code), "error": err.Error()})
			if code == reason.Internal || code == reason.MailboxFull {
				return nil // not for good: no ack, the sender delivers it again at the next session
			}
			return s.Send(ctx, peer, envelope.MailboxAck, Ack{MessageID: id, Reason: string(code)}.Encode())
		}
		s.Audit(Received, peer, id, audit.OutcomeSuccess, map[string]any{"message_id": id})
		return s.Send(ctx, peer, envelope.MailboxAck, Ack{MessageID: id}.Encode())
	case envelope.MailboxAck:
		a, err := DecodeAck(payload)
		if err != nil {
			return err
		}
		s.mu.Lock()
		delete(s.flight, peer+"\x00"+a.MessageID)
		s.mu.Unlock()
		found, err := s.Store.Delete(peer, a.MessageID)
		if err != nil || !found {
			return err // an ack of nothing this agent holds for that peer: ignored
		}
		if a.Reason == "" {
			s.Audit(Delivered, peer, a.MessageID, audit.OutcomeSuccess, map[string]any{"message_id": a.MessageID})
		} else {
			s.Audit(Refused, peer, a.MessageID, audit.OutcomeFailure, map[string]any{"message_id": a.MessageID, "reason": a.Reason})
		}
		return nil
	}
	return reason.New(reason.UnknownMessageType, "mailbox: message type %s", t)
}

// Receive checks and opens a delivery from peer, in this order: form, message type and sender (the
// delivering peer sealed it), recipient, age (no older than the retention, no further ahead than the
// window), the sender's cached key event log and the delegation carried with it, the signature, the
// message ID against what this agent accepted before (replayed_message), decryption; then it keeps the
// message. It returns the message ID ("" when the delivery does not decode).
func (s *Service) Receive(ctx context.Context, peer string, payload []byte) (string, error) {
	envB, delB, err := DecodeDelivery(payload)
	if err != nil {
		return "", err
	}
	e, err := envelope.DecodeBinary(envB)
	if err != nil {
		return "", err
	}
	id := e.Header.MessageID
	if e.Header.MessageType != envelope.Mailbox || e.Payload.Cipher == envelope.AES256GCM || e.Payload.Cipher == envelope.None {
		return id, reason.New(reason.UnexpectedMessage, "a mailbox delivery must carry an HPKE envelope of type mailbox, not %s/%s", e.Header.MessageType, e.Payload.Cipher)
	}
	if e.Header.SenderID != peer {
		return id, reason.New(reason.UnexpectedMessage, "a mailbox delivery from %s of an envelope sealed by %s: a gateway delivers only what it sealed", peer, e.Header.SenderID)
	}
	if err := e.CheckRecipient(s.Self); err != nil {
		return id, err
	}
	now, ret := s.now(), s.Store.Limits().Retention
	ts := time.Unix(e.Header.Timestamp, 0)
	if now.Sub(ts) > ret {
		return id, reason.New(reason.StaleTimestamp, "mailbox message %s was sealed %s ago, more than the retention of %s", id, now.Sub(ts).Truncate(time.Second), ret)
	}
	if ts.Sub(now) > s.window() {
		return id, reason.New(reason.FutureTimestamp, "mailbox message %s is stamped %s in the future (check the sender's clock)", id, ts.Sub(now).Truncate(time.Second))
	}
	d, err := delegation.Decode(delB)
	if err != nil {
		return id, err
	}
	l, _, ok, err := s.Peers.Log(peer)
	if err != nil {
		return id, err
	}
	if !ok {
		return id, reason.New(reason.UnknownPeer, "no key event log of %s is cached", peer)
	}
	if err := envelope.VerifyEvidence(e, &l, d); err != nil {
		return id, err
	}
	if s.Store.seen(peer, id) {
		return id, reason.New(reason.ReplayedMessage, "mailbox message %s from %s was already received", id, peer)
	}
	var encs []*suite.EncryptionKey
	for _, k := range s.Keys.Live() {
		encs = append(encs, k.Encryption())
	}
	pt, err := e.OpenHPKE(encs...)
	if err != nil {
		return id, err
	}
	if len(pt) > s.Store.Limits().MaxMessage {
		return id, reason.New(reason.OversizedFrame, "mailbox message %s of %d bytes is over the limit of %d", id, len(pt), s.Store.Limits().MaxMessage)
	}
	return id, s.Store.accept(&Message{From: peer, MessageID: id, Timestamp: e.Header.Timestamp, Received: now.Unix(), Data: pt})
}

// Messages lists the messages this agent accepted.
func (s *Service) Messages() ([]*Message, error) { return s.Store.Inbox() }
