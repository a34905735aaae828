package peers

import (
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Subject is what the cache holds about one agent: the subject-access copy of ADR 0092.
type Subject struct {
	KeyEventLog   []byte      `json:"key_event_log,omitempty"` // as stored (binary form, base64 in JSON)
	LastHandshake time.Time   `json:"last_handshake,omitzero"`
	Delegations   []byte      `json:"delegations,omitempty"` // as stored
	Compromise    *Compromise `json:"compromise,omitempty"`  // kept on erasure: security evidence
}

// Empty reports whether the cache holds nothing about the subject.
func (s Subject) Empty() bool {
	return s.KeyEventLog == nil && s.LastHandshake.IsZero() && s.Delegations == nil && s.Compromise == nil
}

// Subject returns what the cache holds about id.
func (c *Cache) Subject(id string) (Subject, error) {
	var s Subject
	err := c.db.View(func(tx *bbolt.Tx) error {
		k := []byte(id)
		if v := tx.Bucket(bucketLogs).Get(k); v != nil {
			s.KeyEventLog = append([]byte(nil), v...)
		}
		if v := tx.Bucket(bucketUsed).Get(k); v != nil {
			s.LastHandshake = usedAt(v).UTC()
		}
		if v := tx.Bucket(bucketDelegations).Get(k); v != nil {
			s.Delegations = append([]byte(nil), v...)
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("peer cache: %w", err)
	}
	s.Compromise, err = c.Compromised(id)
	return s, err
}

// EraseSubject deletes what the cache holds about id (erasure on request, ADR 0092): its key event log,
// last handshake time and delegations. A compromised agent's mark and log are kept (security evidence:
// refusing that identity must outlive any request); kept says so. It returns how many records went.
func (c *Cache) EraseSubject(id string) (removed int, kept bool, err error) {
	k := []byte(id)
	err = c.db.Update(func(tx *bbolt.Tx) error {
		logs, used := tx.Bucket(bucketLogs), tx.Bucket(bucketUsed)
		kept = tx.Bucket(bucketCompromised).Get(k) != nil
		buckets := [][]byte{bucketUsed, bucketDelegations}
		if !kept {
			buckets = append(buckets, bucketLogs)
			if v := logs.Get(k); v != nil {
				total := max(int64(u64(used.Get(keyTotalBytes)))-int64(len(v)), 0)
				if err := used.Put(keyTotalBytes, binary.BigEndian.AppendUint64(nil, uint64(total))); err != nil {
					return err
				}
			}
		}
		for _, b := range buckets {
			if tx.Bucket(b).Get(k) == nil {
				continue
			}
			if err := tx.Bucket(b).Delete(k); err != nil {
				return err
			}
			removed++
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("peer cache: erase: %w", err)
	}
	if !kept {
		c.mu.Lock()
		delete(c.states, id)
		c.mu.Unlock()
	}
	return removed, kept, nil
}
