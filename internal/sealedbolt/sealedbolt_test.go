package sealedbolt

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/sealbox"
)

func newValues(t *testing.T) *Values {
	t.Helper()
	box, err := sealbox.New(sealbox.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return New(box)
}

func TestMigrateSealsExistingValues(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"peer-a": "203.0.113.7:4001 known-address", "peer-b": "task input 9f8e7d"}
	if err := db.Update(func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucket([]byte("peers"))
		for k, v := range want {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		_, err := b.CreateBucket([]byte("nested")) // left alone
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := newValues(t)
	if err := s.Migrate(db, []byte("peers"), []byte("absent")); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(db, []byte("peers")); err != nil { // a second start: nothing sealed twice
		t.Fatal(err)
	}
	if err := db.View(func(tx *bbolt.Tx) error {
		if !Sealed(tx, []byte("peers")) || !Sealed(tx, []byte("absent")) {
			t.Fatal("the migrated buckets are not marked sealed")
		}
		b := tx.Bucket([]byte("peers"))
		for k, v := range want {
			got, err := s.Get(b, []byte("peers"), []byte(k))
			if err != nil || string(got) != v {
				t.Fatalf("%s = %q, %v; want %q", k, got, err, v)
			}
		}
		if b.Bucket([]byte("nested")) == nil {
			t.Fatal("the nested bucket was lost")
		}
		// A value moved to another key does not open.
		if _, err := s.Open([]byte("peers"), []byte("peer-b"), b.Get([]byte("peer-a"))); !errors.Is(err, ErrOpen) {
			t.Fatalf("a moved value opened: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range want {
		if bytes.Contains(raw, []byte(v)) {
			t.Fatalf("the raw file still holds %q", v)
		}
	}
}

func TestNilValuesAreClear(t *testing.T) {
	var s *Values
	if New(nil) != nil {
		t.Fatal("New(nil) is not the nil Values")
	}
	if got := s.Seal([]byte("b"), []byte("k"), []byte("v")); string(got) != "v" {
		t.Fatalf("nil Values sealed: %q", got)
	}
	if got, err := s.Open([]byte("b"), []byte("k"), []byte("v")); err != nil || string(got) != "v" {
		t.Fatalf("nil Values Open = %q, %v", got, err)
	}
}
