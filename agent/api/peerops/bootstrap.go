package peerops

import (
	"context"
	"log/slog"
	"slices"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/identity"
)

// Bootstrap keeps the session manager's bootstrap targets (source "bootstrap") those of the
// configuration's bootstrap list: entries with an address are grouped by agent and re-dialled at
// once; an entry with an agent ID only is resolved through the DHT (agent/discovery) in the background,
// then re-dialled on the addresses found on transports this agent runs.
type Bootstrap struct {
	Sessions Sessions
	// Resolve finds an agent's addresses and calls found with them, retrying until ctx ends
	// (discovery.Service.Resolve). It runs in its own goroutine.
	Resolve func(ctx context.Context, id identity.ID, found func(addrs []discovery.Addr))
	// Has reports whether this agent runs the named transport.
	Has    func(transport string) bool
	Logger *slog.Logger
}

// BootstrapSource is the target source of the bootstrap list.
const BootstrapSource = "bootstrap"

// Add adds the targets of the bootstrap list peers; ctx bounds the lookups of ID-only entries. The
// configuration was validated: every ID parses.
func (b Bootstrap) Add(ctx context.Context, peers []config.PeerConfig) {
	byID := map[string][]api.Address{}
	var order []string
	for _, p := range peers {
		id, _ := identity.ParseID(p.ID)
		if p.Address == "" { // by agent ID only: resolved through the DHT, then pinned as any target
			go b.Resolve(ctx, id, func(addrs []discovery.Addr) {
				var as []api.Address
				for _, a := range addrs {
					if b.Has(a.Transport) && (p.Transport == "" || p.Transport == a.Transport) {
						as = append(as, api.Address{Transport: a.Transport, Address: a.Addr})
					}
				}
				if len(as) == 0 {
					b.Logger.Warn("bootstrap agent found, but on no transport this agent has", "id", id.String(), "addrs", len(addrs))
					return
				}
				b.Sessions.AddTarget(id.String(), as, BootstrapSource)
			})
			continue
		}
		tn := p.Transport
		if tn == "" {
			tn = config.InferTransport(p.Address)
		}
		if _, ok := byID[id.String()]; !ok {
			order = append(order, id.String())
		}
		byID[id.String()] = append(byID[id.String()], api.Address{Transport: tn, Address: p.Address})
	}
	for _, id := range order {
		b.Sessions.AddTarget(id, byID[id], BootstrapSource)
	}
}

// Update follows a reload from the list old to cur: when they differ, the bootstrap targets of agents no
// longer listed are removed and cur's are added again (replacing their addresses).
func (b Bootstrap) Update(ctx context.Context, old, cur []config.PeerConfig) {
	if slices.Equal(old, cur) {
		return
	}
	listed := map[string]bool{}
	for _, p := range cur {
		id, _ := identity.ParseID(p.ID)
		listed[id.String()] = true
	}
	for id, ts := range b.Sessions.Targets() {
		if ts.Source == BootstrapSource && !listed[id] {
			b.Sessions.RemoveTarget(id)
		}
	}
	b.Add(ctx, cur)
}
