package config

import (
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/retention"
)

// RetentionConfig is privacy.retention: how long the agent keeps what it holds about other agents
// (docs/privacy.md, ADR 0092). Each period left out takes its default; 0 keeps that store's records for
// ever (peers stay bounded by the cache's size limits). Go durations have no day unit: 90 days is 2160h.
// The task engine's own periods stay under tasks (result_retention, unacknowledged_retention).
type RetentionConfig struct {
	// Interval is how often the retention loop runs (default 1h; it also runs at start).
	Interval *time.Duration `yaml:"interval"`
	// PeersUnseen drops a peer's cached key event log and delegations when no handshake with it
	// succeeded for this long (default 2160h, 90 days). Compromise marks are never dropped.
	PeersUnseen *time.Duration `yaml:"peers_unseen"`
	// Reputation drops a peer's reputation record when nothing was recorded about it for this long
	// (default 2160h). An operator's block is never dropped.
	Reputation *time.Duration `yaml:"reputation"`
	// Evidence drops consensus evidence (signed results that lost a vote) this old (default 8760h, a year).
	Evidence *time.Duration `yaml:"evidence"`
	// Tasks drops a submitted task whose result no client fetched this long after it ended (default
	// 720h, 30 days); a fetched result goes after tasks.result_retention.
	Tasks *time.Duration `yaml:"tasks"`
	// Audit removes audit segments whose records are all this old (default 8760h), unless
	// audit.retention_max_age is set, which wins.
	Audit *time.Duration `yaml:"audit"`
}

// The retention defaults (docs/privacy.md).
const (
	DefaultRetentionInterval    = time.Hour
	DefaultRetentionPeersUnseen = 90 * 24 * time.Hour
	DefaultRetentionReputation  = 90 * 24 * time.Hour
	DefaultRetentionEvidence    = 365 * 24 * time.Hour
	DefaultRetentionTasks       = 30 * 24 * time.Hour
	DefaultRetentionAudit       = 365 * 24 * time.Hour
)

func orDefault(p *time.Duration, d time.Duration) time.Duration {
	if p == nil {
		return d
	}
	return *p
}

// Settings is the section as the retention loop (agent/retention) reads it.
func (r RetentionConfig) Settings() retention.Settings {
	return retention.Settings{Interval: orDefault(r.Interval, DefaultRetentionInterval),
		PeersUnseen: orDefault(r.PeersUnseen, DefaultRetentionPeersUnseen),
		Reputation:  orDefault(r.Reputation, DefaultRetentionReputation),
		Evidence:    orDefault(r.Evidence, DefaultRetentionEvidence),
		Tasks:       orDefault(r.Tasks, DefaultRetentionTasks)}
}

// AuditMaxAge is the audit log's retention by age: audit.retention_max_age when set, else
// privacy.retention.audit (0: keep everything).
func (c *Config) AuditMaxAge() time.Duration {
	if c.Audit.RetentionMaxAge > 0 {
		return c.Audit.RetentionMaxAge
	}
	return orDefault(c.Privacy.Retention.Audit, DefaultRetentionAudit)
}

func (r RetentionConfig) validate() error {
	if r.Interval != nil && *r.Interval < time.Second {
		return fmt.Errorf("%w: privacy.retention.interval: %v is below 1s (default 1h)", ErrConfig, *r.Interval)
	}
	for _, p := range []struct {
		key string
		v   *time.Duration
	}{{"peers_unseen", r.PeersUnseen}, {"reputation", r.Reputation}, {"evidence", r.Evidence}, {"tasks", r.Tasks}, {"audit", r.Audit}} {
		if p.v != nil && *p.v != 0 && *p.v < time.Second {
			return fmt.Errorf("%w: privacy.retention.%s: %v: want 0 (keep) or at least 1s (90 days: 2160h)", ErrConfig, p.key, *p.v)
		}
	}
	return nil
}
