package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/custos-agent/custos/internal/sealbox"
)

// Crypto-shredding of personal fields (ADR 0099). A record that names another agent has the fields that
// are personal data of that agent sealed under a key of its own (one per subject agent ID, made on first
// use and kept by SubjectKeys); erasing the subject destroys its key, after which those fields can no
// longer be read. The record hash and the checkpoint signatures cover the sealed values, so the chain
// and the checkpoints verify with no key at all.

// SubjectKeys is the store of per-subject keys the log seals with (audit/subjectkeys).
type SubjectKeys interface {
	// Key returns the key of subject and its reference (RefPrefix...), making one and storing it durably
	// on first use.
	Key(ctx context.Context, subject string) (ref string, box *sealbox.Box, err error)
}

// KeyLookup finds the key of a reference, to open sealed fields; ok is false when there is none (it was
// destroyed by an erasure, or the store is not this log's).
type KeyLookup interface {
	Lookup(ref string) (box *sealbox.Box, ok bool, err error)
}

// RefPrefix starts every subject key reference: "sk1:" and 22 characters of base64url (16 random
// bytes). A reference says nothing about whose key it is.
const RefPrefix = "sk1:"

// Erased replaces, in a record read back, a sealed field whose subject key was destroyed; Unreadable one
// that does not open under the key its reference names (another store, or altered).
const (
	Erased     = "[erased]"
	Unreadable = "[unreadable]"
)

// personalDetails are detail keys whose string values are personal data of the agent the record is
// about (its actor or, failing that, its subject): a peer's network address, its country, its ID.
var personalDetails = map[string]bool{
	"remote": true, "address": true, "addr": true, "peer": true, "country": true, "sent_to": true,
}

// sealItem is one field to seal: its path, plaintext and the key of its subject.
type sealItem struct {
	path string
	pt   string
	ref  string
	box  *sealbox.Box
}

// sealPlan is a record whose personal fields are sealed by the writer, once the record's seq (bound into
// every sealed value) is known.
type sealPlan struct {
	w       *wire          // the record with its plaintext fields (Details as sanitize wrote them)
	details map[string]any // w.Details decoded
	items   []sealItem     // sorted by path
}

