// Package mailbox is store-and-forward for agents that are offline (issue 15, ADR 0093): the gateway
// seals a program's message to the recipient agent's delegated HPKE encryption key (an envelope of type
// "mailbox", signed by this agent's operational key), holds the sealed envelope in state.db (Outbox:
// ciphertext only, bounded per recipient and in total, expiring), and delivers it when a session with the
// recipient comes up (Courier), deleting it only after the recipient's acknowledgement. The recipient side
// (Receiver, Inbox) checks the envelope (recipient, age, the sender's key event log and the delegation
// that signed it, the signature), refuses a message ID it has already accepted (the Inbox is its durable
// replay record, kept as long as a copy could still be delivered), opens it and keeps the plaintext for
// its operator (GET /v1/messages).
package mailbox

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/reason"
)

// Buckets of state.db (docs/privacy.md lists them).
var (
	bucketOut = []byte("mailbox.out")
	bucketIn  = []byte("mailbox.in")
)

// Defaults of Limits.
const (
	DefaultMaxMessage   = 64 << 10
	DefaultPerRecipient = 100
	DefaultTotal        = 10_000
	DefaultRetention    = 7 * 24 * time.Hour
	// DefaultInbox bounds the messages a recipient keeps.
	DefaultInbox = 10_000
	maxID        = 128
	maxRecord    = 4 << 20
)

// Limits bound the mailbox. Zero fields take the defaults.
type Limits struct {
	// MaxMessage bounds a message's plaintext (bytes; larger is refused with too_large, HTTP 413).
	MaxMessage int
	// PerRecipient and Total bound the stored envelopes (mailbox_full).
	PerRecipient int
	Total        int
	// Retention is how long an undelivered envelope is kept, and how long a recipient keeps what it
	// accepted (its replay record): a copy older than this is refused as stale.
	Retention time.Duration
	// Inbox bounds the messages a recipient keeps (the oldest are dropped past retention only: a full
	// inbox refuses with mailbox_full).
	Inbox int
}

// WithDefaults fills the zero fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxMessage <= 0 {
		l.MaxMessage = DefaultMaxMessage
	}
	if l.PerRecipient <= 0 {
		l.PerRecipient = DefaultPerRecipient
	}
	if l.Total <= 0 {
		l.Total = DefaultTotal
	}
	if l.Retention <= 0 {
		l.Retention = DefaultRetention
	}
	if l.Inbox <= 0 {
		l.Inbox = DefaultInbox
	}
	return l
}

// Stored is one sealed message waiting for its recipient. It holds no plaintext.
type Stored struct {
	Recipient string
	MessageID string
	Created   int64 // Unix seconds
	Expires   int64 // Unix seconds
	// Envelope is the sealed envelope's binary form (envelope.EncodeBinary).
	Envelope []byte
	// Delegation is the sender's delegation whose operational key signed it (delegation.Encode): the
	// recipient may never have seen it in a handshake.
	Delegation []byte
}

// Delivery is the payload of a "mailbox" session message: the stored envelope and the delegation.
func (s *Stored) Delivery() []byte {
	return wire.NewWriter(len(s.Envelope) + len(s.Delegation) + 16).Bytes(s.Envelope).Bytes(s.Delegation).Out()
}

func (s *Stored) encode() []byte {
	return wire.NewWriter(len(s.Envelope) + len(s.Delegation) + 256).Uint64(1).String(s.Recipient).String(s.MessageID).
		Int64(s.Created).Int64(s.Expires).Bytes(s.Envelope).Bytes(s.Delegation).Out()
}

