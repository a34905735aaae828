package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/custos-agent/custos/internal/strictjson"
	fields "github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/signature"
)

// RecordVersion is the version of records without sealed fields, and the version every checkpoint
// signature names. Version 2 signs, in every checkpoint, the kind of record that carries it (checkpoint,
// seal, audit.pruned and its range); logs of version 1 are refused (none was deployed; see
// docs/adr/0004-audit-log.md).
const RecordVersion = 2

// SealedVersion is the version of a record with sealed fields (ADR 0099): it has RecordVersion's form
// plus "sealed", the list of its fields encrypted under a subject's key, which the record hash covers.
// A log holds records of both versions; a checkpoint is always a RecordVersion record.
const SealedVersion = 3

// Limits of one record.
const (
	// MaxRecordSize bounds one encoded record (one line, newline included).
	MaxRecordSize = 64 << 10
	// maxFieldLen bounds Actor and Subject.
	maxFieldLen = 1024
)

// Record is one audit event. A caller of Append fills Type, Actor, Subject, Outcome, Details and
// optionally Time; the log assigns Seq, Time (when zero), Prev and Hash. Records read back from disk
// have every field set; their Details hold JSON values (string, bool, json.Number, nil, []any,
// map[string]any).
type Record struct {
	Seq     uint64         // position in the log, from 1, no gaps
	Time    time.Time      // when the event happened (UTC, nanoseconds)
	Type    EventType      // what happened (see the constants)
	Actor   string         // who did it (an agent ID, "operator", a plugin name)
	Subject string         // what it was done to (an agent ID, a key URI, a file, an operation)
	Outcome Outcome        // success, failure, denied or info
	Details map[string]any // event-specific facts; never secrets (see CheckDetails)

	// Sealed lists, on a record read back, its fields encrypted under a subject's key ("actor",
	// "subject", "details.KEY"), whose values are sealed values (ParseSealed) until Unseal opens them.
	// Append ignores it: the log seals what Options.SubjectKeys and its rules say (ADR 0099).
	Sealed []string

	Checkpoint *Checkpoint // set on records that carry a signature over the chain
	Prev       string      // base64url hash of the previous record ("" for the first record ever)
	Hash       string      // base64url hash of this record (see docs/adr/0004-audit-log.md)
}

// Checkpoint is a signature by the agent's identity key over the chain up to and including record
// HeadSeq, whose hash is Head. The signed input (checkpointInput) is signature purpose AuditCheckpoint
// with the record version, agent ID, Gen, what the record carrying it is (its type, its reason, the seq
// of a closing seal, the range an audit.pruned record removed), HeadSeq and the 32-byte head hash. A
// verifier takes the key of generation Gen from the
// agent's verified key event log; Kid (the base64url PublicKey.Digest of the signing key) only helps it
// say which key was used when that one is wrong.
type Checkpoint struct {
	Gen     uint64 `json:"gen"`
	Kid     string `json:"kid"`
	HeadSeq uint64 `json:"head_seq"`
	Head    string `json:"head"`
	Sig     string `json:"sig"`
}

// wire is the JSON form of a record, one per line. Field order is the order on disk; a record on disk
// must be exactly json.Marshal of its decoded wire form (canonical), so any changed byte is caught.
type wire struct {
	V       int             `json:"v"`
	Seq     uint64          `json:"seq"`
	Time    string          `json:"time"`
	Type    string          `json:"type"`
	Actor   string          `json:"actor"`
	Subject string          `json:"subject"`
	Outcome string          `json:"outcome"`
	Details json.RawMessage `json:"details"`
	Sealed  []string        `json:"sealed,omitempty"` // SealedVersion only
	CP      *Checkpoint     `json:"cp,omitempty"`
	Prev    string          `json:"prev"`
	Hash    string          `json:"hash"`
}

const timeFormat = time.RFC3339Nano

// b64 is the strict unpadded base64url encoding of every Custos text format (identity.Base64 spells the
// same encoding; audit does not import identity for it).
var b64 = base64.RawURLEncoding.Strict()

// hashPrefix separates record hashes from every other SHA-256 in the project.
const hashPrefix = "custos/v1/audit-record\x00"

