package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/sealbox"
	"github.com/custos-agent/custos/internal/sealedbolt"
)

// Buckets of the task store in <home>/state.db. A task's input is kept beside its record, written once
// when the task is recorded: the record is rewritten at every state change, and re-encoding a 64 KiB input
// as JSON base64 each time cost more than the rest of the task (docs/benchmarks.md). Records written
// before the split carry the input inline; they are read as they are and split at their next change.
var (
	bucketIn       = []byte("tasks.in")        // requester ID \x00 task ID -> Inbound (JSON, without input)
	bucketOut      = []byte("tasks.out")       // task ID -> Outbound (JSON, without input)
	bucketInInput  = []byte("tasks.in.input")  // same key -> the input bytes
	bucketOutInput = []byte("tasks.out.input") // same key -> the input bytes
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
	// OnBehalfOf is the requester's attribution (Request.OnBehalfOf, ADR 0100): whom it submitted for.
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
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
	// OnBehalfOf is whom this agent submitted the task for (an HTTP gateway key's name, ADR 0100); it
	// travels in the request and decides who may read the task through the gateway.
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
}

// Store keeps tasks in bbolt. Every change is durable (fsynced) when its method returns, except those of
// the methods named ...Later, which record what a crash may lose (progress states, send times, the
// deletion of an acknowledged result): they are committed with the next change that is waited for, or
// after LaterDelay at the latest, and never cost a commit of their own under load. Changes made at the
// same time share one transaction and one fsync (group commit, see update). Changes are applied in the
// order they were made, deferred or not.
type Store struct {
	db *bbolt.DB
	sv *sealedbolt.Values // seals every value (ADR 0098); nil: in the clear

	mu    sync.Mutex
	queue []*storeOp // changes waiting for the next commit
	busy  bool       // a caller is committing
	armed bool       // a flush of deferred changes is scheduled
	// deleting: inbound keys whose deletion is deferred (DeleteInboundLater), not yet committed; the
	// counts and listings leave them out.
	deleting map[string]int
}

// LaterDelay is the longest a deferred change (the ...Later methods) waits for a commit.
const LaterDelay = 20 * time.Millisecond

// storeOp is one change waiting for a commit.
type storeOp struct {
	fn    func(*bbolt.Tx) error
	done  chan error    // the change's outcome
	lead  chan struct{} // this caller commits the next batch
	later bool          // deferred: nobody waits for it
	after func()        // deferred: run once it is committed (or failed)
}

// StoreOption configures NewStore.
type StoreOption func(*Store)

// WithBox seals every value of the task store (records and inputs) with box (ADR 0098); the plaintext
// values of a store made before are sealed when it opens.
func WithBox(box *sealbox.Box) StoreOption { return func(s *Store) { s.sv = sealedbolt.New(box) } }

// NewStore uses an open bbolt database (shared with the other agent packages).
func NewStore(db *bbolt.DB, opts ...StoreOption) (*Store, error) {
	s := &Store{db: db, deleting: map[string]int{}}
	for _, o := range opts {
		o(s)
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketIn, bucketOut, bucketInInput, bucketOutInput} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	if err := s.sv.Migrate(db, bucketIn, bucketOut, bucketInInput, bucketOutInput); err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	return s, nil
}

func inKey(requester, id string) []byte { return []byte(requester + "\x00" + id) }

func get[T any](sv *sealedbolt.Values, b *bbolt.Bucket, name, key []byte) (*T, error) {
	raw, err := sv.Get(b, name, key)
	if err != nil {
		return nil, fmt.Errorf("task store: %w", err)
	}
	if raw == nil {
		return nil, nil
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("task store: record %q does not decode: %w", key, err)
	}
	return &v, nil
}

func put(sv *sealedbolt.Values, b *bbolt.Bucket, name, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return sv.Put(b, name, key, raw)
}

// putTask stores a record without its input, and the input in the input bucket unless it is there.
func putTask[T any](sv *sealedbolt.Values, tx *bbolt.Tx, bucket, inputs, key []byte, rec *T, input *[]byte) error {
	in := *input
	*input = nil
	err := put(sv, tx.Bucket(bucket), bucket, key, rec)
	*input = in
	if err != nil {
		return err
	}
	if ib := tx.Bucket(inputs); len(in) > 0 && ib.Get(key) == nil {
		return sv.Put(ib, inputs, key, in)
	}
	return nil
}

