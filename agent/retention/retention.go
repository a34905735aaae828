// Package retention is the agent's one retention loop (docs/privacy.md, ADR 0092): at start and then
// every interval it applies each store's retention period: peers no handshake committed for a period
// (their key event logs, use times and delegations; never a compromise mark or its fork evidence),
// reputation records nothing was recorded about for a period (never an operator's block), consensus
// evidence older than its period, submitted tasks whose result nobody fetched, expired grants, and the
// audit log's retention (audit.Retention, configured from the same section). Fetched results and executed
// tasks age out on the task engine's delivery loop, feedback keys in the authorization sweep. Its
// dependencies are explicit and small: each store is an interface with one prune method.
package retention

import (
	"context"
	"log/slog"
	"time"
)

// Settings are the periods in force; 0 keeps that store's records (no retention).
type Settings struct {
	Interval    time.Duration // how often the loop runs (at least one second)
	PeersUnseen time.Duration // peers.kel, peers.kel.used, peers.delegations
	Reputation  time.Duration // reputation/peers
	Evidence    time.Duration // consensus/evidence
	Tasks       time.Duration // tasks.out: final results no client fetched
}

// Peers is the peer cache (agent/peers).
type Peers interface {
	PruneUnseen(cutoff time.Time) (int, error)
}

// Reputation is the reputation store (agent/reputation).
type Reputation interface {
	PruneIdle(ctx context.Context, cutoff time.Time) (int, error)
}

// Evidence is the consensus evidence store (agent/consensus).
type Evidence interface {
	PruneBefore(cutoff time.Time) (int, error)
}

// Tasks is the task store (agent/tasks): submitted tasks whose result nobody fetched. Fetched results and
// executed tasks age out on the task engine's delivery loop (tasks.result_retention,
// tasks.unacknowledged_retention).
type Tasks interface {
	PruneUnfetched(cutoff time.Time) (int, error)
}

// Grants is the authorizer (agent/rbac): expired grants go from memory and the store. The
// authorization sweep prunes them too (every reputation.sweep_interval); here they go at the retention
// interval, with the other stores.
type Grants interface {
	Prune(ctx context.Context) (int, error)
}

// Audit is the audit log (audit.Log): its retention (audit.Retention, by age and size, with a signed
// audit.pruned record so that the rest still verifies) is configured when it is opened; the loop only
// applies it at once, besides the log's own minute.
type Audit interface {
	ApplyRetention(ctx context.Context) error
}

// Config is the loop's dependencies.
type Config struct {
	Settings   func() Settings // read at every run, so a reload applies at the next one
	Peers      Peers
	Reputation Reputation
	Evidence   Evidence
	Tasks      Tasks
	Grants     Grants
	Audit      Audit
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger
	// OnPruned, when set, is told what each run removed (store name → records; only stores that lost some).
	OnPruned func(map[string]int)
}

// Store names, as docs/privacy.md names the stores.
const (
	StorePeers      = "peers"
	StoreReputation = "reputation"
	StoreEvidence   = "evidence"
	StoreGrants     = "grants"
	StoreTasks      = "tasks"
)

// Once applies every period now. It returns how many records each store lost and the first error; a
// failing store does not stop the others.
func Once(ctx context.Context, c Config) (map[string]int, error) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	s, t := c.Settings(), now()
	out := map[string]int{}
	var first error
	apply := func(name string, period time.Duration, prune func(time.Time) (int, error)) {
		if period <= 0 || ctx.Err() != nil {
			return
		}
		n, err := prune(t.Add(-period))
		if err != nil && first == nil {
			first = err
		}
		if n > 0 {
			out[name] = n
		}
	}
	if c.Peers != nil {
		apply(StorePeers, s.PeersUnseen, c.Peers.PruneUnseen)
	}
	if c.Reputation != nil {
		apply(StoreReputation, s.Reputation, func(cut time.Time) (int, error) { return c.Reputation.PruneIdle(ctx, cut) })
	}
	if c.Evidence != nil {
		apply(StoreEvidence, s.Evidence, c.Evidence.PruneBefore)
	}
	if c.Tasks != nil {
		apply(StoreTasks, s.Tasks, c.Tasks.PruneUnfetched)
	}
	if c.Grants != nil && ctx.Err() == nil {
		n, err := c.Grants.Prune(ctx)
		if err != nil && first == nil {
			first = err
		}
		if n > 0 {
			out[StoreGrants] = n
		}
	}
	if c.Audit != nil && ctx.Err() == nil {
		if err := c.Audit.ApplyRetention(ctx); err != nil && first == nil {
			first = err
		}
	}
	return out, first
}

// Run applies the periods at once and then every Settings().Interval until ctx ends.
func Run(ctx context.Context, c Config) {
	lg := c.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	for {
		n, err := Once(ctx, c)
		if err != nil {
			lg.Warn("retention", "err", err)
		}
		if len(n) > 0 {
			lg.Info("retention removed records", "removed", n)
			if c.OnPruned != nil {
				c.OnPruned(n)
			}
		}
		every := max(c.Settings().Interval, time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
