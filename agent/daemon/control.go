package daemon

import (
	"context"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/api/agentops"
	"github.com/custos-agent/custos/agent/api/peerops"
	"github.com/custos-agent/custos/agent/api/taskops"
	"github.com/custos-agent/custos/agent/authz"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// services are the rooms' parts of the control API (agent/api.Service), each built with its
// dependencies. A room with new operations adds its Service here, one line; api.Join and api.Ops pair
// every handler with its agent/api.Table entry and refuse a gap.
func (d *Daemon) services() []api.Service {
	sess := sessionsView{m: d.mgr, ctx: d.ctx}
	return []api.Service{
		agentops.New(agentops.Deps{Identity: d.cust, Delegations: d.dm, Tasks: d.engine, Audit: d.audit,
			Info: agentops.Info{Version: d.opts.Version, Started: d.started, ConfigPath: d.opts.ConfigPath,
				Digest: d.currentDigest, Control: func() string { return d.ctl.Path() }, MetricsURL: d.metricsURL,
				Sessions: d.mgr.statuses, Transports: d.transportStatuses, AuditWriting: d.authz.AuditWriting, Config: d.config},
			Reload: d.Reload,
			ReloadIdentity: func(ctx context.Context, actor string) ([]audit.Record, error) {
				_, recs, err := d.reloadIdentity(ctx, actor)
				return recs, err
			}}),
		peerops.New(peerops.Deps{Self: d.id, Sessions: sess, Peers: d.peers, Reputation: d.rep, Transports: d.transportNames,
			InferTransport: config.InferTransport, Describe: d.describePeer, HeldGrants: d.authz.HeldGrants}),
		taskops.New(taskops.Deps{Self: d.id, Engine: d.engine, Replicator: d.replicator, Stakes: d.authz.CurrentStakes, Audit: d.events.Record}),
		d.authz.Service(authz.ControlDeps{Issuer: d.cust, PeerIDs: d.peers.IDs,
			Present: func(ctx context.Context) []api.Presentation { return peerops.Present(ctx, sess) }}),
		d.giver.Service(), // task.feedback
		d.gwKeys,
		d.disc, // peers.find
	}
}

// transportStatuses are the configured transports with their plugin processes and listen addresses.
func (d *Daemon) transportStatuses() []api.TransportStatus {
	var out []api.TransportStatus
	for _, name := range d.transportNames() {
		ts := d.transports[name]
		st := api.TransportStatus{Name: name, Plugin: ts.cfg.Plugin, SHA256: ts.cfg.SHA256, PID: ts.t.PID(), Running: ts.t.PID() != 0, Restarts: ts.t.Restarts()}
		st.SandboxDetail = ts.t.Sandbox()
		st.Sandbox = st.SandboxDetail.String()
		for _, l := range ts.listeners {
			st.Listen = append(st.Listen, l.Addrs()...)
		}
		out = append(out, st)
	}
	return out
}

// sessionsView is the session manager as the rooms see it (peerops.Sessions, consensus.PeerList).
type sessionsView struct {
	m   *manager
	ctx context.Context // the daemon's: re-dial targets live until Shutdown
}

func (s sessionsView) Statuses() []api.SessionStatus        { return s.m.statuses() }
func (s sessionsView) Targets() map[string]api.TargetStatus { return s.m.targetStatuses() }
func (s sessionsView) RemoveTarget(id string)               { s.m.removeTarget(id) }

func (s sessionsView) AddTarget(id string, addrs []api.Address, source string) {
	s.m.addTarget(s.ctx, id, addrs, source)
}

func (s sessionsView) Session(id string) (api.SessionStatus, bool) {
	if ps := s.m.session(id); ps != nil {
		return ps.status(), true
	}
	return api.SessionStatus{}, false
}

func (s sessionsView) Dial(ctx context.Context, id identity.ID, addr api.Address) (api.SessionStatus, error) {
	ps, err := s.m.dial(ctx, id, addr)
	if err != nil {
		return api.SessionStatus{}, err
	}
	return ps.status(), nil
}

func (s sessionsView) Close(id string) {
	if ps := s.m.session(id); ps != nil {
		_ = ps.s.Close()
	}
}

// Connected implements consensus.PeerList: the peers with a live session.
func (s sessionsView) Connected() []identity.ID {
	var out []identity.ID
	for _, st := range s.m.statuses() {
		if id, err := identity.ParseID(st.Peer); err == nil {
			out = append(out, id)
		}
	}
	return out
}
