package custody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
)

// RecordVersion is the only version of identity.json.
const RecordVersion = 1

// maxRecordSize bounds identity.json.
const maxRecordSize = 1 << 20

// KeyState is the state of one generation's key.
type KeyState string

// Key states. A generation moves next → active → retired → destroyed.
const (
	// Active is the current generation: it signs.
	Active KeyState = "active"
	// Next is the pre-committed key of the following generation: it exists, its digest is in the log,
	// and it signs only the rotation that makes it active.
	Next KeyState = "next"
	// Retired keys are no longer current; they are destroyed once RetiredUntil has passed.
	Retired KeyState = "retired"
	// Destroyed keys are gone from their keystore.
	Destroyed KeyState = "destroyed"
)

// Generation is one key of the identity as identity.json records it.
type Generation struct {
	Generation uint64             `json:"generation"`
	Keystore   string             `json:"keystore"`   // URI of the keystore that holds the key
	Key        string             `json:"key"`        // key URI
	Algorithm  keystore.Algorithm `json:"algorithm"`  // algorithm of the key
	PublicKey  string             `json:"public_key"` // base64url of keystore.PublicKey.Bytes
	State      KeyState           `json:"state"`
	// RetiredUntil is when a retired key is destroyed (set for Retired keys only).
	RetiredUntil *time.Time `json:"retired_until,omitempty"`
	// DestroyedAt is when the key was destroyed (set for Destroyed keys only).
	DestroyedAt *time.Time `json:"destroyed_at,omitempty"`
	// Note says why a key left the chain other than by rotation (a recovery).
	Note string `json:"note,omitempty"`
}

// Public decodes the generation's public key.
func (g Generation) Public() (keystore.PublicKey, error) {
	return identity.DecodeKey(g.Algorithm, g.PublicKey)
}

// RecoveryKey is the recovery key committed in the log, as identity.json records it.
type RecoveryKey struct {
	Keystore  string             `json:"keystore"`
	Key       string             `json:"key"`
	Algorithm keystore.Algorithm `json:"algorithm"`
	PublicKey string             `json:"public_key"`
}

// Public decodes the recovery public key.
func (r RecoveryKey) Public() (keystore.PublicKey, error) {
	return identity.DecodeKey(r.Algorithm, r.PublicKey)
}

// Operations that may be pending (interrupted) in identity.json.
const (
	opRotate  = "rotate"
	opRecover = "recover"
)

// pending records an operation in progress: what identity.json will say once its event is in the log.
// A crash leaves it behind; the next Open completes the operation when the log holds its event, and
// undoes it (destroying any key it made) when it does not.
type pending struct {
	Op          string       `json:"op"`
	Generation  uint64       `json:"generation"` // generation of the event being written
	Keystore    string       `json:"keystore"`   // keystore of the new keys
	Keys        []pendingKey `json:"keys"`
	RetireUntil time.Time    `json:"retire_until"` // when the keys this operation retires are destroyed
	DestroyOld  bool         `json:"destroy_old,omitempty"`
	Started     time.Time    `json:"started"`
}

// pendingKey is a key the pending operation makes. Key and PublicKey are empty until it exists.
type pendingKey struct {
	Generation uint64             `json:"generation"`
	Label      string             `json:"label"`
	Algorithm  keystore.Algorithm `json:"algorithm"`
	Key        string             `json:"key,omitempty"`
	PublicKey  string             `json:"public_key,omitempty"`
}

// record is identity.json.
type record struct {
	Version     int                `json:"version"`
	ID          string             `json:"id"`
	Algorithm   keystore.Algorithm `json:"algorithm"`
	Keystore    string             `json:"keystore"` // where new keys are made
	Generations []Generation       `json:"generations"`
	Recovery    *RecoveryKey       `json:"recovery,omitempty"`
	Pending     *pending           `json:"pending,omitempty"`
}

func (r *record) encode() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // URIs keep their '&'
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		panic("custody: marshal identity.json: " + err.Error()) // plain fields only
	}
	return buf.Bytes()
}

func (r *record) clone() *record {
	var c record
	if err := json.Unmarshal(r.encode(), &c); err != nil {
		panic("custody: clone identity.json: " + err.Error())
	}
	return &c
}

