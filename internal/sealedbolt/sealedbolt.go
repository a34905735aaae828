// Package sealedbolt is the one place where the stores of state.db seal their values (ADR 0098): each
// value is sealed with the agent's sealbox.Box for its place, the bucket's name and the value's key, so
// a value copied to another key or bucket does not open. Keys stay in the clear (the stores seek by
// them). A nil *Values keeps values in the clear: it is what a store built without a Box uses (tests,
// tools that read a state file they were given).
//
// Homes made before encryption at rest hold plaintext values: Migrate seals every value of a bucket in
// one transaction and marks the bucket as sealed (in the bucket "sealedbolt"), so a store never has to
// guess from a value's bytes whether it is sealed.
package sealedbolt

import (
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/internal/sealbox"
)

// bucketMeta records which buckets Migrate sealed: bucket name -> "sealed".
var bucketMeta = []byte("sealedbolt")

var sealedMark = []byte("sealed")

// ErrOpen is a value that does not open: sealed under another data key, moved, altered, or left in the
// clear in a bucket that is sealed.
var ErrOpen = sealbox.ErrOpen

// Values seals and opens the values of state.db's buckets. A nil *Values is the identity.
type Values struct {
	box *sealbox.Box
}

// New returns Values sealing with box (nil box: values in the clear).
func New(box *sealbox.Box) *Values {
	if box == nil {
		return nil
	}
	return &Values{box: box}
}

// place is what a value is bound to: its bucket and key.
func place(bucket, key []byte) []byte {
	p := make([]byte, 0, len(bucket)+1+len(key))
	p = append(p, bucket...)
	p = append(p, 0)
	return append(p, key...)
}

// Seal returns what to store for value v at bucket/key.
func (s *Values) Seal(bucket, key, v []byte) []byte {
	if s == nil {
		return v
	}
	return s.box.Seal(place(bucket, key), v)
}

// Open returns the plaintext of a stored value (nil stays nil: absent).
func (s *Values) Open(bucket, key, stored []byte) ([]byte, error) {
	if s == nil || stored == nil {
		return stored, nil
	}
	v, err := s.box.Open(place(bucket, key), stored)
	if err != nil {
		return nil, fmt.Errorf("state.db %s/%x: %w", bucket, key, err)
	}
	return v, nil
}

// Put seals v and puts it in b (the bucket named bucket).
func (s *Values) Put(b *bbolt.Bucket, bucket, key, v []byte) error {
	return b.Put(key, s.Seal(bucket, key, v))
}

// Get reads and opens the value of key in b (the bucket named bucket); nil, nil when absent.
func (s *Values) Get(b *bbolt.Bucket, bucket, key []byte) ([]byte, error) {
	return s.Open(bucket, key, b.Get(key))
}

// Migrate seals, once, the plaintext values of each named top-level bucket that exists: every value of a
// bucket in one transaction, then the bucket is marked sealed. Nested buckets are left alone (a store
// that nests seals its nested values itself). A nil *Values does nothing.
func (s *Values) Migrate(db *bbolt.DB, buckets ...[]byte) error {
	if s == nil {
		return nil
	}
	for _, name := range buckets {
		err := db.Update(func(tx *bbolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			if meta.Get(name) != nil {
				return nil
			}
			b := tx.Bucket(name)
			if b != nil {
				type kv struct{ k, v []byte }
				var plain []kv
				if err := b.ForEach(func(k, v []byte) error {
					if v != nil {
						plain = append(plain, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
					}
					return nil
				}); err != nil {
					return err
				}
				for _, e := range plain {
					if err := s.Put(b, name, e.k, e.v); err != nil {
						return err
					}
					clear(e.v)
				}
			}
			return meta.Put(name, sealedMark)
		})
		if err != nil {
			return fmt.Errorf("seal the values of state.db bucket %s: %w", name, err)
		}
	}
	return nil
}

// Sealed reports whether Migrate marked bucket as sealed in db.
func Sealed(tx *bbolt.Tx, bucket []byte) bool {
	meta := tx.Bucket(bucketMeta)
	return meta != nil && meta.Get(bucket) != nil
}
