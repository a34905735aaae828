package peerops

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/discovery"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// targets is the session manager's re-dial targets (the part of Sessions that Bootstrap uses).
type targets struct {
	Sessions // the rest is not used: calling it panics
	mu       sync.Mutex
	t        map[string]api.TargetStatus
	added    chan string
}

func (s *targets) AddTarget(id string, addrs []api.Address, source string) {
	s.mu.Lock()
	s.t[id] = api.TargetStatus{Addresses: addrs, Source: source}
	s.mu.Unlock()
	if s.added != nil {
		s.added <- id
	}
}

func (s *targets) RemoveTarget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.t, id)
}

func (s *targets) Targets() map[string]api.TargetStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]api.TargetStatus{}
	for k, v := range s.t {
		out[k] = v
	}
	return out
}

func TestBootstrap(t *testing.T) {
	a, b, c := agenttest.NewIdentity(t, keystore.Ed25519).ID(), agenttest.NewIdentity(t, keystore.Ed25519).ID(), agenttest.NewIdentity(t, keystore.Ed25519).ID()
	found := map[string][]discovery.Addr{
		c.String(): {{Transport: "libp2p", Addr: "/ip4/192.0.2.3/tcp/4001/p2p/x"}, {Transport: "tcp", Addr: "192.0.2.3:7400"}, {Transport: "ws", Addr: "wss://c/custos/v1"}},
	}
	resolve := func(_ context.Context, id identity.ID, f func([]discovery.Addr)) { f(found[id.String()]) }
	has := func(tr string) bool { return tr == "tcp" || tr == "libp2p" }
	addr := func(tr, ad string) api.Address { return api.Address{Transport: tr, Address: ad} }
	cases := []struct {
		name     string
		before   map[string]api.TargetStatus
		old, cur []config.PeerConfig
		adds     int // AddTarget calls expected (ID-only entries add theirs in the background)
		want     map[string]api.TargetStatus
	}{
		{"addresses grouped by agent, transport inferred", nil, nil,
			[]config.PeerConfig{{ID: a.String(), Address: "192.0.2.1:7400"}, {ID: b.String(), Address: "wss://b/custos/v1"}, {ID: a.String(), Transport: "ws", Address: "wss://a/custos/v1"}}, 2,
			map[string]api.TargetStatus{
				a.String(): {Addresses: []api.Address{addr("tcp", "192.0.2.1:7400"), addr("ws", "wss://a/custos/v1")}, Source: BootstrapSource},
				b.String(): {Addresses: []api.Address{addr("ws", "wss://b/custos/v1")}, Source: BootstrapSource},
			}},
		{"ID only: the addresses found on transports this agent runs", nil, nil, []config.PeerConfig{{ID: c.String()}}, 1,
			map[string]api.TargetStatus{c.String(): {Addresses: []api.Address{addr("libp2p", "/ip4/192.0.2.3/tcp/4001/p2p/x"), addr("tcp", "192.0.2.3:7400")}, Source: BootstrapSource}}},
		{"ID only, transport named", nil, nil, []config.PeerConfig{{ID: c.String(), Transport: "tcp"}}, 1,
			map[string]api.TargetStatus{c.String(): {Addresses: []api.Address{addr("tcp", "192.0.2.3:7400")}, Source: BootstrapSource}}},
		{"update: a peer dropped from the list is no longer re-dialled; connect targets stay",
			map[string]api.TargetStatus{a.String(): {Source: BootstrapSource}, b.String(): {Source: BootstrapSource}, c.String(): {Source: "connect"}},
			[]config.PeerConfig{{ID: a.String(), Address: "192.0.2.1:7400"}, {ID: b.String(), Address: "192.0.2.2:7400"}},
			[]config.PeerConfig{{ID: b.String(), Address: "192.0.2.9:7400"}}, 1,
			map[string]api.TargetStatus{b.String(): {Addresses: []api.Address{addr("tcp", "192.0.2.9:7400")}, Source: BootstrapSource}, c.String(): {Source: "connect"}}},
		{"update with the same list changes nothing",
			map[string]api.TargetStatus{a.String(): {Source: BootstrapSource, Attempts: 3}},
			[]config.PeerConfig{{ID: a.String(), Address: "192.0.2.1:7400"}}, []config.PeerConfig{{ID: a.String(), Address: "192.0.2.1:7400"}}, 0,
			map[string]api.TargetStatus{a.String(): {Source: BootstrapSource, Attempts: 3}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &targets{t: map[string]api.TargetStatus{}, added: make(chan string, 8)}
			for k, v := range tc.before {
				s.t[k] = v
			}
			bs := Bootstrap{Sessions: s, Resolve: resolve, Has: has, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			if tc.old == nil {
				bs.Add(context.Background(), tc.cur)
			} else {
				bs.Update(context.Background(), tc.old, tc.cur)
			}
			for range tc.adds {
				<-s.added
			}
			if got := s.Targets(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("targets\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}
