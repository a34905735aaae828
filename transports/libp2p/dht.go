package libp2p

import (
	"context"
	"errors"
	"fmt"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/host"

	"github.com/custos-agent/custos/transports/plugin"
)

// DHTPrefix is the protocol prefix of the agents' private Kademlia DHT (/custos/kad/1.0.0), so that agents
// never join the public IPFS DHT (ADR 0070).
const DHTPrefix = "/custos"

// recordNamespace is the only DHT key namespace: /custos/<agent ID>.
const recordNamespace = "custos"

// judgeTimeout bounds one question to the host from inside the DHT (its validator has no context).
const judgeTimeout = 5 * time.Second

// UseJudge implements plugin.Discovery: with a judge the network runs the DHT (Configure starts it).
func (n *Network) UseJudge(j plugin.Judge) { n.judge = j }

// UseDHTMode implements plugin.Discovery: server answers other nodes' lookups, client only asks (the host
// decides it from the agent's own roles: self.lookup.answer needs discover_peers).
func (n *Network) UseDHTMode(server bool) { n.dhtClient = !server }

// validator is the DHT's record validator: every record the DHT stores, serves or selects is judged by
// the host (the plugin has no verification code and no key event logs).
type validator struct{ j plugin.Judge }

func (v validator) Validate(key string, value []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), judgeTimeout)
	defer cancel()
	return v.j.Validate(ctx, key, value)
}

func (v validator) Select(key string, values [][]byte) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), judgeTimeout)
	defer cancel()
	return v.j.Select(ctx, key, values)
}

// startDHT runs the DHT with providers off, in server mode (it stores and serves records and answers
// lookups) or, when client is set, in client mode: no DHT protocol handler is registered, so it answers
// no peer's FIND_NODE, GET_VALUE or PUT_VALUE and identify does not advertise the protocol; it still asks.
func startDHT(h host.Host, j plugin.Judge, client bool) (*dht.IpfsDHT, error) {
	mode := dht.ModeServer
	if client {
		mode = dht.ModeClient
	}
	d, err := dht.New(h,
		dht.Mode(mode),
		dht.ProtocolPrefix(DHTPrefix),
		dht.Validator(record.NamespacedValidator{recordNamespace: validator{j}}),
		dht.DisableProviders(),
		dht.RoutingTableRefreshPeriod(time.Minute),
	)
	if err != nil {
		return nil, fmt.Errorf("start the DHT: %w", err)
	}
	return d, nil
}

// errNoDHT: the network runs no DHT (no host judge was given).
var errNoDHT = errors.New("this libp2p network runs no DHT")

// PutRecord implements plugin.Discovery. The record is stored locally even when no peer is known yet (the
// error then says so; the host publishes again).
func (n *Network) PutRecord(ctx context.Context, key string, value []byte) error {
	if n.dht == nil {
		return errNoDHT
	}
	return n.dht.PutValue(ctx, key, value)
}

// FindRecord implements plugin.Discovery: the best record the DHT finds (each one judged by the host).
func (n *Network) FindRecord(ctx context.Context, key string) ([]byte, error) {
	if n.dht == nil {
		return nil, errNoDHT
	}
	return n.dht.GetValue(ctx, key, dht.Quorum(4))
}