// agentIDLike reports whether s has the form of an agent ID ("ed25519:..." or "p256:..." and base64url).
// The audit package does not import identity; a wrong guess only seals or leaves a field in the clear.
func agentIDLike(s string) bool {
	alg, key, ok := strings.Cut(s, ":")
	if !ok || (alg != "ed25519" && alg != "p256") || len(key) < 40 || len(key) > 100 {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// personalFields says which fields of w are personal data and whose: the actor and the subject when
// they are another agent's ID; a detail under personalDetails (the record's first such agent's); any
// other top-level string detail that contains such an ID. The log's own agent ID is never sealed.
func personalFields(w *wire, self string) (owners map[string]string, details map[string]any, err error) {
	var first string
	owners = map[string]string{}
	for _, f := range []struct{ path, v string }{{"actor", w.Actor}, {"subject", w.Subject}} {
		if f.v != self && agentIDLike(f.v) {
			owners[f.path] = f.v
			if first == "" {
				first = f.v
			}
		}
	}
	if first == "" {
		return nil, nil, nil // nobody's: nothing to seal (an address without an agent ID stays truncated only)
	}
	dec := json.NewDecoder(bytes.NewReader(w.Details))
	dec.UseNumber()
	if err := dec.Decode(&details); err != nil {
		return nil, nil, fmt.Errorf("%w: details: %v", ErrInvalidRecord, err)
	}
	for k, v := range details {
		s, ok := v.(string)
		if !ok || s == "" {
			continue
		}
		switch {
		case personalDetails[k]:
			owners["details."+k] = first
		case strings.Contains(s, owners["actor"]) && owners["actor"] != "":
			owners["details."+k] = owners["actor"]
		case strings.Contains(s, owners["subject"]) && owners["subject"] != "":
			owners["details."+k] = owners["subject"]
		}
	}
	return owners, details, nil
}

// plan prepares the sealing of w's personal fields with keys, or returns nil when it has none. It
// checks the size of the sealed record now, so that the writer cannot fail on it.
func planSeal(ctx context.Context, w *wire, self string, keys SubjectKeys) (*sealPlan, error) {
	owners, details, err := personalFields(w, self)
	if err != nil || len(owners) == 0 {
		return nil, err
	}
	p := &sealPlan{w: w, details: details}
	refs := map[string]sealItem{}
	for _, path := range slices.Sorted(maps.Keys(owners)) {
		owner := owners[path]
		k, ok := refs[owner]
		if !ok {
			ref, box, err := keys.Key(ctx, owner)
			if err != nil {
				return nil, fmt.Errorf("audit: the subject key to seal the record's personal fields: %w", err)
			}
			k = sealItem{ref: ref, box: box}
			refs[owner] = k
		}
		p.items = append(p.items, sealItem{path: path, pt: p.value(path), ref: k.ref, box: k.box})
	}
	// The sealed record has exactly this size whatever the nonces: check it once here.
	dummy, err := p.seal(0, func(it sealItem) []byte { return make([]byte, sealbox.Overhead+len(it.pt)) })
	if err != nil {
		return nil, err
	}
	if _, err := newPending(dummy); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *sealPlan) value(path string) string {
	switch path {
	case "actor":
		return p.w.Actor
	case "subject":
		return p.w.Subject
	}
	s, _ := p.details[strings.TrimPrefix(path, "details.")].(string)
	return s
}

// seal returns the record with every planned field replaced by its sealed value (ct makes the ciphertext).
func (p *sealPlan) seal(seq uint64, ct func(sealItem) []byte) (*wire, error) {
	w := *p.w
	w.V = SealedVersion
	d := maps.Clone(p.details)
	for _, it := range p.items {
		v := it.ref + ":" + b64.EncodeToString(ct(it))
		switch it.path {
		case "actor":
			w.Actor = v
		case "subject":
			w.Subject = v
		default:
			d[strings.TrimPrefix(it.path, "details.")] = v
		}
		w.Sealed = append(w.Sealed, it.path)
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("%w: details: %v", ErrInvalidRecord, err)
	}
	w.Details = raw
	return &w, nil
}

// finish seals the planned fields for the record's place seq and returns the pending record.
func (p *sealPlan) finish(seq uint64) (*pending, error) {
	w, err := p.seal(seq, func(it sealItem) []byte { return it.box.Seal(sealPlace(seq, it.path, it.ref), []byte(it.pt)) })
	if err != nil {
		return nil, err
	}
	return newPending(w)
}

// sealPlace is the associated data of a sealed field: the record's seq, the field's path and the key's
// reference, so a sealed value copied to another record or field does not open.
func sealPlace(seq uint64, path, ref string) []byte {
	b := make([]byte, 0, 64+len(path)+len(ref))
	b = append(b, "custos/v1/audit-sealed-field\x00"...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, path...)
	b = append(b, 0)
	return append(b, ref...)
}

// ParseSealed splits a sealed value "sk1:REF:CIPHERTEXT" into its key reference ("sk1:REF") and
// ciphertext (a sealbox value).
func ParseSealed(v string) (ref string, ct []byte, err error) {
	rest, ok := strings.CutPrefix(v, RefPrefix)
	if !ok {
		return "", nil, fmt.Errorf("a sealed value starts with %q", RefPrefix)
	}
	id, enc, ok := strings.Cut(rest, ":")
	if !ok || len(id) != 22 {
		return "", nil, errors.New("a sealed value is sk1:REF:CIPHERTEXT with a 22-character REF")
	}
	if _, err := b64.DecodeString(id); err != nil {
		return "", nil, fmt.Errorf("a sealed value's reference is not base64url: %v", err)
	}
	ct, err = b64.DecodeString(enc)
	if err != nil {
		return "", nil, fmt.Errorf("a sealed value's ciphertext is not base64url: %v", err)
	}
	if !sealbox.IsSealed(ct) {
		return "", nil, errors.New("a sealed value's ciphertext is too short or not a sealbox value")
	}
	return RefPrefix + id, ct, nil
}

// checkSealed checks a decoded record's sealed list: absent from a RecordVersion record; on a
// SealedVersion record non-empty, sorted without repeats, each path "actor", "subject" or
// "details.KEY" of a top-level detail, and each value there a sealed value.
func checkSealed(w *wire) error {
	if w.V != SealedVersion {
		if w.Sealed != nil {
			return fmt.Errorf("a version %d record has no sealed fields", w.V)
		}
		return nil
	}
	if len(w.Sealed) == 0 || len(w.Sealed) > 64 {
		return fmt.Errorf("a version %d record lists 1 to 64 sealed fields", SealedVersion)
	}
	if w.CP != nil {
		return errors.New("a checkpoint has no sealed fields")
	}
	var details map[string]json.RawMessage
	for i, path := range w.Sealed {
		if i > 0 && path <= w.Sealed[i-1] {
			return errors.New("the sealed fields are not sorted without repeats")
		}
		var v string
		switch {
		case path == "actor":
			v = w.Actor
		case path == "subject":
			v = w.Subject
		case strings.HasPrefix(path, "details.") && len(path) > len("details."):
			if details == nil {
				if err := json.Unmarshal(w.Details, &details); err != nil {
					return fmt.Errorf("details: %v", err)
				}
			}
			raw, ok := details[path[len("details."):]]
			if !ok || json.Unmarshal(raw, &v) != nil {
				return fmt.Errorf("sealed field %q is not a string detail", path)
			}
		default:
			return fmt.Errorf("sealed field %q: only actor, subject and details.KEY are sealed", path)
		}
		if _, _, err := ParseSealed(v); err != nil {
			return fmt.Errorf("sealed field %q: %v", path, err)
		}
	}
	return nil
}

// Unseal replaces r's sealed fields by their plaintext where keys holds their key, by Erased where it
// does not (the subject was erased) and by Unreadable where the value does not open. It returns the
// paths that were not opened. A record without sealed fields is unchanged.
func (r *Record) Unseal(keys KeyLookup) (closed []string, err error) {
	for _, path := range r.Sealed {
		v, err := r.open(keys, path)
		if err != nil {
			return closed, err
		}
		if v == Erased || v == Unreadable {
			closed = append(closed, path)
		}
		switch path {
		case "actor":
			r.Actor = v
		case "subject":
			r.Subject = v
		default:
			if r.Details != nil {
				r.Details[strings.TrimPrefix(path, "details.")] = v
			}
		}
	}
	return closed, nil
}

func (r *Record) open(keys KeyLookup, path string) (string, error) {
	var v string
	switch path {
	case "actor":
		v = r.Actor
	case "subject":
		v = r.Subject
	default:
		v, _ = r.Details[strings.TrimPrefix(path, "details.")].(string)
	}
	ref, ct, err := ParseSealed(v)
	if err != nil {
		return Unreadable, nil
	}
	box, ok, err := keys.Lookup(ref)
	if err != nil {
		return "", fmt.Errorf("the key of sealed field %s of record %d: %w", path, r.Seq, err)
	}
	if !ok {
		return Erased, nil
	}
	pt, err := box.Open(sealPlace(r.Seq, path, ref), ct)
	if err != nil {
		return Unreadable, nil
	}
	return string(pt), nil
}

// Refs returns the key references r's sealed fields carry (before Unseal), without repeats.
func (r *Record) Refs() []string {
	var out []string
	for _, path := range r.Sealed {
		var v string
		switch path {
		case "actor":
			v = r.Actor
		case "subject":
			v = r.Subject
		default:
			v, _ = r.Details[strings.TrimPrefix(path, "details.")].(string)
		}
		if ref, _, err := ParseSealed(v); err == nil && !slices.Contains(out, ref) {
			out = append(out, ref)
		}
	}
	return out
}
