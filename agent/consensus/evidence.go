package consensus

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/custos-agent/custos/identity"
	bolt "go.etcd.io/bbolt"
)

// MaxEvidenceSize bounds the signed bytes kept per evidence record; a larger result keeps its digest and
// signature only (Truncated).
const MaxEvidenceSize = 1 << 20

var bucketEvidence = []byte("consensus/evidence")

// Evidence is a signed result that lost a vote (or contradicted the same peer's other result): the bytes
// and the signature a third party can check against the peer's key.
type Evidence struct {
	Task      string    `json:"task"`
	Peer      string    `json:"peer"`
	Kind      string    `json:"kind"`     // "dissent", "equivocation: first result", "equivocation: second result"
	Digest    string    `json:"digest"`   // hex SHA-256 digest of the peer's result
	Accepted  string    `json:"accepted"` // hex digest of the accepted result ("" for equivocation)
	Signed    []byte    `json:"signed"`   // the signed message as received (base64 in JSON)
	Signature []byte    `json:"signature"`
	Truncated bool      `json:"truncated,omitempty"` // Signed was larger than MaxEvidenceSize and is left out
	Mode      Mode      `json:"mode"`
	Weight    float64   `json:"weight"` // the peer's vote weight in this decision
	Time      time.Time `json:"time"`
}

func newEvidence(task string, r Result, accepted [32]byte, mode Mode, w float64, kind string, now time.Time) Evidence {
	e := Evidence{
		Task: task, Peer: r.Peer.String(), Kind: kind, Digest: hex.EncodeToString(r.Digest[:]),
		Signed: r.Signed, Signature: r.Signature, Mode: mode, Weight: w, Time: now.UTC(),
	}
	if accepted != ([32]byte{}) {
		e.Accepted = hex.EncodeToString(accepted[:])
	}
	if len(e.Signed) > MaxEvidenceSize {
		e.Signed, e.Truncated = nil, true
	}
	return e
}

// EvidenceStore keeps evidence in the bucket "consensus/evidence" of the agent's bbolt database, keyed by
// peer, task and digest (so ByPeer is a prefix scan).
type EvidenceStore struct{ db *bolt.DB }

// NewEvidenceStore creates the bucket if needed.
func NewEvidenceStore(db *bolt.DB) (*EvidenceStore, error) {
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketEvidence)
		return err
	}); err != nil {
		return nil, fmt.Errorf("evidence store: %w", err)
	}
	return &EvidenceStore{db: db}, nil
}

func evidenceKey(e Evidence) []byte {
	return []byte(e.Peer + "\x00" + e.Task + "\x00" + e.Digest)
}

// Put stores records in one fsynced transaction.
func (s *EvidenceStore) Put(ctx context.Context, es ...Evidence) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvidence)
		for _, e := range es {
			v, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put(evidenceKey(e), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("evidence store: write: %w", err)
	}
	return nil
}

// ByPeer returns every record about a peer.
func (s *EvidenceStore) ByPeer(peer identity.ID) ([]Evidence, error) {
	prefix := []byte(peer.String() + "\x00")
	var out []Evidence
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvidence).Cursor()
		for k, v := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
			var e Evidence
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("evidence record %q is corrupt: %v", k, err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("evidence store: %w", err)
	}
	return out, nil
}

// Count returns how many records are stored.
func (s *EvidenceStore) Count() int {
	n := 0
	_ = s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketEvidence).Stats().KeyN
		return nil
	})
	return n
}

// PruneBefore drops the records made before cutoff (retention, docs/privacy.md: evidence ages out after
// privacy.retention.evidence). It returns how many went.
func (s *EvidenceStore) PruneBefore(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvidence)
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var e Evidence
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("evidence record %q is corrupt: %v", k, err)
			}
			if e.Time.Before(cutoff) {
				old = append(old, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range old {
			if err == nil {
				err = b.Delete(k)
			}
		}
		n = len(old)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("evidence store: prune: %w", err)
	}
	return n, nil
}

// EraseSubject deletes every record about peer (erasure on request, ADR 0092); it returns how many.
func (s *EvidenceStore) EraseSubject(peer identity.ID) (int, error) {
	prefix := []byte(peer.String() + "\x00")
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvidence)
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
			keys = append(keys, append([]byte(nil), k...))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("evidence store: erase: %w", err)
	}
	return n, nil
}
