package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Buckets of the task store in <home>/state.db.
var (
	bucketIn  = []byte("tasks.in")  // requester ID \x00 task ID -> Inbound (JSON)
	bucketOut = []byte("tasks.out") // task ID -> Outbound (JSON)
)

// ErrNotFound: no task with that ID.
var ErrNotFound = errors.New("no such task")

// Inbound states (tasks this agent executes for others).
const (
	InAccepted = "accepted" // recorded, not started (or interrupted by a restart)
	InRunning  = "running"  // the handler is running
	InDone     = "done"     // the signed result is stored, not yet acknowledged by the requester
)

// Inbound is a task this agent accepted from a peer. It is written (fsync) before the acceptance is
// sent, and deleted once the requester has acknowledged the result.
type Inbound struct {
	TaskID      string    `json:"task_id"`
	Requester   string    `json:"requester"`
	Handler     string    `json:"handler"`
	Input       []byte    `json:"input"`
	InputSHA256 string    `json:"input_sha256"`
	State       string    `json:"state"`
	Accepted    time.Time `json:"accepted"`
	Started     time.Time `json:"started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	Runs        int       `json:"runs"`                 // how many times the handler was started
	Status      string    `json:"status,omitempty"`     // ok or failed (when done)
	Evidence    []byte    `json:"evidence,omitempty"`   // signed result envelope, binary form
	Delegation  []byte    `json:"delegation,omitempty"` // the delegation that signed it
	Pushed      time.Time `json:"pushed,omitzero"`      // last time the result was sent
}

// Outbound states (tasks this agent submitted to a peer).
const (
	OutPending  = "pending"  // recorded, not yet sent (no session to the peer)
	OutSent     = "sent"     // sent, not yet acknowledged
	OutAccepted = "accepted" // the executor recorded it
	OutRunning  = "running"  // the executor started it
	OutDone     = "done"     // a verified, signed result is stored
	OutFailed   = "failed"   // refused by the executor, or its result did not verify
)

// Final reports whether an outbound state is final.
func Final(state string) bool { return state == OutDone || state == OutFailed }

// Outbound is a task this agent submitted. It is written (fsync) before Submit returns, and kept until
// the result was fetched and the retention passed.
type Outbound struct {
	TaskID      string    `json:"task_id"`
	To          string    `json:"to"`
	Handler     string    `json:"handler"`
	Input       []byte    `json:"input"`
	InputSHA256 string    `json:"input_sha256"`
	State       string    `json:"state"`
	Submitted   time.Time `json:"submitted"`
	Updated     time.Time `json:"updated"`
	LastSent    time.Time `json:"last_sent,omitzero"`
	Attempts    int       `json:"attempts"`
	ErrorCode   string    `json:"error_code,omitempty"`
	Error       string    `json:"error,omitempty"`
	Status      string    `json:"status,omitempty"`        // ok or failed (the executor's result)
	Evidence    []byte    `json:"evidence,omitempty"`      // signed result envelope, binary form
	Delegation  []byte    `json:"delegation,omitempty"`    // the executor's delegation that signed it
	KeyEventLog []byte    `json:"key_event_log,omitempty"` // the executor's log when the result verified
	Fetched     time.Time `json:"fetched,omitzero"`        // when a client first read the final result
}

// Store keeps tasks in bbolt. Every change is one transaction, fsynced on commit.
type Store struct {
	db *bbolt.DB
}

// NewStore uses an open bbolt database (shared with the other agent packages).
func NewStore(db *bbolt.DB) (*Store, error) {
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketIn, bucketOut} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	return &Store{db: db}, nil
}

func inKey(requester, id string) []byte { return []byte(requester + "\x00" + id) }

func get[T any](b *bbolt.Bucket, key []byte) (*T, error) {
	raw := b.Get(key)
	if raw == nil {
		return nil, nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("task store: record %q does not decode: %w", key, err)
	}
	return &v, nil
}

func put(b *bbolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// Accept records rec unless the requester already submitted a task with that ID; it returns the stored
// record and whether it was created now.
func (s *Store) Accept(rec *Inbound) (*Inbound, bool, error) {
	var out *Inbound
	created := false
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIn)
		k := inKey(rec.Requester, rec.TaskID)
		cur, err := get[Inbound](b, k)
		if err != nil {
			return err
		}
		if cur != nil {
			out = cur
			return nil
		}
		out, created = rec, true
		return put(b, k, rec)
	})
	return out, created, err
}

// UpdateInbound applies fn to the stored record (ErrNotFound when none) and stores it.
func (s *Store) UpdateInbound(requester, id string, fn func(*Inbound) error) (*Inbound, error) {
	var out *Inbound
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIn)
		k := inKey(requester, id)
		cur, err := get[Inbound](b, k)
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("%w: %s from %s", ErrNotFound, id, requester)
		}
		if err := fn(cur); err != nil {
			return err
		}
		out = cur
		return put(b, k, cur)
	})
	return out, err
}

// Inbound returns one inbound task (nil when none).
func (s *Store) Inbound(requester, id string) (*Inbound, error) {
	var out *Inbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = get[Inbound](tx.Bucket(bucketIn), inKey(requester, id))
		return err
	})
	return out, err
}

// DeleteInbound forgets an inbound task (after its result was acknowledged).
func (s *Store) DeleteInbound(requester, id string) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketIn).Delete(inKey(requester, id)) })
}

// ListInbound returns every inbound task.
func (s *Store) ListInbound() ([]*Inbound, error) {
	var out []*Inbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketIn).ForEach(func(k, _ []byte) error {
			r, err := get[Inbound](tx.Bucket(bucketIn), k)
			if err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// CreateOutbound stores a new outbound task; an existing ID is an error.
func (s *Store) CreateOutbound(rec *Outbound) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		if b.Get([]byte(rec.TaskID)) != nil {
			return fmt.Errorf("task store: task %s exists", rec.TaskID)
		}
		return put(b, []byte(rec.TaskID), rec)
	})
}

// UpdateOutbound applies fn to the stored record (ErrNotFound when none) and stores it.
func (s *Store) UpdateOutbound(id string, fn func(*Outbound) error) (*Outbound, error) {
	var out *Outbound
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		cur, err := get[Outbound](b, []byte(id))
		if err != nil {
			return err
		}
		if cur == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if err := fn(cur); err != nil {
			return err
		}
		out = cur
		return put(b, []byte(id), cur)
	})
	return out, err
}

// Outbound returns one outbound task (ErrNotFound when none).
func (s *Store) Outbound(id string) (*Outbound, error) {
	var out *Outbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = get[Outbound](tx.Bucket(bucketOut), []byte(id))
		return err
	})
	if err == nil && out == nil {
		err = fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return out, err
}

// ListOutbound returns every outbound task.
func (s *Store) ListOutbound() ([]*Outbound, error) {
	var out []*Outbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		return b.ForEach(func(k, _ []byte) error {
			r, err := get[Outbound](b, k)
			if err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// PruneOutbound deletes final outbound tasks fetched before cutoff; it returns how many.
func (s *Store) PruneOutbound(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		var del [][]byte
		err := b.ForEach(func(k, _ []byte) error {
			r, err := get[Outbound](b, k)
			if err != nil {
				return err
			}
			if Final(r.State) && !r.Fetched.IsZero() && r.Fetched.Before(cutoff) {
				del = append(del, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(del)
		return nil
	})
	return n, err
}
