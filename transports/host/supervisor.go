package host

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Supervisor owns the agent's transports, one supervised plugin per transport name.
type Supervisor struct {
	mu     sync.Mutex
	ts     map[string]*Transport
	closed bool
}

// NewSupervisor returns an empty supervisor.
func NewSupervisor() *Supervisor { return &Supervisor{ts: map[string]*Transport{}} }

// Start launches and supervises the plugin of cfg. A second transport of the same name is refused.
func (s *Supervisor) Start(ctx context.Context, cfg Config) (*Transport, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("transport %s: %w: supervisor closed", cfg.Name, ErrUnavailable)
	}
	if _, dup := s.ts[cfg.Name]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("transport %s is already running", cfg.Name)
	}
	s.ts[cfg.Name] = nil // reserve the name while starting
	s.mu.Unlock()
	t, err := Start(ctx, cfg)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil || s.closed {
		delete(s.ts, cfg.Name)
		if err == nil {
			_ = t.Close()
			err = fmt.Errorf("transport %s: %w: supervisor closed", cfg.Name, ErrUnavailable)
		}
		return nil, err
	}
	s.ts[cfg.Name] = t
	return t, nil
}

// Transport returns the running transport called name.
func (s *Supervisor) Transport(name string) (*Transport, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.ts[name]
	return t, t != nil
}

// Names lists the running transports.
func (s *Supervisor) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n, t := range s.ts {
		if t != nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Restarts reports each transport's restart count.
func (s *Supervisor) Restarts() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]uint64{}
	for n, t := range s.ts {
		if t != nil {
			out[n] = t.Restarts()
		}
	}
	return out
}

// Drain tells every transport's supervisor that the agent is draining: no plugin is restarted from now on
// (Transport.Drain).
func (s *Supervisor) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.ts {
		if t != nil {
			t.Drain()
		}
	}
}

// Close stops every transport.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	s.closed = true
	ts := s.ts
	s.ts = map[string]*Transport{}
	s.mu.Unlock()
	var errs []error
	for _, t := range ts {
		if t != nil {
			errs = append(errs, t.Close())
		}
	}
	return errors.Join(errs...)
}
