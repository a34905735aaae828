package authz

import (
	"context"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
)

// Evidence is the consensus evidence kept of peers (agent/consensus.EvidenceStore).
type Evidence interface {
	ByPeer(peer identity.ID) ([]consensus.Evidence, error)
}

// Describe returns peerops.Deps.Describe: it adds the reputation report, the peer's roles and the count
// of consensus evidence against it (from ev, when readable) to a peer's status.
func (z *Authz) Describe(ev Evidence) func(ctx context.Context, id identity.ID, p *api.PeerStatus, r reputation.Report) {
	return func(ctx context.Context, id identity.ID, p *api.PeerStatus, r reputation.Report) {
		p.Reputation = &r
		p.Roles = RoleNames(z.Roles(ctx, id))
		if evs, err := ev.ByPeer(id); err == nil {
			p.Evidence = len(evs)
		}
	}
}