// recordHash is SHA-256 over hashPrefix and each field length-prefixed (4-byte big-endian length),
// integers as 8-byte big-endian values: v, type, actor, subject, outcome, details (the JSON bytes as
// stored), on a SealedVersion record the number of sealed paths and each path, then "" when there is no checkpoint or "cp", gen, kid, head_seq, head, sig; and last the
// fields that depend on the record's place in the chain: seq, time, prev. (The fixed part comes first so
// that an appender can hash it before the writer knows the place.)
func recordHash(w *wire) [32]byte {
	h := fixedHash(w)
	return placeHash(h, w.Seq, w.Time, w.Prev)
}

// fixedHash hashes the fields that do not depend on the record's place in the chain.
func fixedHash(w *wire) hash.Hash {
	h := sha256.New()
	h.Write([]byte(hashPrefix))
	u64(h, uint64(w.V))
	field(h, []byte(w.Type))
	field(h, []byte(w.Actor))
	field(h, []byte(w.Subject))
	field(h, []byte(w.Outcome))
	field(h, w.Details)
	if w.V >= SealedVersion {
		u64(h, uint64(len(w.Sealed)))
		for _, p := range w.Sealed {
			field(h, []byte(p))
		}
	}
	if w.CP == nil {
		field(h, nil)
	} else {
		field(h, []byte("cp"))
		u64(h, w.CP.Gen)
		field(h, []byte(w.CP.Kid))
		u64(h, w.CP.HeadSeq)
		field(h, []byte(w.CP.Head))
		field(h, []byte(w.CP.Sig))
	}
	return h
}

// placeHash finishes a fixedHash with seq, time and prev. It does not change h.
func placeHash(h hash.Hash, seq uint64, t, prev string) [32]byte {
	c, err := h.(hash.Cloner).Clone()
	if err != nil {
		panic("audit: sha256 clone: " + err.Error()) // the standard library's SHA-256 always clones
	}
	u64(c, seq)
	field(c, []byte(t))
	field(c, []byte(prev))
	var d [32]byte
	c.Sum(d[:0])
	return d
}

// pending is a record prepared for the writer: everything but its place in the chain is encoded and
// hashed already (by the appender's goroutine, so the single writer does little per record).
type pending struct {
	mid   []byte    // `"type":...,"details":{...}[,"cp":{...}]`: the JSON between time and prev
	fixed hash.Hash // fixedHash of the record
	time  string    // the caller's time, or "" for the writer's clock
	t     time.Time // parsed time when time is set
	cp    bool
	v     int       // the record's version
	seal  *sealPlan // fields to seal once the record's seq is known (the writer finishes it)
}

// newPending encodes and hashes the fixed part of w. w.Details must be compact JSON as json.Marshal
// writes it (sanitize makes it so).
func newPending(w *wire) (*pending, error) {
	mid := make([]byte, 0, 64+len(w.Actor)+len(w.Subject)+len(w.Details))
	mid = append(mid, `"type":`...)
	mid = appendJSONString(mid, w.Type)
	mid = append(mid, `,"actor":`...)
	mid = appendJSONString(mid, w.Actor)
	mid = append(mid, `,"subject":`...)
	mid = appendJSONString(mid, w.Subject)
	mid = append(mid, `,"outcome":`...)
	mid = appendJSONString(mid, w.Outcome)
	mid = append(mid, `,"details":`...)
	mid = append(mid, w.Details...)
	if len(w.Sealed) > 0 {
		mid = append(mid, `,"sealed":[`...)
		for i, p := range w.Sealed {
			if i > 0 {
				mid = append(mid, ',')
			}
			mid = appendJSONString(mid, p)
		}
		mid = append(mid, ']')
	}
	if w.CP != nil {
		cp, err := json.Marshal(w.CP)
		if err != nil {
			return nil, fmt.Errorf("encode audit checkpoint: %w", err)
		}
		mid = append(mid, `,"cp":`...)
		mid = append(mid, cp...)
	}
	p := &pending{mid: mid, fixed: fixedHash(w), time: w.Time, cp: w.CP != nil, v: w.V}
	if len(p.mid)+256 > MaxRecordSize {
		return nil, fmt.Errorf("%w: the record is %d bytes encoded, more than %d: shorten its details",
			ErrInvalidRecord, len(p.mid)+256, MaxRecordSize)
	}
	return p, nil
}

