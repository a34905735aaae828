package state

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

// TestCompactRemovesErasedBytes: a value deleted from state.db stays in its free pages until Compact,
// after which the raw file no longer holds it while the live data is intact; a running agent's lock
// makes Compact refuse; --keep-backup keeps the old file.
func TestCompactRemovesErasedBytes(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, "state.db")
	db, err := OpenWithBox(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	gone := []byte("ed25519:erased-subject-" + strings.Repeat("x", 200))
	keep := []byte("ed25519:kept-subject-" + strings.Repeat("y", 200))
	ref, _, err := db.SubjectKeys.Key(context.Background(), string(gone))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Bolt.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("test"))
		if err != nil {
			return err
		}
		if err := b.Put(gone, gone); err != nil {
			return err
		}
		return b.Put(keep, keep)
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Bolt.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("test")).Delete(gone) }); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := db.SubjectKeys.Destroy(string(gone)); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if _, _, err := Compact(path, false); err == nil || !strings.Contains(err.Error(), "stop the agent") {
		t.Fatalf("Compact while open: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Contains(raw, gone) {
		t.Skip("bbolt reused the freed page already: nothing to show")
	}
	if _, _, err := Compact(path, true); err != nil {
		t.Fatal(err)
	}
	raw, _ = os.ReadFile(path)
	if bytes.Contains(raw, gone) || bytes.Contains(raw, []byte(ref)) {
		t.Fatal("the erased value is still in the compacted file")
	}
	if !bytes.Contains(raw, keep) {
		t.Fatal("the live value was lost")
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("compacted file: %v %v", fi, err)
	}
	if bak, _ := os.ReadFile(path + ".bak"); !bytes.Contains(bak, gone) {
		t.Fatal("no backup of the old file")
	}
	db, err = OpenWithBox(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, ok, _ := db.SubjectKeys.Lookup(ref); ok {
		t.Fatal("the destroyed key is back")
	}
}
