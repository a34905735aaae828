// Package peerops is the peers room's part of the control API: peers.list, peers.connect, peers.block
// and peers.unblock (their permissions and types: agent/api.Table), and Present, which re-dials every
// connected peer so that it sees the grants this agent holds now. Its dependencies are the small
// interfaces below (the session manager, the peer cache, the reputation store), never the daemon.
package peerops

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
)

// Sessions is the session manager as the peers operations see it.
type Sessions interface {
	// Statuses are the live sessions; Targets the peers re-dialled when their session ends, by ID.
	Statuses() []api.SessionStatus
	Targets() map[string]api.TargetStatus
	// Session is the live session with peer id, if there is one.
	Session(id string) (api.SessionStatus, bool)
	// Dial opens a session with id at addr (replacing a live one) and returns it.
	Dial(ctx context.Context, id identity.ID, addr api.Address) (api.SessionStatus, error)
	// AddTarget keeps re-dialling id at addrs (source: "connect", "bootstrap"); RemoveTarget stops it.
	AddTarget(id string, addrs []api.Address, source string)
	RemoveTarget(id string)
	// Close closes the live session with id, if there is one.
	Close(id string)
}

// Peers is the cache of other agents' key event logs (agent/peers.Cache).
type Peers interface {
	IDs() ([]string, error)
	State(id string) (identity.State, bool, error)
	Compromised(id string) (*peers.Compromise, error)
}

// Reputation is the trust store (agent/reputation.Store).
type Reputation interface {
	List() []reputation.Report
	Report(peer identity.ID) reputation.Report
	Level(peer identity.ID) reputation.Level
	Block(ctx context.Context, peer identity.ID) error
	Unblock(ctx context.Context, peer identity.ID) error
}

// Deps are what the peers operations need.
type Deps struct {
	Self       identity.ID
	Sessions   Sessions
	Peers      Peers
	Reputation Reputation
	// Transports are the names of the configured transports (peers.connect refuses any other).
	Transports func() []string
	// InferTransport names the transport of an address given without one (agent/config.InferTransport).
	InferTransport func(addr string) string
	// Describe adds what authorization knows of a peer (roles, evidence count) to its status; may be nil.
	Describe func(ctx context.Context, id identity.ID, p *api.PeerStatus, r reputation.Report)
	// HeldGrants are the grants this agent presents, named in the advice on a refused connect (Advice);
	// may be nil.
	HeldGrants func() ([]rbac.Grant, error)
}

// New is the peers room's Service.
func New(d Deps) api.Service {
	o := &ops{d}
	return api.Handlers{
		api.OpPeersList:    o.list,
		api.OpPeersConnect: o.connect,
		api.OpPeersBlock:   o.block,
		api.OpPeersUnblock: o.unblock,
	}
}

type ops struct{ Deps }

