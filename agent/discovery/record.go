// Package discovery is how agents find each other by agent ID (ADR 0070, issue 14): the signed agent
// record (agent ID, key event log head, the libp2p peer ID and the addresses of every transport the agent
// listens on, a sequence number and an expiry, signed by the operational key under the context
// custos/v1/agent-record, with the delegation that certifies that key), its deterministic encoding and
// its verification with the core's rules (key event log, delegation, signature, expiry, the highest
// sequence wins); the Verifier that answers a transport plugin's DHT validator; the Publisher that keeps
// the agent's own record in the DHT; and the control handlers of `agentctl peers find`.
//
// The DHT itself runs inside the libp2p plugin (transports/libp2p); this package holds everything that
// needs the agent's keys or its verification code. docs/protocol.md "Agent records" is the wire format.
package discovery

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/signature"
)

// Format constants and limits.
const (
	// Magic is the first field of every encoded record.
	Magic = "custos-agent-record"
	// Version is the only record format version.
	Version = 1
	// KeyPrefix starts the DHT key of an agent's record: "/custos/<agent ID>".
	KeyPrefix = "/custos/"
	// MaxRecordSize bounds an encoded record (the DHT refuses larger values before decoding).
	MaxRecordSize = 64 << 10
	// MaxAddrs bounds the addresses in a record; MaxAddrLen each address; MaxKeyLog the key event log
	// carried in it (a longer log is left out: verifiers use their cached copy).
	MaxAddrs   = 32
	MaxAddrLen = 1024
	MaxKeyLog  = 48 << 10
	// MaxLifetime is the furthest ahead a verifier accepts a record's expiry.
	MaxLifetime = 24 * time.Hour
	// DefaultLifetime is how long the Publisher's records are valid.
	DefaultLifetime = time.Hour

	maxIDLen        = 128
	maxPeerIDLen    = 128
	maxTransportLen = 32
	maxSigLen       = 128
)

// Addr is one address the agent listens on.
type Addr struct {
	Transport string // "tcp", "ws", "libp2p"
	Addr      string // as the transport reports it (libp2p: a multiaddr ending in /p2p/<peer ID>)
}

// Record is an agent record.
type Record struct {
	Version    uint64
	AgentID    string
	Generation uint64   // generation of the key event log head
	Head       [32]byte // digest of the key event log's last event
	PeerID     string   // the libp2p peer ID ("" when the agent has no libp2p transport)
	Addrs      []Addr
	Seq        uint64 // higher wins; the Publisher uses Unix milliseconds, strictly increasing
	Expires    int64  // Unix seconds, exclusive
	Delegation []byte // encoded delegation certifying the operational key
	KeyLog     []byte // the agent's key event log (JSON lines), or empty when it does not fit
	Signature  []byte // by the operational key over SigningInput
}

// Key is the DHT key of id's record.
func Key(id string) string { return KeyPrefix + id }

func (r *Record) body(w *wire.Writer) *wire.Writer {
	w.Uint64(r.Version).String(r.AgentID).Uint64(r.Generation).Bytes(r.Head[:]).String(r.PeerID).Uint64(uint64(len(r.Addrs)))
	for _, a := range r.Addrs {
		w.String(a.Transport).String(a.Addr)
	}
	return w.Uint64(r.Seq).Int64(r.Expires)
}

// SigningInput is what the operational key signs: the context "custos/v1/agent-record\x00", then version,
// agent ID, generation, head, peer ID, the number of addresses, each address's transport and text,
// sequence and expiry, each length-prefixed (internal/wire). The delegation, the key log and the
// signature are not part of it (the first two are self-authenticating).
func (r *Record) SigningInput() []byte {
	return r.body(signature.NewInput(signature.AgentRecord)).Message()
}

// Encode is the wire form: the magic, the signed fields, then delegation, key log and signature.
func (r *Record) Encode() []byte {
	w := wire.NewWriter(512 + len(r.KeyLog)).String(Magic)
	return r.body(w).Bytes(r.Delegation).Bytes(r.KeyLog).Bytes(r.Signature).Out()
}

