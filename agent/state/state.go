// Package state is the agent's state database (state.db in the home) and the stores kept in it, opened
// once for the whole process: bbolt allows one handle per file, so a second agent started on the same
// home is refused with a message that says so. The stores are the other rooms' own (the peer cache, the
// task store, the grants and revocations, the grants this agent holds, the stake table, the consensus
// evidence, the gateway's API keys, the mailbox, the audit log's subject keys); this room only opens them over the one handle and closes it. The
// reputation store lives in the same file but is built by the daemon, with its configuration and
// callbacks, over DB.Bolt.
package state

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit/subjectkeys"
)

// LockTimeout is how long Open waits for another process's lock on the file.
const LockTimeout = time.Second

// DB is the open state database and its stores.
type DB struct {
	Bolt        *bbolt.DB
	Peers       *peers.Cache             // other agents' key event logs and delegations
	Tasks       *tasks.Store             // submitted and received tasks
	Grants      *rbac.BoltStore          // grants and revocations peers present and administrators sign
	Held        *rbac.HeldGrants         // the grants this agent holds and presents
	Stakes      *consensus.StakeStore    // the stake table in force
	Evidence    *consensus.EvidenceStore // evidence of dissent in replicated tasks
	GatewayKeys *gateway.Keys            // the HTTP gateway's API keys
	Mailbox     *mailbox.Store           // store-and-forward: sealed envelopes waiting, messages received
	SubjectKeys *subjectkeys.Store       // the audit log's per-subject keys (crypto-shredding, ADR 0099)
}

// Open opens (creating it 0600) the state database at path and every store in it. A file another
// process holds is an error that names it and asks whether an agent already runs on this home.
func Open(path string) (_ *DB, err error) {
	b, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: LockTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s is locked by another process: is an agent already running for this home?", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db := &DB{Bolt: b}
	defer func() {
		if err != nil {
			_ = b.Close()
		}
	}()
	if db.Peers, err = peers.New(b); err != nil {
		return nil, err
	}
	if db.Tasks, err = tasks.NewStore(b); err != nil {
		return nil, err
	}
	if db.Grants, err = rbac.NewBoltStore(b); err != nil {
		return nil, err
	}
	if db.Held, err = rbac.NewHeldGrants(b); err != nil {
		return nil, err
	}
	if db.Stakes, err = consensus.NewStakeStore(b); err != nil {
		return nil, err
	}
	if db.Evidence, err = consensus.NewEvidenceStore(b); err != nil {
		return nil, err
	}
	if db.GatewayKeys, err = gateway.NewKeys(b, nil); err != nil {
		return nil, err
	}
	if db.Mailbox, err = mailbox.NewStore(b, mailbox.Limits{}); err != nil {
		return nil, err
	}
	// The subject keys are sealed under a data key: until the agent's data key (ADR 0098) is wired in,
	// the interim key file next to the audit log (subjectkeys.InterimBox, the one seam to replace).
	box, err := subjectkeys.InterimBox(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	if db.SubjectKeys, err = subjectkeys.New(b, box); err != nil {
		return nil, err
	}
	return db, nil
}

// Close closes the file (the stores hold no other resource).
func (db *DB) Close() error { return db.Bolt.Close() }
