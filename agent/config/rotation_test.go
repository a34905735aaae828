package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRotationConfig(t *testing.T) {
	for _, c := range []struct {
		in           string
		interval     time.Duration
		grace        time.Duration
		wantErrMatch string
	}{
		{in: "", interval: 0, grace: DefaultRotationGrace},
		{in: "rotation: {interval: 2160h}", interval: 2160 * time.Hour, grace: DefaultRotationGrace},
		{in: "rotation: {interval: 3s, grace: 0s}", interval: 3 * time.Second, grace: 0},
		{in: "rotation: {interval: 0s, grace: 1h}", interval: 0, grace: time.Hour},
		{in: "rotation: {interval: 500ms}", wantErrMatch: "rotation.interval: 500ms: want 0 (no scheduled rotation) or at least 1s"},
		{in: "rotation: {interval: -1h}", wantErrMatch: "rotation.interval: -1h0m0s"},
		{in: "rotation: {grace: -1s}", wantErrMatch: "rotation.grace: -1s is negative"},
		{in: "rotation: {interval: 90d}", wantErrMatch: "invalid configuration"},
		{in: "rotation: {every: 1h}", wantErrMatch: "rotation.every: unknown key"},
	} {
		t.Run(c.in, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(c.in))
			if c.wantErrMatch != "" {
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.wantErrMatch) {
					t.Fatalf("err %v, want ErrConfig with %q", err, c.wantErrMatch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := cfg.Rotation.Schedule()
			if s.Interval != c.interval || s.Grace != c.grace {
				t.Fatalf("schedule %+v, want interval %v grace %v", s, c.interval, c.grace)
			}
		})
	}
	a, _ := ParseConfig([]byte("rotation: {interval: 1h}"))
	b, _ := ParseConfig([]byte("rotation: {interval: 2h}"))
	if got := strings.Join(Diff(a, b), ","); got != "rotation" {
		t.Fatalf("diff %q, want rotation", got)
	}
}

func TestTasksTimeout(t *testing.T) {
	c, err := ParseConfig([]byte(""))
	if err != nil || c.Tasks.Timeout != 10*time.Minute {
		t.Fatalf("default tasks.timeout: %v %v", c.Tasks.Timeout, err)
	}
	c, err = ParseConfig([]byte("tasks: {timeout: 3s}"))
	if err != nil || c.Tasks.Timeout != 3*time.Second {
		t.Fatalf("tasks.timeout 3s: %v %v", c.Tasks.Timeout, err)
	}
	if _, err := ParseConfig([]byte("tasks: {timeout: -1s}")); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "tasks.timeout") {
		t.Fatalf("negative tasks.timeout: %v", err)
	}
}

func TestRetentionConfig(t *testing.T) {
	c, err := ParseConfig([]byte(""))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Privacy.Retention.Settings(); s.Interval != time.Hour || s.PeersUnseen != 2160*time.Hour || s.Reputation != 2160*time.Hour || s.Evidence != 8760*time.Hour || s.Tasks != 720*time.Hour || c.AuditMaxAge() != 8760*time.Hour {
		t.Fatalf("defaults %+v, audit %v", s, c.AuditMaxAge())
	}
	c, err = ParseConfig([]byte("privacy: {retention: {interval: 5s, peers_unseen: 0s, reputation: 1h, evidence: 2h, tasks: 3h, audit: 0s}}"))
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Privacy.Retention.Settings(); s.Interval != 5*time.Second || s.PeersUnseen != 0 || s.Reputation != time.Hour || s.Evidence != 2*time.Hour || s.Tasks != 3*time.Hour || c.AuditMaxAge() != 0 {
		t.Fatalf("set %+v, audit %v", s, c.AuditMaxAge())
	}
	// privacy needs a restart (Classify): a reload keeps the running periods.
	cur, _ := ParseConfig([]byte("privacy: {retention: {peers_unseen: 1h}}"))
	if got := InForce(c, cur).Privacy.Retention.Settings().PeersUnseen; got != 0 || !slices.Contains(Diff(c, cur), "privacy") {
		t.Fatalf("after a reload the peers' period is %v, want the running 0 until a restart", got)
	}
	if c, _ := ParseConfig([]byte("audit: {retention_max_age: 3h}\nprivacy: {retention: {audit: 1h}}")); c.AuditMaxAge() != 3*time.Hour {
		t.Fatalf("audit.retention_max_age does not win: %v", c.AuditMaxAge())
	}
	for in, want := range map[string]string{
		"privacy: {retention: {interval: 0s}}":       "privacy.retention.interval: 0s is below 1s",
		"privacy: {retention: {peers_unseen: 10ms}}": "privacy.retention.peers_unseen: 10ms",
		"privacy: {retention: {reputation: -1h}}":    "privacy.retention.reputation: -1h0m0s",
		"privacy: {retention: {evidence: 1ms}}":      "privacy.retention.evidence",
		"privacy: {retention: {audit: -5s}}":         "privacy.retention.audit",
		"privacy: {retention: {tasks: 1ns}}":         "privacy.retention.tasks",
		"privacy: {retention: {inputs: 1h}}":         "privacy.retention.inputs: unknown key",
	} {
		if _, err := ParseConfig([]byte(in)); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", in, err, want)
		}
	}
}
