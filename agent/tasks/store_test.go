package tasks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/sealbox"
)

func openStore(t *testing.T, path string) (*bbolt.DB, *Store) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(db, WithBox(testBox(t)))
	if err != nil {
		t.Fatal(err)
	}
	return db, s
}

// testBox seals the test stores' values (ADR 0098) under one fixed data key, so that a store reopened
// on the same file opens them.
func testBox(t *testing.T) *sealbox.Box {
	t.Helper()
	box, err := sealbox.New(bytes.Repeat([]byte{0x42}, sealbox.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return box
}

// TestStoreSealsAtRest: task inputs and records are not in the file in the clear, and a store made
// before encryption at rest has its values sealed when it opens with a Box, without losing any.
func TestStoreSealsAtRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := NewStore(db) // an older agent: values in the clear
	if err != nil {
		t.Fatal(err)
	}
	const oldIn, newIn = "old-input-5b1e9c-unique", "new-input-77d0aa-unique"
	if err := plain.CreateOutbound(&Outbound{TaskID: "t-old", To: "peer-old", Input: []byte(oldIn), State: OutPending}); err != nil {
		t.Fatal(err)
	}
	sealed, err := NewStore(db, WithBox(testBox(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := sealed.CreateOutbound(&Outbound{TaskID: "t-new", To: "peer-new", Input: []byte(newIn), State: OutPending}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"t-old": oldIn, "t-new": newIn} {
		got, err := sealed.Outbound(id)
		if err != nil || got == nil || string(got.Input) != want {
			t.Fatalf("Outbound(%s) = %+v, %v; want input %q", id, got, err, want)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{newIn, "peer-new", oldIn, "peer-old"} {
		if bytes.Contains(raw, []byte(v)) {
			t.Errorf("state.db holds %q in the clear", v)
		}
	}
}

// TestStoreGroupCommit: many concurrent changes, some of which fail, share commits; each change gets its
// own outcome, and every successful one is on disk after the database is closed and opened again.
func TestStoreGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, s := openStore(t, path)
	input := bytes.Repeat([]byte("in"), 40000)
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs[i] = s.CreateOutbound(&Outbound{TaskID: fmt.Sprintf("task-%03d", i), To: "peer", Input: input, State: OutPending})
		}()
		go func() { // a change that fails inside the same batches
			defer wg.Done()
			_, errs[n+i] = s.UpdateOutbound(fmt.Sprintf("missing-%03d", i), func(*Outbound) error { return nil })
		}()
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		if !errors.Is(errs[n+i], ErrNotFound) {
			t.Fatalf("update of a missing task %d: %v, want ErrNotFound", i, errs[n+i])
		}
	}
	// Updates of one record from many goroutines at once are all applied (none lost in a batch).
	wg = sync.WaitGroup{}
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.UpdateOutbound("task-000", func(r *Outbound) error { r.Attempts++; return nil }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, s = openStore(t, path)
	defer db.Close()
	outs, err := s.ListOutbound()
	if err != nil || len(outs) != n {
		t.Fatalf("%d tasks after reopening, want %d (%v)", len(outs), n, err)
	}
	for _, o := range outs {
		full, err := s.Outbound(o.TaskID) // the listing leaves inputs out
		if err != nil || !bytes.Equal(full.Input, input) || o.Input != nil {
			t.Fatalf("task %s lost its input (or the listing carried it): %v", o.TaskID, err)
		}
	}
	if o, _ := s.Outbound("task-000"); o.Attempts != 50 {
		t.Fatalf("attempts %d after 50 concurrent increments", o.Attempts)
	}
}

// TestStoreInputBesideRecord: the input is stored once beside the record, not in it; a record written
// before the split (input inline) still reads, and moves its input out at its next change.
func TestStoreInputBesideRecord(t *testing.T) {
	db, s := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	input := []byte("the input")
	if err := s.CreateOutbound(&Outbound{TaskID: "new", To: "peer", Input: input, State: OutPending}); err != nil {
		t.Fatal(err)
	}
	raw := func(bucket []byte, key string) []byte {
		var v []byte
		_ = db.View(func(tx *bbolt.Tx) error {
			got, err := s.sv.Get(tx.Bucket(bucket), bucket, []byte(key))
			v = append([]byte(nil), got...)
			return err
		})
		return v
	}
	if rec := raw(bucketOut, "new"); !bytes.Contains(rec, []byte(`"input":null`)) {
		t.Fatalf("record holds the input: %s", rec)
	}
	if got := raw(bucketOutInput, "new"); !bytes.Equal(got, input) {
		t.Fatalf("input bucket holds %q", got)
	}
	// An older record with the input inline.
	old, _ := json.Marshal(&Outbound{TaskID: "old", To: "peer", Input: input, State: OutSent})
	if err := db.Update(func(tx *bbolt.Tx) error { return s.sv.Put(tx.Bucket(bucketOut), bucketOut, []byte("old"), old) }); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Outbound("old"); err != nil || !bytes.Equal(o.Input, input) {
		t.Fatalf("old record: %+v %v", o, err)
	}
	if _, err := s.UpdateOutbound("old", func(r *Outbound) error { r.State = OutAccepted; return nil }); err != nil {
		t.Fatal(err)
	}
	if rec := raw(bucketOut, "old"); !bytes.Contains(rec, []byte(`"input":null`)) || !bytes.Equal(raw(bucketOutInput, "old"), input) {
		t.Fatalf("old record after a change: %s", rec)
	}
	if o, err := s.Outbound("old"); err != nil || !bytes.Equal(o.Input, input) || o.State != OutAccepted {
		t.Fatalf("old record after a change: %+v %v", o, err)
	}
	// Deleting an inbound task deletes its input.
	if _, _, err := s.Accept(&Inbound{TaskID: "t", Requester: "r", Input: input, State: InAccepted}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteInbound("r", "t"); err != nil {
		t.Fatal(err)
	}
	if got := raw(bucketInInput, "r\x00t"); len(got) != 0 {
		t.Fatalf("input of a deleted task left behind: %q", got)
	}
}

// TestStoreDeferredChanges: a deferred change (the ...Later methods) is applied in order with the changes
// waited for, rides on the next commit, is committed on its own within LaterDelay when nothing else
// commits, and a deferred deletion leaves the requester's count and the listing at once.
func TestStoreDeferredChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, s := openStore(t, path)
	for _, id := range []string{"a", "b"} {
		if _, _, err := s.Accept(&Inbound{TaskID: id, Requester: "r", State: InAccepted}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateOutbound(&Outbound{TaskID: "o", To: "p", State: OutPending}); err != nil {
		t.Fatal(err)
	}
	s.DeleteInboundLater("r", "a")
	if n, err := s.CountInbound("r"); err != nil || n != 1 {
		t.Fatalf("count right after a deferred deletion: %d %v, want 1", n, err)
	}
	if l, _ := s.ListInbound(); len(l) != 1 || l[0].TaskID != "b" {
		t.Fatalf("listing right after a deferred deletion: %+v", l)
	}
	// In order: the deferred change to b comes before the waited-for one, in the same commit.
	s.UpdateInboundLater("r", "b", func(r *Inbound) bool { r.State, r.Runs = InRunning, 1; return true })
	in, err := s.UpdateInbound("r", "b", func(r *Inbound) error {
		if r.State != InRunning {
			return fmt.Errorf("the deferred change made before was not applied first (state %s)", r.State)
		}
		r.State = InDone
		return nil
	})
	if err != nil || in.Runs != 1 {
		t.Fatalf("%v %+v", err, in)
	}
	if a, _ := s.Inbound("r", "a"); a != nil {
		t.Fatal("the deferred deletion was not committed with the next commit")
	}
	// Alone, and on a missing record (no change, no error for anyone).
	s.UpdateOutboundLater("o", func(r *Outbound) bool { r.State = OutSent; return true })
	s.UpdateOutboundLater("missing", func(r *Outbound) bool { r.State = OutSent; return true })
	eventually(t, "a deferred change committed alone", func() bool { o, _ := s.Outbound("o"); return o.State == OutSent })
	// Committed: on disk after the database is closed and opened again.
	s.UpdateOutboundLater("o", func(r *Outbound) bool { r.Attempts = 7; return true })
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, s = openStore(t, path)
	defer db.Close()
	if o, err := s.Outbound("o"); err != nil || o.State != OutSent || o.Attempts != 7 {
		t.Fatalf("after reopening: %+v %v", o, err)
	}
	if n, _ := s.CountInbound("r"); n != 1 {
		t.Fatalf("after reopening: %d inbound tasks, want 1", n)
	}
}

// TestStoreDeferredDeletionNeverCountedAgain: while deferred deletions commit, a concurrent CountInbound
// never counts a task whose deletion was made before it started (the executor refused a task busy at
// MaxUnacknowledged when a count's read snapshot still held a key whose mark the commit had removed).
func TestStoreDeferredDeletionNeverCountedAgain(t *testing.T) {
	for round := 0; round < 8; round++ { // a race: several chances to lose it
		deferredDeletionRound(t)
	}
}

func deferredDeletionRound(t *testing.T) {
	db, s := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	const n = 3000
	err := s.update(func(tx *bbolt.Tx) error {
		for i := 0; i < n; i++ {
			if err := putTask(nil, tx, bucketIn, bucketInInput, inKey("r", fmt.Sprintf("t%05d", i)), &Inbound{State: InDone}, new([]byte)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var deleted atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // deletions from the end of the key range (visited last by a count), each committed at once
		defer wg.Done()
		defer close(stop)
		for i := n - 1; i >= n-300; i-- {
			s.DeleteInboundLater("r", fmt.Sprintf("t%05d", i))
			deleted.Add(1)
			if err := s.Flush(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-stop:
			wg.Wait()
			return
		default:
		}
		before := deleted.Load()
		got, err := s.CountInbound("r")
		if err != nil {
			t.Fatal(err)
		}
		if want := n - int(before); got > want {
			t.Fatalf("CountInbound %d after %d deletions, want at most %d", got, before, want)
		}
	}
}