// Decode strictly parses a record: exact fields, limits, no trailing bytes. It checks form only; Verify
// checks the rest. Failures are malformed or unknown_version.
func Decode(b []byte) (*Record, error) {
	if len(b) > MaxRecordSize {
		return nil, reason.New(reason.Malformed, "agent record of %d bytes exceeds the limit of %d", len(b), MaxRecordSize)
	}
	rd := wire.NewReader("agent record", b)
	if m := rd.String("magic", len(Magic)); rd.Err() == nil && m != Magic {
		rd.Failf(reason.Malformed, "magic", "is %q, want %q", m, Magic)
	}
	r := &Record{Version: rd.Uint64("version")}
	if rd.Err() == nil && r.Version != Version {
		return nil, reason.New(reason.UnknownVersion, "agent record version %d (this agent speaks %d)", r.Version, Version)
	}
	r.AgentID = rd.String("agent_id", maxIDLen)
	r.Generation = rd.Uint64("generation")
	copy(r.Head[:], rd.Fixed("head", 32))
	r.PeerID = rd.String("peer_id", maxPeerIDLen)
	n := rd.Uint64("addrs")
	if rd.Err() == nil && n > MaxAddrs {
		rd.Failf(reason.Malformed, "addrs", "%d addresses exceeds the limit of %d", n, MaxAddrs)
	}
	for i := uint64(0); rd.Err() == nil && i < n; i++ {
		a := Addr{Transport: rd.String("transport", maxTransportLen), Addr: rd.String("addr", MaxAddrLen)}
		if rd.Err() == nil {
			if err := checkAddr(a); err != nil {
				rd.Failf(reason.Malformed, "addr", "%v", err)
			}
		}
		r.Addrs = append(r.Addrs, a)
	}
	r.Seq = rd.Uint64("seq")
	r.Expires = rd.Int64("expires")
	r.Delegation = bytes.Clone(rd.Bytes("delegation", delegation.MaxSize))
	r.KeyLog = bytes.Clone(rd.Bytes("key_log", MaxKeyLog))
	r.Signature = bytes.Clone(rd.Bytes("signature", maxSigLen))
	if err := rd.End(); err != nil {
		return nil, err
	}
	if _, err := identity.ParseID(r.AgentID); err != nil {
		return nil, reason.Wrap(reason.Malformed, err, "agent record: agent_id")
	}
	if err := printable("peer_id", r.PeerID, true); err != nil {
		return nil, reason.Wrap(reason.Malformed, err, "agent record")
	}
	if len(r.Delegation) == 0 || len(r.Signature) == 0 {
		return nil, reason.New(reason.Malformed, "agent record: delegation or signature is empty")
	}
	if r.Expires <= 0 {
		return nil, reason.New(reason.Malformed, "agent record: expiry %d is not a positive Unix time", r.Expires)
	}
	return r, nil
}

func checkAddr(a Addr) error {
	if err := printable("transport", a.Transport, false); err != nil {
		return err
	}
	for _, c := range a.Transport {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("transport %q: want [a-z0-9-]", a.Transport)
		}
	}
	return printable("address", a.Addr, false)
}

// printable refuses empty (unless allowed) text and control characters: addresses are shown to
// operators and handed to transports.
func printable(what, s string, empty bool) error {
	if s == "" && !empty {
		return fmt.Errorf("%s is empty", what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return fmt.Errorf("%s %q contains a byte outside printable ASCII", what, s)
		}
	}
	return nil
}

// Sign fills in r's signature with op, the operational key that deleg (encoded) certifies.
func Sign(ctx context.Context, op keystore.Signer, deleg []byte, r *Record) error {
	r.Version = Version
	r.Delegation = bytes.Clone(deleg)
	sig, err := op.Sign(ctx, r.SigningInput())
	if err != nil {
		return fmt.Errorf("sign agent record: %w", err)
	}
	r.Signature = sig
	if n := len(r.Encode()); n > MaxRecordSize {
		return fmt.Errorf("agent record of %d bytes exceeds the limit of %d (too many or too long addresses)", n, MaxRecordSize)
	}
	return nil
}

// Logs gives a verifier the key event log state of an agent: CheckLog verifies a presented log against
// the cached one without storing it (agent/peers.Cache.CheckLog: it marks a forking agent compromised);
// State is the cached state when the record carries no log.
type Logs interface {
	CheckLog(id identity.ID, l *identity.Log) (identity.State, error)
	State(id string) (identity.State, bool, error)
}

