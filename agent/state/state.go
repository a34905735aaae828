// Package state is the agent's state database (state.db in the home) and the stores kept in it, opened
// once for the whole process: bbolt allows one handle per file, so a second agent started on the same
// home is refused with a message that says so. The stores are the other rooms' own (the peer cache, the
// task store, the grants and revocations, the grants this agent holds, the stake table, the consensus
// evidence, the gateway's API keys, the mailbox, the audit log's subject keys); this room only opens them over the one handle and closes it. The
// reputation store lives in the same file but is built by the daemon, with its configuration and
// callbacks, over DB.Bolt.
package state

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/custos-agent/custos/agent/atrest"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/mailbox"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/audit/subjectkeys"
	"github.com/custos-agent/custos/internal/sealbox"
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
	// Box seals values at rest under the home's data key (agent/atrest, ADR 0098); nil when the
	// identity's keystore cannot wrap a data key.
	Box *sealbox.Box
}

// Open opens (creating it 0600) the state database at path and every store in it, the stores that hold
// peer data sealing their values with the data key that src's keystore wraps (state.key beside path,
// made on first open; agent/atrest). A file another process holds is an error that names it and asks
// whether an agent already runs on this home.
func Open(ctx context.Context, path string, src atrest.Source, log *slog.Logger) (_ *DB, err error) {
	box, err := atrest.ForHome(ctx, filepath.Dir(path), src, log)
	if err != nil {
		return nil, err
	}
	db, err := OpenWithBox(path, box)
	if err != nil && box != nil {
		box.Close()
	}
	return db, err
}

// AuditKeys is what the audit log seals personal fields with: the subject keys when seal is set
// (privacy.seal_audit_fields, ADR 0099), else nil (fields in the clear).
func (db *DB) AuditKeys(seal bool) audit.SubjectKeys {
	if !seal || db.SubjectKeys == nil {
		return nil
	}
	return db.SubjectKeys
}

// OpenWithBox opens the state database at path with a given Box (nil: values in the clear).
func OpenWithBox(path string, box *sealbox.Box) (_ *DB, err error) {
	b, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: LockTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s is locked by another process: is an agent already running for this home?", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db := &DB{Bolt: b, Box: box}
	defer func() {
		if err != nil {
			_ = b.Close()
		}
	}()
	if db.Peers, err = peers.New(b); err != nil {
		return nil, err
	}
	if db.Tasks, err = tasks.NewStore(b, tasks.WithBox(box)); err != nil {
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
	// The subject keys are sealed under the interim key file next to the audit log
	// (subjectkeys.InterimBox), not yet under the home's data key (ADR 0098): `agentctl audit query` on
	// a stopped agent opens them without the keystore. Crypto-shredding (destroying a subject's key)
	// holds either way; at rest they are protected by file permissions only (ADR 0099).
	keyBox, err := subjectkeys.InterimBox(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	if db.SubjectKeys, err = subjectkeys.New(b, keyBox); err != nil {
		return nil, err
	}
	return db, nil
}

// Close closes the file and wipes the data key (the stores hold no other resource).
func (db *DB) Close() error {
	err := db.Bolt.Close()
	if db.Box != nil {
		db.Box.Close()
	}
	return err
}
