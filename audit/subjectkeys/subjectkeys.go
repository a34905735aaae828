// Package subjectkeys is the store of the audit log's per-subject keys (ADR 0099): one random 32-byte
// key per subject agent ID, made on first use, under a random reference ("sk1:...") that the sealed
// audit fields carry. Each key is kept in state.db (bucket "audit.subject_keys", keyed by the subject's
// agent ID, with an index by reference), sealed under the agent's data key (a *sealbox.Box given to New).
// Destroy removes a subject's key in one fsynced bbolt transaction: from then on the audit fields
// sealed under it cannot be read. bbolt keeps the removed value in a free page until it is reused or
// the file is compacted (agentctl compact).
package subjectkeys

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/sealbox"
)

var (
	bucketKeys = []byte("audit.subject_keys") // subject agent ID -> sealed entry
	bucketRefs = []byte("audit.subject_refs") // reference -> subject agent ID
)

var b64 = base64.RawURLEncoding.Strict()

// entry is a stored key: reference then key.
type entry struct {
	ref string
	key []byte
}

// Store holds the subject keys. It is safe for concurrent use.
type Store struct {
	db  *bbolt.DB
	box *sealbox.Box // the data key every subject key is sealed under

	mu    sync.Mutex
	boxes map[string]*sealbox.Box // ref -> the subject's key, as opened
	refs  map[string]string       // subject -> ref, for the keys in boxes made or found by Key
}

// New returns the store over db, creating its buckets unless db is read-only. box is the agent's data
// key (ADR 0098); every subject key is sealed under it.
func New(db *bbolt.DB, box *sealbox.Box) (*Store, error) {
	if box == nil {
		return nil, errors.New("subjectkeys: a data key box is required")
	}
	if !db.IsReadOnly() {
		if err := db.Update(func(tx *bbolt.Tx) error {
			for _, b := range [][]byte{bucketKeys, bucketRefs} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("subject keys: %w", err)
		}
	}
	return &Store{db: db, box: box, boxes: map[string]*sealbox.Box{}, refs: map[string]string{}}, nil
}

func place(subject string) []byte { return []byte("custos/v1/audit-subject-key\x00" + subject) }

func encode(e entry) []byte { return append([]byte(e.ref), e.key...) }

// decode reads a stored entry's plaintext: a reference (RefPrefix and 22 characters) and a key.
func decode(b []byte) (entry, error) {
	n := len(audit.RefPrefix) + 22
	if len(b) != n+sealbox.KeySize || string(b[:len(audit.RefPrefix)]) != audit.RefPrefix {
		return entry{}, errors.New("subject key entry: wrong length or prefix")
	}
	if _, err := b64.DecodeString(string(b[len(audit.RefPrefix):n])); err != nil {
		return entry{}, fmt.Errorf("subject key entry: reference: %v", err)
	}
	return entry{ref: string(b[:n]), key: append([]byte(nil), b[n:]...)}, nil
}

func (s *Store) get(tx *bbolt.Tx, subject string) (entry, bool, error) {
	bk := tx.Bucket(bucketKeys)
	if bk == nil {
		return entry{}, false, nil
	}
	v := bk.Get([]byte(subject))
	if v == nil {
		return entry{}, false, nil
	}
	pt, err := s.box.Open(place(subject), v)
	if err != nil {
		// Sealed under another data key (a state.db restored without its key): the key is lost, as if
		// destroyed. Key replaces it; its fields read as erased.
		return entry{}, false, nil
	}
	e, err := decode(pt)
	clear(pt)
	return e, err == nil, err
}

func (s *Store) remember(e entry) (*sealbox.Box, error) {
	if b, ok := s.boxes[e.ref]; ok {
		return b, nil
	}
	b, err := sealbox.New(e.key)
	clear(e.key)
	if err != nil {
		return nil, err
	}
	s.boxes[e.ref] = b
	return b, nil
}

// Key returns subject's key and reference, making and durably storing a new one on first use
// (audit.SubjectKeys).
func (s *Store) Key(_ context.Context, subject string) (string, *sealbox.Box, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ref, ok := s.refs[subject]; ok {
		return ref, s.boxes[ref], nil // the common case: no transaction
	}
	var (
		e     entry
		found bool
	)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		if e, found, err = s.get(tx, subject); err != nil || found {
			return err
		}
		var id [16]byte
		if _, err := rand.Read(id[:]); err != nil {
			return err
		}
		e = entry{ref: audit.RefPrefix + b64.EncodeToString(id[:]), key: sealbox.NewKey()}
		if err := dropRefs(tx.Bucket(bucketRefs), subject); err != nil { // of a lost key
			return err
		}
		if err := tx.Bucket(bucketKeys).Put([]byte(subject), s.box.Seal(place(subject), encode(e))); err != nil {
			return err
		}
		return tx.Bucket(bucketRefs).Put([]byte(e.ref), []byte(subject))
	})
	if err != nil {
		return "", nil, fmt.Errorf("subject key: %w", err)
	}
	b, err := s.remember(e)
	if err == nil && s.refs != nil {
		s.refs[subject] = e.ref
	}
	return e.ref, b, err
}