func (d *ops) list(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	cached, err := d.Peers.IDs()
	if err != nil {
		return nil, err
	}
	for _, id := range cached {
		ids[id] = true
	}
	sessions := map[string]api.SessionStatus{}
	for _, s := range d.Sessions.Statuses() {
		sessions[s.Peer] = s
		ids[s.Peer] = true
	}
	targets := d.Sessions.Targets()
	for id := range targets {
		ids[id] = true
	}
	for _, r := range d.Reputation.List() { // peers known only by their reputation (a blocked peer, say)
		ids[r.Peer] = true
	}
	out := []api.PeerStatus{}
	for id := range ids {
		p := api.PeerStatus{ID: id}
		if s, ok := sessions[id]; ok {
			p.Connected, p.Session = true, &s
		}
		if st, ok, err := d.Peers.State(id); err == nil && ok {
			g := st.Generation
			p.Generation = &g
		}
		if c, err := d.Peers.Compromised(id); err == nil && c != nil {
			p.Compromised = true
		}
		if pid, err := identity.ParseID(id); err == nil {
			r := d.Reputation.Report(pid)
			p.Trust, p.Score = string(r.Level), r.Score
			if d.Describe != nil {
				d.Describe(ctx, pid, &p, r)
			}
		}
		if t, ok := targets[id]; ok {
			p.Target = &t
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (d *ops) connect(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.ConnectArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	id, err := identity.ParseID(a.ID)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "--id %q: %v", a.ID, err)
	}
	if id.Equal(d.Self) {
		return nil, control.Errorf(control.CodeBadRequest, "%s is this agent", id)
	}
	if a.Address == "" {
		return nil, control.Errorf(control.CodeBadRequest, "an address is required")
	}
	if a.Transport == "" {
		a.Transport = d.InferTransport(a.Address)
	}
	names := d.Transports()
	if !contains(names, a.Transport) {
		return nil, control.Errorf(control.CodeBadRequest, "transport %s is not configured (configured: %v)", a.Transport, names)
	}
	if s, ok := d.Sessions.Session(id.String()); ok { // not dialled: stored for re-dials, and said so
		d.Sessions.AddTarget(id.String(), []api.Address{{Transport: a.Transport, Address: a.Address}}, "connect")
		s.Existing = true
		return s, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	addr := api.Address{Transport: a.Transport, Address: a.Address}
	s, err := d.Sessions.Dial(dctx, id, addr)
	if err != nil {
		var held []rbac.Grant
		if d.HeldGrants != nil {
			held, _ = d.HeldGrants()
		}
		if advice := Advice(err, held, time.Now()); advice != "" {
			return nil, control.Errorf(control.CodeRefused, "connect to %s at %s (%s): %v; %s", id, a.Address, a.Transport, err, advice)
		}
		return nil, control.Errorf(control.CodeRefused, "connect to %s at %s (%s): %v", id, a.Address, a.Transport, err)
	}
	d.Sessions.AddTarget(id.String(), []api.Address{addr}, "connect")
	return s, nil
}

func contains(names []string, n string) bool {
	for _, x := range names {
		if x == n {
			return true
		}
	}
	return false
}

func (d *ops) peerArg(raw json.RawMessage) (identity.ID, error) {
	var a api.PeerArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return identity.ID{}, err
	}
	id, err := identity.ParseID(a.ID)
	if err != nil {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "peer %q: %v", a.ID, err)
	}
	if id.Equal(d.Self) {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "%s is this agent", id)
	}
	return id, nil
}

// block puts a peer at Blocked (refused at every handshake until unblocked), closes its session and
// stops re-dialling it.
func (d *ops) block(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	id, err := d.peerArg(raw)
	if err != nil {
		return nil, err
	}
	if err := d.Reputation.Block(ctx, id); err != nil {
		return nil, err
	}
	d.Sessions.RemoveTarget(id.String())
	d.Sessions.Close(id.String())
	return d.Reputation.Report(id), nil
}

// unblock gives a blocked peer a fresh start (level New, evidence forgotten).
func (d *ops) unblock(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	id, err := d.peerArg(raw)
	if err != nil {
		return nil, err
	}
	if err := d.Reputation.Unblock(ctx, id); err != nil {
		if d.Reputation.Level(id) != reputation.Blocked {
			return nil, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		return nil, err
	}
	return d.Reputation.Report(id), nil
}

// Present starts a fresh handshake with every connected peer whose address is known, so that it sees
// the grants this agent holds now (grants travel from initiator to responder). A peer that only ever
// dialled this agent sees them at the next handshake this agent starts.
func Present(ctx context.Context, sessions Sessions) []api.Presentation {
	targets := sessions.Targets()
	out := []api.Presentation{}
	for _, s := range sessions.Statuses() {
		t, ok := targets[s.Peer]
		if !ok || len(t.Addresses) == 0 {
			out = append(out, api.Presentation{Peer: s.Peer, Error: "no address of this peer is known (it dialled this agent): it sees the grant at the next handshake this agent starts"})
			continue
		}
		id, err := identity.ParseID(s.Peer)
		if err != nil {
			continue
		}
		p := api.Presentation{Peer: s.Peer}
		var errs []string
		for _, a := range t.Addresses {
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := sessions.Dial(dctx, id, a)
			cancel()
			if err == nil {
				p.Presented, p.Transport, p.Address = true, a.Transport, a.Address
				break
			}
			if advice := Advice(err, nil, time.Now()); advice != "" {
				err = fmt.Errorf("%w; %s", err, advice)
			}
			errs = append(errs, fmt.Sprintf("%s %s: %v", a.Transport, a.Address, err))
		}
		if !p.Presented {
			p.Error = strings.Join(errs, "; ")
		}
		out = append(out, p)
	}
	return out
}