// appendValue appends v as json.Marshal writes it, for the plain types details usually hold (strings,
// booleans, integers, nil, and maps and slices of those). ok is false for anything else (floats, numbers
// as text, structs): the caller then uses json.Marshal.
func appendValue(buf []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(buf, "null"...), true
	case string:
		return appendJSONString(buf, x), true
	case bool:
		return strconv.AppendBool(buf, x), true
	case int:
		return strconv.AppendInt(buf, int64(x), 10), true
	case int64:
		return strconv.AppendInt(buf, x, 10), true
	case int32:
		return strconv.AppendInt(buf, int64(x), 10), true
	case uint64:
		return strconv.AppendUint(buf, x, 10), true
	case uint32:
		return strconv.AppendUint(buf, uint64(x), 10), true
	case uint:
		return strconv.AppendUint(buf, uint64(x), 10), true
	case []string:
		if x == nil {
			return append(buf, "null"...), true
		}
		buf = append(buf, '[')
		for i, e := range x {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, e)
		}
		return append(buf, ']'), true
	case []any:
		if x == nil {
			return append(buf, "null"...), true
		}
		buf = append(buf, '[')
		for i, e := range x {
			if i > 0 {
				buf = append(buf, ',')
			}
			var ok bool
			if buf, ok = appendValue(buf, e); !ok {
				return buf, false
			}
		}
		return append(buf, ']'), true
	case map[string]any:
		if x == nil {
			return append(buf, "null"...), true
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf = append(buf, '{')
		for i, k := range keys {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, k)
			buf = append(buf, ':')
			var ok bool
			if buf, ok = appendValue(buf, x[k]); !ok {
				return buf, false
			}
		}
		return append(buf, '}'), true
	}
	return buf, false
}

// appendJSONString appends s as encoding/json writes it: plain printable ASCII as is (the common case,
// without reflection), anything else through json.Marshal itself.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(buf, q...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// appendLine appends the record's line (with its newline) for its place in the chain and returns it
// with the record's hash. It produces exactly json.Marshal of the record's wire form.
func (p *pending) appendLine(buf []byte, seq uint64, t, prev string) ([]byte, [32]byte) {
	d := placeHash(p.fixed, seq, t, prev)
	buf = append(buf, `{"v":`...)
	buf = strconv.AppendUint(buf, uint64(p.v), 10)
	buf = append(buf, `,"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"time":"`...)
	buf = append(buf, t...)
	buf = append(buf, `",`...)
	buf = append(buf, p.mid...)
	buf = append(buf, `,"prev":"`...)
	buf = append(buf, prev...)
	buf = append(buf, `","hash":"`...)
	buf = b64.AppendEncode(buf, d[:])
	buf = append(buf, "\"}\n"...)
	return buf, d
}

// field and u64 write the length-prefixed encoding of internal/wire into the hash.
func field(h hash.Hash, b []byte) { fields.HashBytes(h, b) }

func u64(h hash.Hash, v uint64) { fields.HashUint64(h, v) }

// cpBinding is what a checkpoint signature says about the record that carries it, so that a signed
// block copied into another record (a forged seal, a forged audit.pruned) no longer verifies.
type cpBinding struct {
	typ    EventType // LogCheckpoint or LogPruned
	reason string    // the record's "reason" detail; "close" on a checkpoint makes it the seal
	seq    uint64    // the seal's own seq (head seq + 1); 0 for a checkpoint signed in the background,
	// whose place is only known when the signature returns (appends go on meanwhile)
	first, last uint64 // audit.pruned: the first and last seq removed; 0 otherwise
}

// checkpointInput is exactly what a checkpoint signature covers: purpose AuditCheckpoint, then record
// version, agent ID, gen, record type, reason, seal seq, first and last seq removed, head seq, head.
func checkpointInput(agentID string, gen uint64, b cpBinding, headSeq uint64, head []byte) *signature.Input {
	in := signature.NewInput(signature.AuditCheckpoint).Uint64(RecordVersion).String(agentID).Uint64(gen)
	in.String(string(b.typ))
	in.String(b.reason)
	in.Uint64(b.seq)
	in.Uint64(b.first)
	in.Uint64(b.last)
	return in.Uint64(headSeq).Bytes(head)
}