// DecodeStored decodes a stored record strictly.
func DecodeStored(b []byte) (*Stored, error) {
	r := wire.NewReader("mailbox record", b)
	if v := r.Uint64("version"); r.Err() == nil && v != 1 {
		return nil, reason.New(reason.UnknownVersion, "mailbox record version %d", v)
	}
	s := &Stored{Recipient: r.String("recipient", maxID), MessageID: r.String("message_id", maxID),
		Created: r.Int64("created"), Expires: r.Int64("expires")}
	s.Envelope = bytes.Clone(r.Bytes("envelope", maxRecord))
	s.Delegation = bytes.Clone(r.Bytes("delegation", 8<<10))
	if err := r.End(); err != nil {
		return nil, err
	}
	return s, nil
}

// DecodeDelivery splits a "mailbox" session message's payload into the envelope and the delegation.
func DecodeDelivery(b []byte) (env, deleg []byte, err error) {
	r := wire.NewReader("mailbox delivery", b)
	env, deleg = r.Bytes("envelope", maxRecord), r.Bytes("delegation", 8<<10)
	if err := r.End(); err != nil {
		return nil, nil, err
	}
	return env, deleg, nil
}

// Ack is the payload of a "mailbox_ack" session message: the recipient accepted the message (Reason
// empty) or refused it for good (Reason is the code). Either way the sender deletes its copy.
type Ack struct {
	MessageID string
	Reason    string
}

// Encode is the ack's binary form.
func (a Ack) Encode() []byte {
	return wire.NewWriter(64).String(a.MessageID).String(a.Reason).Out()
}

// DecodeAck decodes an ack strictly.
func DecodeAck(b []byte) (Ack, error) {
	r := wire.NewReader("mailbox ack", b)
	a := Ack{MessageID: r.String("message_id", maxID), Reason: r.String("reason", 64)}
	return a, r.End()
}

func key(peer, id string) []byte { return []byte(peer + "\x00" + id) }

// Store is the mailbox's two buckets in state.db.
type Store struct {
	db  *bbolt.DB
	lim Limits
}

// NewStore creates the buckets.
func NewStore(db *bbolt.DB, lim Limits) (*Store, error) {
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketOut, bucketIn} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	return &Store{db: db, lim: lim.WithDefaults()}, nil
}

// SetLimits replaces the limits (zero fields: the defaults); call it before the store is used.
func (s *Store) SetLimits(l Limits) { s.lim = l.WithDefaults() }

// Limits are the store's limits (defaults filled).
func (s *Store) Limits() Limits { return s.lim }

// MailboxFull is the code of a full mailbox (per recipient, in total, or a full inbox).
const MailboxFull = reason.MailboxFull

func countPrefix(b *bbolt.Bucket, prefix []byte) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// Put stores a sealed message, refusing it when the recipient's or the whole mailbox is full.
func (s *Store) Put(m *Stored) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		if n := countPrefix(b, []byte(m.Recipient+"\x00")); n >= s.lim.PerRecipient {
			return reason.New(reason.MailboxFull, "%d messages already wait for %s (the per-recipient limit): retry once it has connected", n, m.Recipient)
		}
		if n := b.Stats().KeyN; n >= s.lim.Total {
			return reason.New(reason.MailboxFull, "the mailbox holds %d messages (its limit): retry later", n)
		}
		return b.Put(key(m.Recipient, m.MessageID), m.encode())
	})
}

// Pending returns the unexpired messages waiting for recipient, oldest first.
func (s *Store) Pending(recipient string, now time.Time) ([]*Stored, error) {
	var out []*Stored
	err := s.db.View(func(tx *bbolt.Tx) error {
		prefix := []byte(recipient + "\x00")
		c := tx.Bucket(bucketOut).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			m, err := DecodeStored(v)
			if err != nil {
				return reason.Wrap(reason.Internal, err, "mailbox: the stored record %q is corrupt", k)
			}
			if m.Expires >= now.Unix() {
				out = append(out, m)
			}
		}
		return nil
	})
	sortByCreated(out)
	return out, err
}

func sortByCreated(ms []*Stored) {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && ms[j].Created < ms[j-1].Created; j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
}

