package libp2p

import (
	"context"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"

	"github.com/custos-agent/custos/transports/plugin"
)

// The host runs with the plugin's explicit limits and a connection manager, not go-libp2p's
// memory-scaled defaults and no trimming (issue 20, finding 9).
func TestExplicitLimits(t *testing.T) {
	id, err := plugin.NewIdentity(Name)
	if err != nil {
		t.Fatal(err)
	}
	n := &Network{}
	if err := n.Configure(context.Background(), id, nil); err != nil {
		t.Fatal(err)
	}
	defer n.Host().Close()

	cm, ok := n.Host().ConnManager().(*connmgr.BasicConnMgr)
	if !ok {
		t.Fatalf("connection manager is %T, want a trimming *connmgr.BasicConnMgr", n.Host().ConnManager())
	}
	if info := cm.GetInfo(); info.LowWater != connsLow || info.HighWater != connsHigh {
		t.Errorf("connection manager trims from %d to %d, want from %d to %d", info.HighWater, info.LowWater, connsHigh, connsLow)
	}
	rm := n.Host().Network().ResourceManager()
	check := func(scope string, view func(func(network.ResourceScope) error) error, wantTotal, wantIn int) {
		t.Helper()
		err := view(func(s network.ResourceScope) error {
			l, ok := s.(rcmgr.ResourceScopeLimiter)
			if !ok {
				t.Fatalf("%s scope %T has no limits", scope, s)
			}
			lim := l.Limit()
			if got := lim.GetConnTotalLimit(); got != wantTotal {
				t.Errorf("%s connections: limit %d, want %d", scope, got, wantTotal)
			}
			if got := lim.GetConnLimit(network.DirInbound); got != wantIn {
				t.Errorf("%s inbound connections: limit %d, want %d", scope, got, wantIn)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check("system", rm.ViewSystem, maxConns, maxConnsInbound)
	check("transient", rm.ViewTransient, maxTransientConns, maxTransientConns)
}
