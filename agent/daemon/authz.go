package daemon

import (
	"context"
	"os"

	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/tasks"
)

// newAuthz builds the daemon's authorization (agent/authz) over its stores in state.db (agent/state: the
// grants and revocations, the held grants, the stake table, the peer cache), reputation, the task
// engine, the audit log and the metrics.
func newAuthz(ctx context.Context, d *Daemon, cfg *config.Config) (*authz.Authz, error) {
	z, err := authz.New(ctx, cfg, authz.Deps{
		Self: d.cust, Peers: d.peers, Held: d.db.Held, Stakes: d.db.Stakes, Reputation: d.rep, Tasks: authzTasks{d}, Metrics: d.metrics,
		Audit: d.events.Record, GrantStore: d.db.Grants, AuthorizeLocal: d.opts.AuthorizeLocal, UID: uint32(os.Getuid()),
		Send: func(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
			return d.mgr.Send(ctx, peer, t, payload)
		},
		Load: func() float64 {
			if d.mgr == nil {
				return 0
			}
			return d.mgr.HandshakeLoad()
		},
		Logger: d.log,
	})
	if err != nil {
		return nil, err
	}
	d.events.CountPeers()
	return z, nil
}

// authzTasks is the task engine and store as authorization sees them (the engine starts after it).
type authzTasks struct{ d *Daemon }

func (t authzTasks) Handle(ctx context.Context, peer string, typ envelope.MessageType, payload []byte) error {
	return t.d.engine.Handle(ctx, peer, typ, payload)
}
func (t authzTasks) Inbound(requester, id string) (*tasks.Inbound, error) {
	return t.d.taskStore.Inbound(requester, id)
}
func (t authzTasks) Outbound(id string) (*tasks.Outbound, error) { return t.d.taskStore.Outbound(id) }
