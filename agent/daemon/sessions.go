package daemon

import (
	"context"

	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/transports/host"
)

// newManager builds the session manager (agent/sessions) over the daemon's transport plugins
// (agent/plugins): each connection's session configuration (authz.SessionConfigs), dispatch through
// authz, the task engine told of every peer that comes up, failures to reputation and audit
// (agent/events), the redial backoff of the configuration in force.
func (d *Daemon) newManager(maxHandshakes int) (*sessions.Manager, error) {
	return sessions.New(d.ctx, sessions.Config{
		Local: d.id.String(), MaxHandshakes: maxHandshakes,
		Transport: func(name string) sessions.Dialer {
			if ts := d.plugins.Get(name); ts != nil {
				return sessions.DialerOf[*host.Conn](ts.T)
			}
			return nil
		},
		Transports:    d.plugins.Names,
		SessionConfig: d.sessionConfig,
		// authz: RBAC, resource policy, task quota and feedback, then the task engine.
		Dispatch: func(ctx context.Context, p *session.Peer, msg *session.Message) error {
			return d.authz.Dispatch(ctx, p, msg)
		},
		PeerUp:       func(p string) { d.engine.PeerUp(p); go d.mbox.PeerUp(d.ctx, p); d.disc.CatchupPeerUp(d.ctx, p) },
		SessionEnded: d.events.SessionFailed,
		Redial: func() backoff.Policy {
			rc := d.config().Redial
			return backoff.Policy{Min: rc.Min, Max: rc.Max}
		},
		Metrics: d.metrics, Logger: d.log,
	})
}