// getTask reads a record and attaches its input (from the input bucket, or inline in an older record).
func getTask[T any](sv *sealedbolt.Values, tx *bbolt.Tx, bucket, inputs, key []byte, input func(*T) *[]byte) (*T, error) {
	r, err := get[T](sv, tx.Bucket(bucket), bucket, key)
	if err != nil || r == nil {
		return r, err
	}
	if in := input(r); len(*in) == 0 {
		raw, err := sv.Get(tx.Bucket(inputs), inputs, key)
		if err != nil {
			return nil, fmt.Errorf("task store: %w", err)
		}
		if raw != nil {
			*in = append([]byte(nil), raw...)
		}
	}
	return r, nil
}

func inInput(r *Inbound) *[]byte   { return &r.Input }
func outInput(r *Outbound) *[]byte { return &r.Input }

func getIn(sv *sealedbolt.Values, tx *bbolt.Tx, key []byte) (*Inbound, error) {
	return getTask(sv, tx, bucketIn, bucketInInput, key, inInput)
}

func getOut(sv *sealedbolt.Values, tx *bbolt.Tx, key []byte) (*Outbound, error) {
	return getTask(sv, tx, bucketOut, bucketOutInput, key, outInput)
}

// update runs fn in a write transaction and returns once it is committed (fsync). Callers that arrive
// while a commit is in progress queue up; the first of them then commits all of them in one transaction
// (group commit): an idle store commits at once, a busy one pays one fsync per batch instead of one per
// change. If any fn of a batch fails, the batch is rolled back and each fn runs again in a transaction of
// its own, so one change's error never undoes another's; fn must therefore only act on tx.
func (s *Store) update(fn func(*bbolt.Tx) error) error {
	o := &storeOp{fn: fn, done: make(chan error, 1), lead: make(chan struct{}, 1)}
	s.mu.Lock()
	s.queue = append(s.queue, o)
	if !s.busy {
		s.busy = true
		o.lead <- struct{}{}
	}
	s.mu.Unlock()
	select {
	case err := <-o.done:
		return err
	case <-o.lead:
	}
	s.mu.Lock()
	batch := s.queue
	s.queue = nil
	s.mu.Unlock()
	s.commit(batch)
	s.mu.Lock()
	s.handOff()
	s.mu.Unlock()
	return <-o.done
}

// handOff passes the commit of the queued changes to the first caller waiting for one; with only
// deferred changes queued (or none), the store is idle and a flush is scheduled. s.mu is held.
func (s *Store) handOff() {
	for _, q := range s.queue {
		if !q.later {
			q.lead <- struct{}{} // it commits everything queued before it too
			return
		}
	}
	s.busy = false
	s.arm()
}

// arm schedules a flush of the deferred changes queued, unless one is scheduled. s.mu is held.
func (s *Store) arm() {
	if s.armed || len(s.queue) == 0 {
		return
	}
	s.armed = true
	time.AfterFunc(LaterDelay, s.flushArmed)
}

func (s *Store) flushArmed() {
	s.mu.Lock()
	s.armed = false
	s.mu.Unlock()
	_ = s.Flush()
}

// Flush commits the deferred changes queued (nothing when none).
func (s *Store) Flush() error {
	s.mu.Lock()
	empty := len(s.queue) == 0
	s.mu.Unlock()
	if empty {
		return nil
	}
	return s.update(func(*bbolt.Tx) error { return nil })
}

// later queues fn for the next commit and returns at once (see Store). fn must not fail: a deferred
// change to a record that is gone is no change. after, when set, runs once fn is committed (or failed).
func (s *Store) later(fn func(*bbolt.Tx) error, after func()) {
	o := &storeOp{fn: fn, done: make(chan error, 1), later: true, after: after}
	s.mu.Lock()
	s.queue = append(s.queue, o)
	if !s.busy {
		s.arm()
	}
	s.mu.Unlock()
}

var errBatchFailed = errors.New("a change of the batch failed")

