package tasks

import (
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Subject is what the task store holds about one agent: the tasks it asked this agent to run and the
// tasks this agent sent it, with their inputs (the subject-access copy of ADR 0092).
type Subject struct {
	Inbound  []*Inbound  `json:"inbound,omitempty"`
	Outbound []*Outbound `json:"outbound,omitempty"`
}

// Subject returns every task whose requester (inbound) or executor (outbound) is id, with its input.
func (s *Store) Subject(id string) (Subject, error) {
	var out Subject
	err := s.db.View(func(tx *bbolt.Tx) error {
		if err := tx.Bucket(bucketIn).ForEach(func(k, _ []byte) error {
			r, err := getIn(s.sv, tx, k)
			if err == nil && r != nil && r.Requester == id {
				out.Inbound = append(out.Inbound, r)
			}
			return err
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketOut).ForEach(func(k, _ []byte) error {
			r, err := getOut(s.sv, tx, k)
			if err == nil && r != nil && r.To == id {
				out.Outbound = append(out.Outbound, r)
			}
			return err
		})
	})
	if err != nil {
		return Subject{}, fmt.Errorf("task store: %w", err)
	}
	return out, nil
}

// PruneUnfetched deletes final outbound tasks (record and input) that ended before cutoff and whose
// result no client ever fetched (retention, privacy.retention.tasks): PruneOutbound only counts from the
// first fetch. It returns how many went.
func (s *Store) PruneUnfetched(cutoff time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		n, err = pruneWhere(s.sv, tx, bucketOut, bucketOutInput, func(r *Outbound) bool {
			return Final(r.State) && r.Fetched.IsZero() && r.Updated.Before(cutoff)
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("task store: prune: %w", err)
	}
	return n, nil
}

// EraseSubject deletes every task (record and input) whose requester or executor is id, in one
// transaction (erasure on request, ADR 0092). A task still running for the subject finishes in the
// engine and its result is dropped: the engine finds no record to update. It returns how many went.
func (s *Store) EraseSubject(id string) (int, error) {
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		in, err := pruneWhere(s.sv, tx, bucketIn, bucketInInput, func(r *Inbound) bool { return r.Requester == id })
		if err != nil {
			return err
		}
		out, err := pruneWhere(s.sv, tx, bucketOut, bucketOutInput, func(r *Outbound) bool { return r.To == id })
		n = in + out
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("task store: erase: %w", err)
	}
	return n, nil
}
