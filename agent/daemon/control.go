package daemon

import (
	"context"
	"path/filepath"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/api/agentops"
	"github.com/custos-agent/custos/agent/api/peerops"
	"github.com/custos-agent/custos/agent/api/taskops"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/erasure"
	"github.com/custos-agent/custos/audit"
)

// services are the rooms' parts of the control API (agent/api.Service), each built with its
// dependencies. A room with new operations adds its Service here, one line; api.Join and api.Ops pair
// every handler with its agent/api.Table entry and refuse a gap.
func (d *Daemon) services() []api.Service {
	return []api.Service{
		agentops.New(agentops.Deps{Identity: d.cust, Delegations: d.dm, Tasks: d.engine, Audit: d.audit,
			Info: agentops.Info{Version: d.opts.Version, Started: d.started, ConfigPath: d.opts.ConfigPath,
				Digest: d.currentDigest, Control: func() string { return d.ctl.Path() }, MetricsURL: d.metricsURL,
				Sessions: d.sess.Statuses, Transports: d.plugins.Statuses, AuditWriting: d.authz.AuditWriting, Config: d.config},
			Reload: d.Reload,
			ReloadIdentity: func(ctx context.Context, actor string) ([]audit.Record, error) {
				_, recs, err := d.follower.Reload(ctx, actor)
				return recs, err
			}}),
		peerops.New(peerops.Deps{Self: d.id, Sessions: d.sess, Peers: d.peers, Reputation: d.rep, Transports: d.plugins.Names,
			InferTransport: config.InferTransport, Describe: d.authz.Describe(d.evidence), HeldGrants: d.authz.HeldGrants}),
		taskops.New(taskops.Deps{Self: d.id, Engine: d.engine, Replicator: d.replicator, Stakes: d.authz.CurrentStakes, Audit: d.events.Record}),
		d.authz.Service(authz.ControlDeps{Issuer: d.cust, PeerIDs: d.peers.IDs,
			Present: func(ctx context.Context) []api.Presentation { return peerops.Present(ctx, d.sess) }}),
		d.giver.Service(), // task.feedback
		d.db.GatewayKeys,  // the HTTP gateway's API keys (agentctl gateway key)
		d.disc,            // peers.find
		erasure.Service(erasure.Deps{Self: d.id, Peers: d.peers, Reputation: d.rep, Grants: d.authz.RBAC(), Held: d.db.Held, // data.export, data.erase
			Evidence: d.evidence, Tasks: d.taskStore, Audit: d.audit, AuditDir: filepath.Join(d.home, AuditDir), AuditKeys: d.db.SubjectKeys}),
	}
}