func (s *Store) commit(batch []*storeOp) {
	defer func() {
		for _, o := range batch {
			if o.after != nil {
				o.after()
			}
		}
	}()
	if len(batch) > 1 {
		err := s.db.Update(func(tx *bbolt.Tx) error {
			for _, o := range batch {
				if err := o.fn(tx); err != nil {
					return errBatchFailed
				}
			}
			return nil
		})
		if err == nil {
			for _, o := range batch {
				o.done <- nil
			}
			return
		}
	}
	for _, o := range batch {
		o.done <- s.db.Update(o.fn)
	}
}

// Accept records rec unless the requester already submitted a task with that ID; it returns the stored
// record and whether it was created now.
func (s *Store) Accept(rec *Inbound) (*Inbound, bool, error) {
	var out *Inbound
	created := false
	err := s.update(func(tx *bbolt.Tx) error {
		k := inKey(rec.Requester, rec.TaskID)
		cur, err := getIn(s.sv, tx, k)
		if err != nil {
			return err
		}
		if cur != nil {
			out, created = cur, false
			return nil
		}
		out, created = rec, true
		return putTask(s.sv, tx, bucketIn, bucketInInput, k, rec, &rec.Input)
	})
	return out, created, err
}

// UpdateInbound applies fn to the stored record (ErrNotFound when none) and stores it.
func (s *Store) UpdateInbound(requester, id string, fn func(*Inbound) error) (*Inbound, error) {
	var out *Inbound
	err := s.update(func(tx *bbolt.Tx) error {
		k := inKey(requester, id)
		cur, err := getIn(s.sv, tx, k)
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
		return putTask(s.sv, tx, bucketIn, bucketInInput, k, cur, &cur.Input)
	})
	return out, err
}

// Inbound returns one inbound task (nil when none).
func (s *Store) Inbound(requester, id string) (*Inbound, error) {
	var out *Inbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = getIn(s.sv, tx, inKey(requester, id))
		return err
	})
	return out, err
}

// DeleteInbound forgets an inbound task (after its result was acknowledged).
func (s *Store) DeleteInbound(requester, id string) error {
	return s.update(func(tx *bbolt.Tx) error { return deleteIn(tx, inKey(requester, id)) })
}

func deleteIn(tx *bbolt.Tx, k []byte) error {
	if err := tx.Bucket(bucketInInput).Delete(k); err != nil {
		return err
	}
	return tx.Bucket(bucketIn).Delete(k)
}

// DeleteInboundLater is DeleteInbound, deferred (see Store): a crash may bring the task back, finished,
// and its result is pushed again. CountInbound and ListInbound leave it out at once.
func (s *Store) DeleteInboundLater(requester, id string) {
	k := inKey(requester, id)
	s.mu.Lock()
	s.deleting[string(k)]++
	s.mu.Unlock()
	s.later(func(tx *bbolt.Tx) error { return deleteIn(tx, k) }, func() {
		s.mu.Lock()
		if s.deleting[string(k)] <= 1 {
			delete(s.deleting, string(k))
		} else {
			s.deleting[string(k)]--
		}
		s.mu.Unlock()
	})
}

// UpdateInboundLater applies fn to the stored record, deferred (see Store); no record, or fn returning
// false, is no change.
func (s *Store) UpdateInboundLater(requester, id string, fn func(*Inbound) bool) {
	k := inKey(requester, id)
	s.later(func(tx *bbolt.Tx) error {
		cur, err := getIn(s.sv, tx, k)
		if err != nil || cur == nil || !fn(cur) {
			return nil
		}
		return putTask(s.sv, tx, bucketIn, bucketInInput, k, cur, &cur.Input)
	}, nil)
}

// UpdateOutboundLater applies fn to the stored record, deferred (see Store); no record, or fn returning
// false, is no change.
func (s *Store) UpdateOutboundLater(id string, fn func(*Outbound) bool) {
	s.later(func(tx *bbolt.Tx) error {
		cur, err := getOut(s.sv, tx, []byte(id))
		if err != nil || cur == nil || !fn(cur) {
			return nil
		}
		return putTask(s.sv, tx, bucketOut, bucketOutInput, []byte(id), cur, &cur.Input)
	}, nil)
}