// bindingOf reads what a checkpoint record says it is from its type and details, as the writer signed
// it. A checkpoint's details are exactly {"reason":...}; an audit.pruned record's first_seq and
// through_seq must be a range ending at its head.
func bindingOf(w *wire) (cpBinding, error) {
	var d struct {
		Reason     string  `json:"reason"`
		FirstSeq   *uint64 `json:"first_seq"`
		ThroughSeq *uint64 `json:"through_seq"`
	}
	if err := json.Unmarshal(w.Details, &d); err != nil {
		return cpBinding{}, fmt.Errorf("its details do not say what it is: %v", err)
	}
	b := cpBinding{typ: EventType(w.Type), reason: d.Reason}
	if d.Reason == "" {
		return b, errors.New("its details carry no reason")
	}
	switch b.typ {
	case LogCheckpoint:
		want, _ := json.Marshal(map[string]string{"reason": d.Reason})
		if !bytes.Equal(want, w.Details) {
			return b, errors.New(`a checkpoint's details must be exactly {"reason":...}`)
		}
		if isSeal(w) {
			if w.Seq != w.CP.HeadSeq+1 {
				return b, fmt.Errorf("a seal must directly follow its head, but its head is seq %d", w.CP.HeadSeq)
			}
			b.seq = w.Seq
		}
	case LogPruned:
		if d.FirstSeq == nil || d.ThroughSeq == nil || *d.FirstSeq == 0 || *d.FirstSeq > *d.ThroughSeq || *d.ThroughSeq != w.CP.HeadSeq {
			return b, fmt.Errorf("its removed range (first_seq, through_seq) is missing or does not end at its head seq %d", w.CP.HeadSeq)
		}
		b.first, b.last = *d.FirstSeq, *d.ThroughSeq
	}
	return b, nil
}

// encodeLine fills in the hash of w and returns its line (with the trailing newline).
func encodeLine(w *wire) ([]byte, [32]byte, error) {
	d := recordHash(w)
	w.Hash = b64.EncodeToString(d[:])
	b, err := json.Marshal(w)
	if err != nil {
		return nil, d, fmt.Errorf("encode audit record: %w", err)
	}
	b = append(b, '\n')
	if len(b) > MaxRecordSize {
		return nil, d, fmt.Errorf("%w: the record is %d bytes encoded, more than %d: shorten its details",
			ErrInvalidRecord, len(b), MaxRecordSize)
	}
	return b, d, nil
}

// Errors of decoding and verification. A VerifyError wraps one of them.
var (
	// ErrMalformed: a line is not a well-formed record in canonical form (an altered byte, a foreign file).
	ErrMalformed = errors.New("malformed audit record")
	// ErrTorn: the last line of a segment is incomplete (a write cut short by a crash).
	ErrTorn = errors.New("torn audit record")
	// ErrBrokenChain: a record's hash, sequence number or link to its predecessor is wrong (a record was
	// altered, deleted, reordered, or a segment was removed or swapped).
	ErrBrokenChain = errors.New("audit hash chain broken")
	// ErrBadCheckpoint: a checkpoint's signature does not verify with the key its generation has in the
	// key event log, or it names a generation or key the log does not have.
	ErrBadCheckpoint = errors.New("audit checkpoint does not verify")
	// ErrUnsigned: records at the end are not covered by any checkpoint although no writer is running
	// (the writer crashed and the log was not opened since, or the tail was cut).
	ErrUnsigned = errors.New("audit records not covered by a signed checkpoint")
	// ErrNoLog: there is no audit log (no directory or no segments).
	ErrNoLog = errors.New("no audit log")
)

