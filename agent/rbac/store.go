package rbac

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Store persists grants and revocations. The Authorizer keeps everything in memory and writes through.
type Store interface {
	PutGrant(ctx context.Context, g Grant) error
	DeleteGrant(ctx context.Context, grantID string) error
	PutRevocation(ctx context.Context, r Revocation) error
	// Load returns everything stored. A record that does not decode is an error naming it.
	Load(ctx context.Context) ([]Grant, []Revocation, error)
}

// Bucket names inside the agent's state.db.
var (
	bucketGrants      = []byte("rbac/grants")
	bucketRevocations = []byte("rbac/revocations")
)

// BoltStore keeps grants and revocations in two buckets ("rbac/grants", "rbac/revocations") of a bbolt
// database the caller opened (the agent's <home>/state.db; one handle per process is shared by every
// package). Each write is one fsynced transaction.
type BoltStore struct{ db *bolt.DB }

// NewBoltStore creates the buckets if needed.
func NewBoltStore(db *bolt.DB) (*BoltStore, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketGrants, bucketRevocations} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rbac store: create buckets: %w", err)
	}
	return &BoltStore{db: db}, nil
}

// PutGrant implements Store.
func (s *BoltStore) PutGrant(_ context.Context, g Grant) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketGrants).Put([]byte(g.ID), g.Encode()) })
}

// DeleteGrant implements Store.
func (s *BoltStore) DeleteGrant(_ context.Context, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketGrants).Delete([]byte(id)) })
}

// PutRevocation implements Store.
func (s *BoltStore) PutRevocation(_ context.Context, r Revocation) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevocations).Put([]byte(r.Grant), r.Encode())
	})
}

// Load implements Store.
func (s *BoltStore) Load(_ context.Context) ([]Grant, []Revocation, error) {
	var gs []Grant
	var rs []Revocation
	err := s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketGrants).ForEach(func(k, v []byte) error {
			g, err := DecodeGrant(v)
			if err != nil || g.ID != string(k) {
				return fmt.Errorf("stored grant %q is corrupt (%v): restore state.db from a backup or delete the record", k, err)
			}
			gs = append(gs, g)
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			r, err := DecodeRevocation(v)
			if err != nil || r.Grant != string(k) {
				return fmt.Errorf("stored revocation %q is corrupt (%v): restore state.db from a backup", k, err)
			}
			rs = append(rs, r)
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("rbac store: %w", err)
	}
	return gs, rs, nil
}
