package consensus

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketStake = []byte("authz/stake-table")
	keyStake    = []byte("current")
)

// ErrStakeRollback: the table offered is older than the stored one.
var ErrStakeRollback = errors.New("stake table rollback refused")

// StakeStore keeps the stake table in force: bucket "authz/stake-table" of the agent's state.db, key
// "current" -> encoded table. It stores what it is given; verifying a table is the caller's job
// (VerifyStakeTable).
type StakeStore struct{ db *bolt.DB }

// NewStakeStore creates the bucket if needed.
func NewStakeStore(db *bolt.DB) (*StakeStore, error) {
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketStake)
		return err
	}); err != nil {
		return nil, fmt.Errorf("stake table: %w", err)
	}
	return &StakeStore{db: db}, nil
}

// Load returns the stored table's bytes (nil when none is stored).
func (s *StakeStore) Load() ([]byte, error) {
	var raw []byte
	if err := s.db.View(func(tx *bolt.Tx) error {
		raw = append([]byte(nil), tx.Bucket(bucketStake).Get(keyStake)...)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("stake table: %w", err)
	}
	return raw, nil
}

// Store stores t in place of the stored table. A table older than the stored one (issued in an earlier
// second; tables of the same second replace each other) is refused with ErrStakeRollback unless force is
// set; then rollback is true and replaced is the issue time of the table it replaced.
func (s *StakeStore) Store(t StakeTable, force bool) (rollback bool, replaced int64, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStake)
		if raw := b.Get(keyStake); len(raw) > 0 {
			if old, err := DecodeStakeTable(raw); err == nil && t.Issued < old.Issued {
				if !force {
					return fmt.Errorf("%w: the table offered was issued at %s, the one stored here at %s (by %s): install a newer table, or force the rollback (agentctl grant stake install --force, audited)",
						ErrStakeRollback, time.Unix(t.Issued, 0).UTC().Format(time.RFC3339), time.Unix(old.Issued, 0).UTC().Format(time.RFC3339), old.Issuer)
				}
				rollback, replaced = true, old.Issued
			}
		}
		return b.Put(keyStake, t.Encode())
	})
	if errors.Is(err, ErrStakeRollback) {
		return false, 0, err
	}
	if err != nil {
		return false, 0, fmt.Errorf("stake table: %w", err)
	}
	return rollback, replaced, nil
}
