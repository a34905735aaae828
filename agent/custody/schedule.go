package custody

import (
	"context"
	"log/slog"
	"time"
)

// SourceSchedule marks key event records of changes the running daemon made on its own schedule
// (Schedule): a rotation because rotation.interval passed, a destruction because a grace period ended.
const SourceSchedule = "schedule"

// ScheduleSettings are the schedule's parameters, read again at every step (a reload changes them).
type ScheduleSettings struct {
	// Interval rotates the identity key once it has been current this long; 0 schedules no rotation.
	Interval time.Duration
	// Grace is the grace period of a key retired by a scheduled rotation (RotateRequest.Grace).
	Grace time.Duration
}

// Schedule is the identity's lifecycle in a long-running holder (the daemon, ADR 0090): it rotates the
// identity key when it has been current for Settings().Interval, with Custody.Rotate (the same operation
// as agentctl rotate), and destroys retired keys when their grace period ends, with
// Custody.DestroyExpired (which every agentctl command that opens the identity also runs). Each change
// runs through Change, so that its holder records it (key.rotate, key.destroy) and switches to the new
// key as it does for a change another process made.
type Schedule struct {
	Custody  *Custody
	Settings func() ScheduleSettings
	// Change runs op (a rotation or a destruction on Custody) and makes the holder see its outcome:
	// the daemon writes the key event records (source SourceSchedule) and switches its signers. Nil runs
	// op alone.
	Change func(ctx context.Context, op func(context.Context) error) error
	// OnRotate and OnDestroy, when set, observe each scheduled rotation (the generation it makes, its
	// error: nil on success) and each destroyed key (metrics, the audit record of a failure).
	OnRotate  func(generation uint64, err error)
	OnDestroy func(g Generation)
	// MaxWait bounds one wait between steps, so that settings changed by a reload and changes made by
	// another process are seen (default 1m). RetryAfter is the wait after a failed step (default 1m).
	MaxWait, RetryAfter time.Duration
	Logger              *slog.Logger
}

// CurrentSince is when the current generation's key became current: the time of the last key event.
func (c *Custody) CurrentSince() time.Time {
	return time.Unix(c.State().Time, 0).UTC()
}

// RotationDue is when the current key is due for a scheduled rotation with interval; zero when
// interval is 0.
func (c *Custody) RotationDue(interval time.Duration) time.Time {
	if interval <= 0 {
		return time.Time{}
	}
	return c.CurrentSince().Add(interval)
}

// nextDestroy is the earliest end of a retired key's grace period (zero when none is retired).
func (c *Custody) nextDestroy() time.Time {
	var t time.Time
	for _, g := range c.Keys() {
		if g.State == Retired && g.RetiredUntil != nil && (t.IsZero() || g.RetiredUntil.Before(t)) {
			t = *g.RetiredUntil
		}
	}
	return t
}

// Run steps the schedule until ctx ends.
func (s *Schedule) Run(ctx context.Context) {
	for {
		wait := s.Step(ctx)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Step makes the changes that are due now (a rotation, then the destruction of every retired key whose
// grace period has ended) and returns how long to wait before the next step.
func (s *Schedule) Step(ctx context.Context) time.Duration {
	c := s.Custody
	set := s.Settings()
	maxWait, retry := orDefault(s.MaxWait, time.Minute), orDefault(s.RetryAfter, time.Minute)
	now := c.opts.now()
	var failed bool
	if due := c.RotationDue(set.Interval); !due.IsZero() && !now.Before(due) {
		before := c.Current().Generation
		err := s.change(ctx, func(ctx context.Context) error {
			_, err := c.Rotate(ctx, RotateRequest{Grace: set.Grace})
			return err
		})
		if s.OnRotate != nil {
			s.OnRotate(before+1, err)
		}
		if err != nil {
			failed = true
			s.log().Error("scheduled rotation of the identity key failed; trying again later", "generation", before, "retry_after", retry, "err", err)
		} else {
			s.log().Info("identity key rotated on schedule", "generation", c.Current().Generation, "previous", before,
				"interval", set.Interval, "grace", set.Grace)
		}
	}
	if due := c.nextDestroy(); !due.IsZero() && !now.Before(due) {
		var done []Generation
		err := s.change(ctx, func(ctx context.Context) error {
			var err error
			done, err = c.DestroyExpired(ctx)
			return err
		})
		for _, g := range done {
			if s.OnDestroy != nil {
				s.OnDestroy(g)
			}
			s.log().Info("retired identity key destroyed: its grace period is over", "generation", g.Generation)
		}
		if err != nil {
			failed = true
			s.log().Error("a retired identity key could not be destroyed; trying again later", "retry_after", retry, "err", err)
		}
	}
	if ctx.Err() != nil {
		return 0
	}
	wait := maxWait
	if failed {
		wait = min(wait, retry)
	}
	now = c.opts.now()
	for _, due := range []time.Time{c.RotationDue(s.Settings().Interval), c.nextDestroy()} {
		if !due.IsZero() && due.Sub(now) < wait {
			wait = max(due.Sub(now), 0)
		}
	}
	if failed && wait < retry {
		wait = retry // a failing step waits RetryAfter, not a busy loop on a due time in the past
	}
	return wait
}

func (s *Schedule) change(ctx context.Context, op func(context.Context) error) error {
	if s.Change == nil {
		return op(ctx)
	}
	err := s.Change(ctx, op)
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return err
}

func (s *Schedule) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
