package rbac

import (
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"
)

var bucketHeldGrants = []byte("authz/own-grants")

// HeldGrants are the grants an agent holds (installed with agentctl grant install) and presents in the
// handshakes it starts: bucket "authz/own-grants" of the agent's state.db, grant ID -> encoded grant.
type HeldGrants struct{ db *bolt.DB }

// NewHeldGrants creates the bucket if needed.
func NewHeldGrants(db *bolt.DB) (*HeldGrants, error) {
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketHeldGrants)
		return err
	}); err != nil {
		return nil, fmt.Errorf("own grants: %w", err)
	}
	return &HeldGrants{db: db}, nil
}

// List returns the held grants, oldest first. A stored record that does not decode is an error naming it.
func (o *HeldGrants) List() ([]Grant, error) {
	var out []Grant
	err := o.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHeldGrants).ForEach(func(k, v []byte) error {
			g, err := DecodeGrant(v)
			if err != nil || g.ID != string(k) {
				return fmt.Errorf("stored grant %q is corrupt (%v): remove it with agentctl grant remove %s", k, err, k)
			}
			out = append(out, g)
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Issued < out[j].Issued })
	return out, err
}

// Put stores a held grant (replacing one with its ID).
func (o *HeldGrants) Put(g Grant) error {
	return o.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHeldGrants).Put([]byte(g.ID), g.Encode()) })
}

// Remove deletes a held grant and reports whether it was there.
func (o *HeldGrants) Remove(id string) (bool, error) {
	found := false
	err := o.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHeldGrants)
		found = b.Get([]byte(id)) != nil
		return b.Delete([]byte(id))
	})
	return found, err
}
