package peerops

import (
	"context"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/identity"
)

// Manager is the session manager (agent/sessions) in the control API's types: it implements Sessions
// and consensus.PeerList.
type Manager struct{ M *sessions.Manager }

// SessionStatus is a session's status in the control API's types.
func SessionStatus(s sessions.Status) api.SessionStatus {
	return api.SessionStatus{Peer: s.Peer, Transport: s.Transport, Remote: s.Remote, Role: s.Role,
		Established: s.Established, Expires: s.Expires, Generation: s.Generation, SessionID: s.SessionID}
}

// Statuses are the live sessions.
func (m Manager) Statuses() []api.SessionStatus {
	var out []api.SessionStatus
	for _, s := range m.M.Statuses() {
		out = append(out, SessionStatus(s))
	}
	return out
}

// Targets are the peers re-dialled when their session ends, by ID.
func (m Manager) Targets() map[string]api.TargetStatus {
	out := map[string]api.TargetStatus{}
	for id, t := range m.M.TargetStatuses() {
		addrs := make([]api.Address, len(t.Addresses))
		for i, a := range t.Addresses {
			addrs[i] = api.Address{Transport: a.Transport, Address: a.Address}
		}
		out[id] = api.TargetStatus{Addresses: addrs, Source: t.Source, Attempts: t.Attempts, LastError: t.LastError}
	}
	return out
}

// Session is the live session with peer id, if there is one.
func (m Manager) Session(id string) (api.SessionStatus, bool) {
	if ps := m.M.Session(id); ps != nil {
		return SessionStatus(ps.Status()), true
	}
	return api.SessionStatus{}, false
}

// Dial opens a session with id at addr.
func (m Manager) Dial(ctx context.Context, id identity.ID, a api.Address) (api.SessionStatus, error) {
	ps, err := m.M.Dial(ctx, id, sessions.Address{Transport: a.Transport, Address: a.Address})
	if err != nil {
		return api.SessionStatus{}, err
	}
	return SessionStatus(ps.Status()), nil
}

// AddTarget keeps re-dialling id at addrs.
func (m Manager) AddTarget(id string, addrs []api.Address, source string) {
	out := make([]sessions.Address, len(addrs))
	for i, a := range addrs {
		out[i] = sessions.Address{Transport: a.Transport, Address: a.Address}
	}
	m.M.AddTarget(id, out, source)
}

// RemoveTarget stops re-dialling id.
func (m Manager) RemoveTarget(id string) { m.M.RemoveTarget(id) }

// Close closes the live session with id, if there is one.
func (m Manager) Close(id string) {
	if ps := m.M.Session(id); ps != nil {
		_ = ps.Session().Close()
	}
}

// Connected implements consensus.PeerList: the peers with a live session.
func (m Manager) Connected() []identity.ID {
	var out []identity.ID
	for _, st := range m.Statuses() {
		if id, err := identity.ParseID(st.Peer); err == nil {
			out = append(out, id)
		}
	}
	return out
}