// decodeRecord strictly decodes identity.json and checks its form (not its agreement with the log).
func decodeRecord(b []byte) (*record, error) {
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("larger than %d bytes", maxRecordSize)
	}
	var r record
	if err := strictjson.Decode(b, &r, 0); err != nil {
		return nil, fmt.Errorf("not valid JSON for identity.json: %v", err)
	}
	if r.Version != RecordVersion {
		return nil, fmt.Errorf("version %d (this agentctl reads version %d)", r.Version, RecordVersion)
	}
	if _, err := identity.ParseID(r.ID); err != nil {
		return nil, err
	}
	if !r.Algorithm.Valid() {
		return nil, fmt.Errorf("unknown algorithm %q", r.Algorithm)
	}
	if r.Keystore == "" {
		return nil, errors.New("no keystore URI")
	}
	var active, next int
	for i, g := range r.Generations {
		if g.Key == "" || g.Keystore == "" {
			return nil, fmt.Errorf("generation %d has no key or keystore URI", g.Generation)
		}
		if _, err := g.Public(); err != nil {
			return nil, fmt.Errorf("generation %d: public key: %v", g.Generation, err)
		}
		if i > 0 && g.Generation < r.Generations[i-1].Generation {
			return nil, errors.New("generations are out of order")
		}
		switch g.State {
		case Active:
			active++
		case Next:
			next++
		case Retired:
			if g.RetiredUntil == nil {
				return nil, fmt.Errorf("retired generation %d has no retired_until", g.Generation)
			}
		case Destroyed:
		default:
			return nil, fmt.Errorf("generation %d has unknown state %q", g.Generation, g.State)
		}
	}
	if active != 1 || next != 1 {
		return nil, fmt.Errorf("%d active and %d next generations (want exactly one of each)", active, next)
	}
	if r.Recovery != nil {
		if r.Recovery.Key == "" {
			return nil, errors.New("the recovery key has no URI")
		}
		if _, err := r.Recovery.Public(); err != nil {
			return nil, fmt.Errorf("recovery public key: %v", err)
		}
	}
	if p := r.Pending; p != nil {
		if p.Op != opRotate && p.Op != opRecover {
			return nil, fmt.Errorf("unknown pending operation %q", p.Op)
		}
		if len(p.Keys) == 0 || p.Keystore == "" {
			return nil, errors.New("the pending operation names no key")
		}
		for _, k := range p.Keys {
			if k.Label == "" || !k.Algorithm.Valid() {
				return nil, errors.New("a pending key has no label or algorithm")
			}
			if (k.Key == "") != (k.PublicKey == "") {
				return nil, errors.New("a pending key has a URI without a public key or the reverse")
			}
			if k.PublicKey != "" {
				if _, err := identity.DecodeKey(k.Algorithm, k.PublicKey); err != nil {
					return nil, fmt.Errorf("pending key %s: %v", k.Label, err)
				}
			}
		}
	}
	return &r, nil
}

// find returns the index of the generation in state s (Active or Next).
func (r *record) find(s KeyState) int {
	for i, g := range r.Generations {
		if g.State == s {
			return i
		}
	}
	return -1
}

// check verifies that r (without a pending operation) agrees with the verified log state st.
func (r *record) check(st identity.State) error {
	if r.ID != st.ID.String() {
		return fmt.Errorf("identity.json is for %s but kel.jsonl is for %s", r.ID, st.ID)
	}
	a := r.Generations[r.find(Active)]
	if a.Generation != st.Generation {
		return fmt.Errorf("identity.json says generation %d is active but kel.jsonl is at generation %d", a.Generation, st.Generation)
	}
	if pub, _ := a.Public(); !pub.Equal(st.Current) {
		return fmt.Errorf("the active key in identity.json (generation %d) is not the key kel.jsonl names", a.Generation)
	}
	n := r.Generations[r.find(Next)]
	if pub, _ := n.Public(); n.Generation != st.Generation+1 || identity.Base64().EncodeToString(digest(pub)) != st.NextDigest {
		return fmt.Errorf("the next key in identity.json (generation %d) is not the one kel.jsonl pre-commits", n.Generation)
	}
	switch {
	case r.Recovery == nil && st.RecoveryDigest != "":
		return errors.New("kel.jsonl commits a recovery key but identity.json records none")
	case r.Recovery != nil:
		pub, _ := r.Recovery.Public()
		if identity.Base64().EncodeToString(digest(pub)) != st.RecoveryDigest {
			return errors.New("the recovery key in identity.json is not the one kel.jsonl commits")
		}
	}
	return nil
}

func digest(p keystore.PublicKey) []byte { d := p.Digest(); return d[:] }