// decodeLine strictly decodes one line (without its newline) and checks that it is canonical and that
// its stored hash is right. It returns the decoded wire form and the computed hash.
func decodeLine(line []byte) (*wire, [32]byte, error) {
	var w wire
	var zero [32]byte
	if err := strictjson.Decode(line, &w, 0); err != nil {
		return nil, zero, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if w.V == 1 {
		return &w, zero, fmt.Errorf("%w: record version 1 is the format whose checkpoints did not sign what carried them; "+
			"this agent reads only version %d (no version 1 log was deployed: move the old audit directory aside and start a new log)",
			ErrMalformed, RecordVersion)
	}
	if w.V != RecordVersion && w.V != SealedVersion {
		return &w, zero, fmt.Errorf("%w: record version %d (this agent reads %d and %d)", ErrMalformed, w.V, RecordVersion, SealedVersion)
	}
	if len(w.Details) == 0 || w.Details[0] != '{' {
		return &w, zero, fmt.Errorf("%w: details must be a JSON object", ErrMalformed)
	}
	if err := checkSealed(&w); err != nil {
		return &w, zero, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	again, err := json.Marshal(&w)
	if err != nil || !bytes.Equal(again, line) {
		return &w, zero, fmt.Errorf("%w: the line is not in canonical form (a byte was changed)", ErrMalformed)
	}
	d := recordHash(&w)
	if w.Hash != b64.EncodeToString(d[:]) {
		return &w, d, fmt.Errorf("%w: the stored hash does not match the record's content (the record was altered)", ErrBrokenChain)
	}
	if _, err := time.Parse(timeFormat, w.Time); err != nil {
		return &w, d, fmt.Errorf("%w: time %q: %v", ErrMalformed, w.Time, err)
	}
	return &w, d, nil
}

// record converts a decoded wire form into a Record.
func (w *wire) record() (Record, error) {
	t, err := time.Parse(timeFormat, w.Time)
	if err != nil {
		return Record{}, fmt.Errorf("%w: time %q: %v", ErrMalformed, w.Time, err)
	}
	var details map[string]any
	dec := json.NewDecoder(bytes.NewReader(w.Details))
	dec.UseNumber()
	if err := dec.Decode(&details); err != nil {
		return Record{}, fmt.Errorf("%w: details: %v", ErrMalformed, err)
	}
	r := Record{
		Seq: w.Seq, Time: t, Type: EventType(w.Type), Actor: w.Actor, Subject: w.Subject,
		Outcome: Outcome(w.Outcome), Details: details, Prev: w.Prev, Hash: w.Hash,
		Sealed: slices.Clone(w.Sealed),
	}
	if w.CP != nil {
		cp := *w.CP
		r.Checkpoint = &cp
	}
	return r, nil
}

// SecretPolicy says what Append does with a detail that looks like a secret.
type SecretPolicy int

const (
	// RedactSecrets (the default) replaces the value with "[redacted]" and lists the redacted keys in
	// the record's "audit_redacted" detail: the event is still recorded, the secret never is.
	RedactSecrets SecretPolicy = iota
	// RefuseSecrets makes Append fail with ErrSecret and write nothing.
	RefuseSecrets
)

// Redacted is the value that replaces a secret.
const Redacted = "[redacted]"

// ErrSecret: a record's details hold a key name on the deny-list or a value that looks like a secret.
var ErrSecret = errors.New("audit details would contain a secret")

// ErrInvalidRecord: a record given to Append is not acceptable (bad type, missing detail, too large).
var ErrInvalidRecord = errors.New("invalid audit record")

// deniedWords are words that make a detail key a secret wherever they occur in it ("user_pin",
// "soPIN", "api-key", "privateKey", "client_secret"). Matching is by word, so "shipping" or "mapping"
// are not caught by "pin".
var deniedWords = map[string]bool{
	"pin": true, "pins": true, "sopin": true, "userpin": true, "puk": true,
	"passphrase": true, "password": true, "passwd": true, "pwd": true,
	"secret": true, "secrets": true, "private": true, "privkey": true, "priv": true,
	"token": true, "tokens": true, "apikey": true, "credential": true, "credentials": true,
	"seed": true, "mnemonic": true, "otp": true, "cookie": true, "bearer": true, "authorization": true,
}

// deniedPairs are two consecutive words that make a secret key ("api_key", "session_key").
var deniedPairs = map[[2]string]bool{
	{"api", "key"}: true, {"session", "key"}: true, {"shared", "key"}: true, {"symmetric", "key"}: true,
	{"encryption", "key"}: true, {"signing", "key"}: true, {"master", "key"}: true, {"key", "material"}: true,
}

// allowedKeys are exact (lowercased) keys that contain a denied word but name no secret.
var allowedKeys = map[string]bool{
	"token_label": true, // a PKCS#11 token's label
}

// secretValueMarkers are substrings (compared case-insensitively) of values that are secrets whatever
// their key is called.
var secretValueMarkers = []string{
	"pin-value=",       // an RFC 7512 URI carrying the PIN itself
	"private key-----", // a PEM private key
	"age-secret-key-",  // an age identity
	"bearer ",          // an HTTP bearer credential
}

// keyWords splits a detail key into lowercase words at non-alphanumerics and camelCase boundaries.
func keyWords(k string) []string {
	var words []string
	var cur []rune
	runes := []rune(k)
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	isUpper := func(r rune) bool { return r >= 'A' && r <= 'Z' }
	isLower := func(r rune) bool { return r >= 'a' && r <= 'z' }
	isDigit := func(r rune) bool { return r >= '0' && r <= '9' }
	for i, r := range runes {
		switch {
		case !isUpper(r) && !isLower(r) && !isDigit(r):
			flush()
		case isUpper(r) && len(cur) > 0:
			prev := runes[i-1]
			nextLower := i+1 < len(runes) && isLower(runes[i+1])
			if isLower(prev) || isDigit(prev) || (isUpper(prev) && nextLower) {
				flush()
			}
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
	}
	flush()
	return words
}

// secretKey reports whether a detail key names a secret.
func secretKey(k string) bool {
	if allowedKeys[strings.ToLower(k)] {
		return false
	}
	words := keyWords(k)
	for i, w := range words {
		if deniedWords[w] {
			return true
		}
		if i > 0 && deniedPairs[[2]string{words[i-1], w}] {
			return true
		}
	}
	// A key written as one word ("userpassword", "apikey", "clientsecret").
	joined := strings.Join(words, "")
	for _, w := range []string{"password", "passphrase", "secret", "privatekey", "apikey", "sopin", "userpin"} {
		if strings.Contains(joined, w) {
			return true
		}
	}
	return false
}

func secretValue(s string) bool {
	for _, m := range secretValueMarkers {
		if containsFoldASCII(s, m) {
			return true
		}
	}
	return false
}

// containsFoldASCII reports whether s contains the lowercase ASCII string m, ignoring ASCII case,
// without allocating.
func containsFoldASCII(s, m string) bool {
	for i := 0; i+len(m) <= len(s); i++ {
		j := 0
		for ; j < len(m); j++ {
			c := s[i+j]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != m[j] {
				break
			}
		}
		if j == len(m) {
			return true
		}
	}
	return false
}

// keyCache remembers which detail keys are secret: a log sees the same few keys again and again.
// It stops growing at maxCachedKeys.
type keyCache struct {
	m sync.Map // string -> bool
	n atomic.Int32
}

const maxCachedKeys = 4096

func (c *keyCache) secret(k string) bool {
	if c == nil {
		return secretKey(k)
	}
	if v, ok := c.m.Load(k); ok {
		return v.(bool)
	}
	v := secretKey(k)
	if c.n.Load() < maxCachedKeys {
		c.n.Add(1)
		c.m.Store(k, v)
	}
	return v
}

// clean reports whether a caller's details value holds nothing to redact. known is false when v has a
// type it does not walk (a struct, say): the slow path then decides.
func clean(v any, keys *keyCache) (ok, known bool) {
	switch x := v.(type) {
	case nil, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64, json.Number:
		return true, true
	case string:
		return !secretValue(x), true
	case []string:
		for _, e := range x {
			if secretValue(e) {
				return false, true
			}
		}
		return true, true
	case []any:
		for _, e := range x {
			if ok, known := clean(e, keys); !ok || !known {
				return ok, known
			}
		}
		return true, true
	case map[string]any:
		for k, e := range x {
			if keys.secret(k) {
				return false, true
			}
			if ok, known := clean(e, keys); !ok || !known {
				return ok, known
			}
		}
		return true, true
	case map[string]string:
		for k, e := range x {
			if keys.secret(k) || secretValue(e) {
				return false, true
			}
		}
		return true, true
	}
	return false, false
}

// CheckDetails reports the paths ("pin", "keystore.password", "uris[2]") of every detail that the log
// would redact (or refuse under RefuseSecrets): a key whose words are on the deny-list (pin, passphrase,
// password, secret, private, token, credential, seed, api key, ...) or a string value that carries a
// secret (a "pin-value=" URI attribute, a PEM private key, an age secret key, a bearer credential). It
// returns nil when details are clean. Values are never part of the result.
func CheckDetails(details map[string]any) ([]string, error) {
	_, paths, err := sanitize(details, RedactSecrets, nil)
	return paths, err
}

// sanitize turns details into their canonical JSON (object, keys sorted, numbers as written) with
// secrets redacted; under RefuseSecrets it fails with ErrSecret instead. The result always is an object.
func sanitize(details map[string]any, policy SecretPolicy, keys *keyCache) (json.RawMessage, []string, error) {
	if len(details) == 0 {
		return json.RawMessage("{}"), nil, nil
	}
	if ok, known := clean(details, keys); ok && known {
		// The common case: plain values, nothing to redact.
		if raw, ok := appendValue(make([]byte, 0, 128), details); ok {
			return raw, nil, nil
		}
	}
	raw, err := json.Marshal(details)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: details are not JSON-encodable: %v", ErrInvalidRecord, err)
	}
	var tree any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&tree); err != nil {
		return nil, nil, fmt.Errorf("%w: details: %v", ErrInvalidRecord, err)
	}
	var paths []string
	tree = redact(tree, "", &paths)
	if len(paths) > 0 {
		if policy == RefuseSecrets {
			return nil, paths, fmt.Errorf("%w: remove %s from the details (key names like pin, password, "+
				"secret, private, token are refused; so are values carrying a PIN or private key)", ErrSecret, strings.Join(paths, ", "))
		}
		obj := tree.(map[string]any)
		list := make([]any, len(paths))
		for i, p := range paths {
			list[i] = p
		}
		obj["audit_redacted"] = list
	}
	out, err := json.Marshal(tree)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: details: %v", ErrInvalidRecord, err)
	}
	return out, paths, nil
}