// Delete removes recipient's message id; false when there was none.
func (s *Store) Delete(recipient, id string) (bool, error) {
	found := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		k := key(recipient, id)
		if b.Get(k) == nil {
			return nil
		}
		found = true
		return b.Delete(k)
	})
	return found, err
}

// Count is the number of stored (undelivered) messages.
func (s *Store) Count() (n int, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error { n = tx.Bucket(bucketOut).Stats().KeyN; return nil })
	return n, err
}

// Message is one message a recipient accepted.
type Message struct {
	From      string `json:"from"`
	MessageID string `json:"message_id"`
	Timestamp int64  `json:"timestamp"` // when the gateway sealed it (Unix seconds)
	Received  int64  `json:"received"`  // when it arrived (Unix seconds)
	Data      []byte `json:"data"`
}

func (m *Message) encode() []byte {
	return wire.NewWriter(len(m.Data) + 256).Uint64(1).String(m.From).String(m.MessageID).Int64(m.Timestamp).Int64(m.Received).Bytes(m.Data).Out()
}

func decodeMessage(b []byte) (*Message, error) {
	r := wire.NewReader("inbox record", b)
	if v := r.Uint64("version"); r.Err() == nil && v != 1 {
		return nil, reason.New(reason.UnknownVersion, "inbox record version %d", v)
	}
	m := &Message{From: r.String("from", maxID), MessageID: r.String("message_id", maxID), Timestamp: r.Int64("timestamp"), Received: r.Int64("received")}
	m.Data = bytes.Clone(r.Bytes("data", maxRecord))
	return m, r.End()
}

// errReplayed marks a message ID the inbox holds already.
var errReplayed = errors.New("replayed")

// accept records m unless (From, MessageID) is known: replayed_message. A full inbox: mailbox_full.
func (s *Store) accept(m *Message) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIn)
		k := key(m.From, m.MessageID)
		if b.Get(k) != nil {
			return errReplayed
		}
		if n := b.Stats().KeyN; n >= s.lim.Inbox {
			return reason.New(reason.MailboxFull, "the inbox holds %d messages (its limit)", n)
		}
		return b.Put(k, m.encode())
	})
	if errors.Is(err, errReplayed) {
		return reason.New(reason.ReplayedMessage, "mailbox message %s from %s was already received", m.MessageID, m.From)
	}
	return err
}

// Inbox returns the messages this agent accepted, oldest first.
func (s *Store) Inbox() ([]*Message, error) {
	var out []*Message
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketIn).ForEach(func(k, v []byte) error {
			m, err := decodeMessage(v)
			if err != nil {
				return reason.Wrap(reason.Internal, err, "mailbox: the inbox record %q is corrupt", k)
			}
			out = append(out, m)
			return nil
		})
	})
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Received < out[j-1].Received; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, err
}

// Prune deletes undelivered messages past their expiry and inbox records older than the retention (a
// copy of those would be refused as stale anyway). It returns how many of each it deleted.
func (s *Store) Prune(now time.Time) (out, in int, err error) {
	cut := now.Add(-s.lim.Retention).Unix()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		var dead [][]byte
		if err := tx.Bucket(bucketOut).ForEach(func(k, v []byte) error {
			if m, err := DecodeStored(v); err != nil || m.Expires < now.Unix() {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := tx.Bucket(bucketOut).Delete(k); err != nil {
				return err
			}
		}
		out, dead = len(dead), nil
		if err := tx.Bucket(bucketIn).ForEach(func(k, v []byte) error {
			if m, err := decodeMessage(v); err != nil || m.Timestamp < cut {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range dead {
			if err := tx.Bucket(bucketIn).Delete(k); err != nil {
				return err
			}
		}
		in = len(dead)
		return nil
	})
	return out, in, err
}

// seen reports whether the inbox holds (from, id).
func (s *Store) seen(from, id string) bool {
	found := false
	_ = s.db.View(func(tx *bbolt.Tx) error { found = tx.Bucket(bucketIn).Get(key(from, id)) != nil; return nil })
	return found
}