// deletingNow returns the inbound keys whose deletion is deferred and not yet committed. Take it before
// opening the read transaction it filters: a mark goes only once its deletion is committed, so a
// transaction opened after the copy either holds the key and the copy its mark, or no longer holds the key.
// (Checking the marks during the transaction instead counted a key its older snapshot still held after
// the commit had removed the mark: the executor refused a task busy at MaxUnacknowledged.)
func (s *Store) deletingNow() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.deleting) == 0 {
		return nil
	}
	m := make(map[string]bool, len(s.deleting))
	for k := range s.deleting {
		m[k] = true
	}
	return m
}

// ListInbound returns every inbound task, without its input (Inbound reads one with it): the retry
// loop lists at every interval, and inputs are what a peer makes large.
func (s *Store) ListInbound() ([]*Inbound, error) {
	var out []*Inbound
	deleting := s.deletingNow()
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIn)
		return b.ForEach(func(k, _ []byte) error {
			if deleting[string(k)] {
				return nil // acknowledged: its deletion is deferred
			}
			r, err := get[Inbound](s.sv, b, bucketIn, k)
			if err != nil {
				return err
			}
			r.Input = nil // an older record may carry it inline
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// CountInbound returns how many inbound tasks of requester are stored (unfinished, or finished and not
// yet acknowledged), reading keys only.
func (s *Store) CountInbound(requester string) (int, error) {
	n := 0
	prefix := inKey(requester, "")
	deleting := s.deletingNow()
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketIn).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if !deleting[string(k)] { // acknowledged, its deletion deferred: no longer the requester's
				n++
			}
		}
		return nil
	})
	return n, err
}

// PruneInbound deletes finished inbound tasks (input and result) finished before cutoff and never
// acknowledged; it returns how many.
func (s *Store) PruneInbound(cutoff time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		n, err = pruneWhere(s.sv, tx, bucketIn, bucketInInput, func(r *Inbound) bool { return r.State == InDone && r.Finished.Before(cutoff) })
		return err
	})
	return n, err
}

// CreateOutbound stores a new outbound task; an existing ID is an error.
func (s *Store) CreateOutbound(rec *Outbound) error {
	return s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketOut).Get([]byte(rec.TaskID)) != nil {
			return fmt.Errorf("task store: task %s exists", rec.TaskID)
		}
		return putTask(s.sv, tx, bucketOut, bucketOutInput, []byte(rec.TaskID), rec, &rec.Input)
	})
}

// UpdateOutbound applies fn to the stored record (ErrNotFound when none) and stores it.
func (s *Store) UpdateOutbound(id string, fn func(*Outbound) error) (*Outbound, error) {
	var out *Outbound
	err := s.update(func(tx *bbolt.Tx) error {
		cur, err := getOut(s.sv, tx, []byte(id))
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
		return putTask(s.sv, tx, bucketOut, bucketOutInput, []byte(id), cur, &cur.Input)
	})
	return out, err
}

// Outbound returns one outbound task (ErrNotFound when none).
func (s *Store) Outbound(id string) (*Outbound, error) {
	var out *Outbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		out, err = getOut(s.sv, tx, []byte(id))
		return err
	})
	if err == nil && out == nil {
		err = fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return out, err
}

// ListOutbound returns every outbound task, without its input (Outbound reads one with it).
func (s *Store) ListOutbound() ([]*Outbound, error) {
	var out []*Outbound
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOut)
		return b.ForEach(func(k, _ []byte) error {
			r, err := get[Outbound](s.sv, b, bucketOut, k)
			if err != nil {
				return err
			}
			r.Input = nil
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
		var err error
		n, err = pruneWhere(s.sv, tx, bucketOut, bucketOutInput, func(r *Outbound) bool { return Final(r.State) && !r.Fetched.IsZero() && r.Fetched.Before(cutoff) })
		return err
	})
	return n, err
}

// pruneWhere deletes, in one transaction, every record of the records bucket for which expired holds, and its
// input from the inputs bucket; it returns how many.
func pruneWhere[T any](sv *sealedbolt.Values, tx *bbolt.Tx, records, inputs []byte, expired func(*T) bool) (int, error) {
	b := tx.Bucket(records)
	var del [][]byte
	err := b.ForEach(func(k, _ []byte) error {
		r, err := get[T](sv, b, records, k)
		if err != nil {
			return err
		}
		if expired(r) {
			del = append(del, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range del {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
		if err := tx.Bucket(inputs).Delete(k); err != nil {
			return 0, err
		}
	}
	return len(del), nil
}