// Verify checks raw as the record stored under key at now: it decodes; the key names the record's agent;
// the carried (or cached) key event log verifies, is not older than the cached one and has the record's
// head; the delegation verifies against that log; the signature verifies under the delegated key; the
// record is not expired and expires at most MaxLifetime ahead. Failures carry reason codes (malformed,
// record_key_mismatch, key_log_*, record_head_mismatch, delegation_*, bad_signature, record_expired,
// record_too_long).
func Verify(raw []byte, key string, logs Logs, now time.Time) (*Record, error) {
	r, err := Decode(raw)
	if err != nil {
		return nil, err
	}
	if key != Key(r.AgentID) {
		return nil, reason.New(reason.RecordKeyMismatch, "the record of %s was stored under %q", r.AgentID, key)
	}
	id, err := identity.ParseID(r.AgentID)
	if err != nil {
		return nil, reason.Wrap(reason.Malformed, err, "agent record: agent_id")
	}
	exp := time.Unix(r.Expires, 0)
	if !now.Before(exp) {
		return nil, reason.New(reason.RecordExpired, "the record of %s expired at %s, it is now %s", r.AgentID,
			exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if exp.Sub(now) > MaxLifetime {
		return nil, reason.New(reason.RecordTooLong, "the record of %s expires at %s, more than %s ahead", r.AgentID, exp.UTC().Format(time.RFC3339), MaxLifetime)
	}
	var st identity.State
	if len(r.KeyLog) > 0 {
		l, err := identity.DecodeLog(r.KeyLog)
		if err != nil {
			return nil, reason.Wrap(reason.KeyLogInvalid, err, "the key event log in the record of %s", r.AgentID)
		}
		own, err := l.Verify()
		if err != nil {
			return nil, reason.Wrap(reason.KeyLogInvalid, err, "the key event log in the record of %s", r.AgentID)
		}
		if !own.ID.Equal(id) {
			return nil, reason.New(reason.KeyLogInvalid, "the key event log in the record of %s is of %s", r.AgentID, own.ID)
		}
		if own.Head != r.Head || own.Generation != r.Generation {
			return nil, reason.New(reason.RecordHeadMismatch, "the record of %s names head generation %d, its key event log ends at generation %d", r.AgentID, r.Generation, own.Generation)
		}
		if st, err = logs.CheckLog(id, &l); err != nil {
			return nil, err
		}
	} else {
		var ok bool
		if st, ok, err = logs.State(r.AgentID); err != nil {
			return nil, err
		} else if !ok {
			return nil, reason.New(reason.UnknownPeer, "the record of %s carries no key event log and none is cached", r.AgentID)
		}
	}
	if st.Head != r.Head {
		if st.Generation >= r.Generation {
			return nil, reason.New(reason.KeyLogStale, "the record of %s names key-log generation %d; the newest known is %d", r.AgentID, r.Generation, st.Generation)
		}
		return nil, reason.New(reason.KeyLogMissing, "the record of %s names a key-log head this agent does not know and carries no log", r.AgentID)
	}
	d, err := delegation.Decode(r.Delegation)
	if err != nil {
		return nil, err
	}
	op, err := delegation.VerifyOperationalKey(id, st, d, now)
	if err != nil {
		return nil, err
	}
	if err := op.Verify(r.SigningInput(), r.Signature); err != nil {
		return nil, reason.Wrap(reason.BadSignature, err, "the record of %s is not signed by its delegated operational key", r.AgentID)
	}
	return r, nil
}

// Better reports whether a is preferred to b (both valid for the same key): the higher sequence, then
// the later expiry, then the smaller encoding, so that every node selects the same record.
func Better(a, b *Record) bool {
	if a.Seq != b.Seq {
		return a.Seq > b.Seq
	}
	if a.Expires != b.Expires {
		return a.Expires > b.Expires
	}
	return bytes.Compare(a.Encode(), b.Encode()) < 0
}

// CheckNewer refuses r when held, a record already accepted for the same agent, is at least as good:
// record_stale ("higher sequence wins").
func CheckNewer(r, held *Record) error {
	if held != nil && !Better(r, held) {
		return reason.New(reason.RecordStale, "the record of %s has sequence %d; sequence %d is already held", r.AgentID, r.Seq, held.Seq)
	}
	return nil
}

// AddrsOf returns r's addresses of transport.
func (r *Record) AddrsOf(transport string) []string {
	var out []string
	for _, a := range r.Addrs {
		if a.Transport == transport {
			out = append(out, a.Addr)
		}
	}
	return out
}

// AgentIDFromKey returns the agent ID of a DHT key, or an error when key is not "/custos/<ID>".
func AgentIDFromKey(key string) (string, error) {
	id, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok || id == "" {
		return "", reason.New(reason.RecordKeyMismatch, "DHT key %q is not %s<agent ID>", key, KeyPrefix)
	}
	return id, nil
}

// Codes are the failure codes of the discovery domain (reason/registry.go); Verify also raises protocol
// codes (malformed, key_log_*, delegation_*, bad_signature, unknown_peer).
var Codes = []reason.Code{reason.RecordKeyMismatch, reason.RecordHeadMismatch, reason.RecordExpired, reason.RecordTooLong, reason.RecordStale,
	reason.GossipUnknownTopic, reason.GossipNotForUs, reason.CatchupUnsolicited, reason.CatchupExceeded, reason.BlockExpired, reason.BlockStale}
