package libp2p

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/plugin"
)

// Gossip scoring (ADR 0091). Loopback and LAN agents share an IP, so IP colocation is not scored. An
// invalid message (the host rejected it) costs its sender InvalidWeight, squared over the messages it
// sent (gossipsub's P4), decaying over an hour: one forged message takes a peer below the gossip
// threshold, a few below the graylist one (its messages are then ignored).
const (
	gossipInvalidWeight   = -100
	gossipThreshold       = -10
	gossipPublishThresh   = -50
	gossipGraylistThresh  = -80
	gossipValidateTimeout = 10 * time.Second
	gossipScoreInspect    = time.Second
)

// gossip is the network's gossipsub: its topics and what it knows of peers' scores.
type gossip struct {
	ps     *pubsub.PubSub
	cancel context.CancelFunc
	topics map[string]*pubsub.Topic

	mu    sync.Mutex
	below map[peer.ID]bool // peers whose score is below zero (logged once when they cross)
}

// msgID identifies a message by its content, so that one revocation published by several agents is one
// message (and is judged once by each node).
func msgID(m *pb.Message) string {
	s := sha256.Sum256(m.GetData())
	return string(s[:])
}

func scoreParams() (*pubsub.PeerScoreParams, *pubsub.PeerScoreThresholds) {
	topics := map[string]*pubsub.TopicScoreParams{}
	for _, t := range transports.GossipTopics() {
		topics[t] = &pubsub.TopicScoreParams{
			TopicWeight:                    1,
			TimeInMeshQuantum:              time.Second,
			InvalidMessageDeliveriesWeight: gossipInvalidWeight,
			InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(time.Hour),
		}
	}
	return &pubsub.PeerScoreParams{
			Topics:           topics,
			AppSpecificScore: func(peer.ID) float64 { return 0 },
			DecayInterval:    time.Second,
			DecayToZero:      0.01,
			RetainScore:      time.Hour,
		}, &pubsub.PeerScoreThresholds{
			GossipThreshold:   gossipThreshold,
			PublishThreshold:  gossipPublishThresh,
			GraylistThreshold: gossipGraylistThresh,
		}
}

// startGossip runs gossipsub with peer scoring, joins every topic with a validator that asks the host
// (what the host does not accept is not delivered nor forwarded) and drains the subscriptions (the host
// applied each message when it judged it).
func startGossip(h host.Host, j plugin.Judge, log *slog.Logger) (*gossip, error) {
	ctx, cancel := context.WithCancel(context.Background())
	g := &gossip{cancel: cancel, topics: map[string]*pubsub.Topic{}, below: map[peer.ID]bool{}}
	params, thresholds := scoreParams()
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageIdFn(msgID),
		pubsub.WithMaxMessageSize(transports.MaxGossipSize+4<<10),
		pubsub.WithPeerScore(params, thresholds),
		pubsub.WithPeerScoreInspect(g.inspect(log), gossipScoreInspect),
	)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start gossipsub: %w", err)
	}
	g.ps = ps
	for _, name := range transports.GossipTopics() {
		validate := func(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
			v, why := j.ValidateGossip(ctx, name, from.String(), m.GetData())
			switch v {
			case plugin.GossipAccept:
				return pubsub.ValidationAccept
			case plugin.GossipIgnore:
				log.Debug("gossip message ignored", "topic", name, "from", from, "why", why)
				return pubsub.ValidationIgnore
			}
			log.Info("gossip message rejected", "topic", name, "from", from, "why", why)
			return pubsub.ValidationReject
		}
		if err := ps.RegisterTopicValidator(name, pubsub.ValidatorEx(validate), pubsub.WithValidatorTimeout(gossipValidateTimeout)); err != nil {
			cancel()
			return nil, fmt.Errorf("gossip topic %s: %w", name, err)
		}
		t, err := ps.Join(name)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("join gossip topic %s: %w", name, err)
		}
		sub, err := t.Subscribe()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("subscribe to gossip topic %s: %w", name, err)
		}
		g.topics[name] = t
		go func() {
			for {
				if _, err := sub.Next(ctx); err != nil {
					return
				}
			}
		}()
	}
	return g, nil
}

// inspect logs a peer once when its gossip score falls below zero (it sent invalid messages).
func (g *gossip) inspect(log *slog.Logger) func(map[peer.ID]float64) {
	return func(scores map[peer.ID]float64) {
		g.mu.Lock()
		defer g.mu.Unlock()
		for p, s := range scores {
			switch {
			case s < 0 && !g.below[p]:
				g.below[p] = true
				log.Warn("gossip peer scored down", "peer", p.String(), "score", s)
			case s >= 0 && g.below[p]:
				delete(g.below, p)
			}
		}
	}
}

func (g *gossip) close() { g.cancel() }

// errNoGossip: the network runs no gossipsub (no host judge was given).
var errNoGossip = errors.New("this libp2p network runs no gossip")

// Publish implements plugin.Gossip. A message published while no peer is subscribed yet stays local:
// the host republishes (ADR 0091).
func (n *Network) Publish(ctx context.Context, topic string, data []byte) error {
	if n.gossip == nil {
		return errNoGossip
	}
	t := n.gossip.topics[topic]
	if t == nil {
		return plugin.CheckTopic(topic)
	}
	return t.Publish(ctx, data)
}
