package config

import (
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/custody"
)

// RotationConfig is the identity's own lifecycle in the running agent (agent/custody Schedule, ADR 0090):
// rotation of the identity key on a schedule, and destruction of retired keys when their grace period
// ends. It applies on reload (SIGHUP).
type RotationConfig struct {
	// Interval: the daemon rotates the identity key, exactly as agentctl rotate does, once the current
	// key has been current this long (since its key event). 0 (the default) schedules no rotation.
	// Go durations have no day unit: 90 days is 2160h.
	Interval time.Duration `yaml:"interval"`
	// Grace is how long a key retired by a scheduled rotation is kept before it is destroyed (default
	// 24h, as agentctl rotate). Retired keys are destroyed at the end of their grace period whatever made
	// the rotation, whether or not Interval is set.
	Grace *time.Duration `yaml:"grace"`
}

// DefaultRotationGrace is the grace period of a key retired by a scheduled rotation.
const DefaultRotationGrace = 24 * time.Hour

// GracePeriod is Grace with its default.
func (r RotationConfig) GracePeriod() time.Duration {
	if r.Grace == nil {
		return DefaultRotationGrace
	}
	return *r.Grace
}

// Schedule is the section as the daemon's custody.Schedule reads it.
func (r RotationConfig) Schedule() custody.ScheduleSettings {
	return custody.ScheduleSettings{Interval: r.Interval, Grace: r.GracePeriod()}
}

func (r RotationConfig) validate() error {
	if r.Interval != 0 && r.Interval < time.Second {
		return fmt.Errorf("%w: rotation.interval: %v: want 0 (no scheduled rotation) or at least 1s (90 days: 2160h)", ErrConfig, r.Interval)
	}
	if r.Grace != nil && *r.Grace < 0 {
		return fmt.Errorf("%w: rotation.grace: %v is negative (0 destroys a retired key at once)", ErrConfig, *r.Grace)
	}
	return nil
}