func redact(v any, path string, paths *[]string) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if secretKey(k) {
				x[k] = Redacted
				*paths = append(*paths, p)
				continue
			}
			x[k] = redact(val, p, paths)
		}
		return x
	case []any:
		for i, val := range x {
			x[i] = redact(val, fmt.Sprintf("%s[%d]", path, i), paths)
		}
		return x
	case string:
		if secretValue(x) {
			*paths = append(*paths, path)
			return Redacted
		}
		return x
	}
	return v
}

// cleanString makes s valid UTF-8 (JSON would otherwise change it between hashing and storing).
func cleanString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// prepare validates a caller's record and returns its wire form without seq, prev and hash.
func prepare(r *Record, policy SecretPolicy, internal bool, keys *keyCache) (*wire, error) {
	if err := r.Type.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRecord, err)
	}
	if r.Type.internal() && !internal {
		return nil, fmt.Errorf("%w: event type %q is reserved for the log itself", ErrInvalidRecord, r.Type)
	}
	if r.Outcome == "" {
		r.Outcome = OutcomeInfo
	}
	if !r.Outcome.valid() {
		return nil, fmt.Errorf("%w: outcome %q: use success, failure, denied or info", ErrInvalidRecord, r.Outcome)
	}
	if len(r.Actor) > maxFieldLen || len(r.Subject) > maxFieldLen {
		return nil, fmt.Errorf("%w: actor and subject are limited to %d bytes", ErrInvalidRecord, maxFieldLen)
	}
	for _, k := range requiredDetails[r.Type] {
		if _, ok := r.Details[k]; !ok {
			return nil, fmt.Errorf("%w: a %s record must carry the detail %q", ErrInvalidRecord, r.Type, k)
		}
	}
	details, _, err := sanitize(r.Details, policy, keys)
	if err != nil {
		return nil, err
	}
	return &wire{
		V:       RecordVersion,
		Type:    string(r.Type),
		Actor:   cleanString(r.Actor),
		Subject: cleanString(r.Subject),
		Outcome: string(r.Outcome),
		Details: details,
	}, nil
}
