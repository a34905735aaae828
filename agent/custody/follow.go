package custody

import (
	"context"
	"sync"

	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Follower is how a long-running holder of the identity (the daemon) follows a change of it: a
// rotation, recovery or key destruction another process made (agentctl rotate; Reload), or one it makes
// itself (the schedule's rotation or destruction; Change). It has the key events between the key sets
// before and after recorded and, when the generation changed, hands the new generation's signer to every
// part that signs with the identity key (Switch, in order), then runs Switched. Changes are serialised.
type Follower struct {
	Custody *Custody
	// KeyEvents records the key events between two key sets and returns their records (agent/events
	// Recorder.KeyEventsFrom over KeyEventRecords; source: SourceDaemon, SourceSchedule); nil records none.
	KeyEvents func(before, after []Generation, kel identity.Log, actor, source string) []audit.Record
	// Switch are given the new generation's signer, its number and the identity's state, in order (the
	// audit log's checkpoint signer, the delegation manager); the first error stops the switch.
	Switch []func(ctx context.Context, s keystore.Signer, generation uint64, st identity.State) error
	// Switched runs once every Switch succeeded (renew transport bindings, re-authenticate sessions).
	Switched func(ctx context.Context, generation, previous uint64)

	mu sync.Mutex
}

// Reload re-reads the identity for actor (who asked): it reports whether the generation changed and the
// key event records written (source SourceDaemon).
func (f *Follower) Reload(ctx context.Context, actor string) (bool, []audit.Record, error) {
	return f.Change(ctx, actor, SourceDaemon, f.Custody.Reload)
}

// Change runs change (Custody.Reload, or a rotation or destruction the holder makes), records the key
// events it made with source, and switches the parts when the generation changed. change's error is
// returned (beside the records and the switch) when it changed something before failing; when it
// changed nothing, it is returned alone. An error of a switch leaves the parts not yet switched on the
// running identity.
func (f *Follower) Change(ctx context.Context, actor, source string, change func(context.Context) error) (bool, []audit.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.Custody
	keys := c.Keys()
	before := c.Current().Generation
	cerr := change(ctx)
	var recs []audit.Record
	if f.KeyEvents != nil {
		recs = f.KeyEvents(keys, c.Keys(), c.Log(), actor, source)
	}
	if cerr != nil && len(recs) == 0 {
		return false, nil, cerr
	}
	g := c.Current().Generation
	if g == before {
		return false, recs, cerr
	}
	signer, err := c.Signer(ctx)
	if err != nil {
		return false, recs, err
	}
	for _, sw := range f.Switch {
		if err := sw(ctx, signer, g, c.State()); err != nil {
			return false, recs, err
		}
	}
	if f.Switched != nil {
		f.Switched(ctx, g, before)
	}
	return true, recs, cerr
}