// Lookup returns the key of a reference; ok is false when there is none (audit.KeyLookup).
func (s *Store) Lookup(ref string) (*sealbox.Box, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.boxes[ref]; ok {
		return b, true, nil
	}
	var (
		e     entry
		found bool
	)
	err := s.db.View(func(tx *bbolt.Tx) error {
		br := tx.Bucket(bucketRefs)
		if br == nil {
			return nil
		}
		subject := br.Get([]byte(ref))
		if subject == nil {
			return nil
		}
		var err error
		e, found, err = s.get(tx, string(subject))
		return err
	})
	if err != nil || !found || e.ref != ref {
		return nil, false, err
	}
	b, err := s.remember(e)
	return b, err == nil, err
}

// Ref returns subject's reference, if it has a key.
func (s *Store) Ref(subject string) (ref string, ok bool, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		e, found, err := s.get(tx, subject)
		ref, ok = e.ref, found
		return err
	})
	return ref, ok, err
}

// Destroy removes subject's key (crypto-shredding its sealed audit fields) in one fsynced transaction
// and returns its reference; ok is false when the subject had no key.
func (s *Store) Destroy(subject string) (ref string, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		bk, br := tx.Bucket(bucketKeys), tx.Bucket(bucketRefs)
		if bk == nil || br == nil {
			return nil
		}
		v := bk.Get([]byte(subject))
		if v == nil {
			return nil
		}
		if pt, oerr := s.box.Open(place(subject), v); oerr == nil {
			if e, derr := decode(pt); derr == nil {
				ref = e.ref
			}
			clear(pt)
		}
		ok = true
		if err := dropRefs(br, subject); err != nil {
			return err
		}
		return bk.Delete([]byte(subject))
	})
	if err != nil {
		return "", false, fmt.Errorf("destroy the subject key: %w", err)
	}
	// The boxes are dropped, not wiped: a record being written may still seal under one (its fields are
	// then unreadable anyway), and a wiped box would seal under an all-zero key.
	delete(s.boxes, ref)
	if r, found := s.refs[subject]; found {
		delete(s.boxes, r)
		delete(s.refs, subject)
	}
	return ref, ok, nil
}

// dropRefs removes every reference to subject (its key's, and those of keys lost with another data key),
// so that no reference links to the subject's ID any more.
func dropRefs(br *bbolt.Bucket, subject string) error {
	var refs [][]byte
	if err := br.ForEach(func(k, v []byte) error {
		if string(v) == subject {
			refs = append(refs, append([]byte(nil), k...))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, k := range refs {
		if err := br.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// KeyFile is where InterimBox keeps its data key, relative to the agent's home.
const KeyFile = "audit/subject-keys.key"

// InterimBox returns the box that seals the subject keys until the agent's data key (ADR 0098) is
// wired in: a random 32-byte key in <home>/audit/subject-keys.key (0600, written atomically on first
// use). It protects the subject keys no better than the file's permissions do. THE seam: at the merge
// with the data key, the one call of this function (agent/state.Open) takes the data-key box instead.
func InterimBox(home string) (*sealbox.Box, error) {
	path := filepath.Join(home, KeyFile)
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key = sealbox.NewKey()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("subject keys: %w", err)
		}
		if err := atomicfile.Create(path, key); err != nil {
			return nil, fmt.Errorf("subject keys: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("subject keys: %w", err)
	}
	defer clear(key)
	b, err := sealbox.New(key)
	if err != nil {
		return nil, fmt.Errorf("subject keys: %s: %w", path, err)
	}
	return b, nil
}
