package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host"
)

// RevocationMessageVersion is the version of the revocation gossip message.
const RevocationMessageVersion = 1

// RevocationMessage is what travels on transports.TopicRevocations (docs/protocol.md, "Gossip topics"):
// the signed revocation exactly as `agentctl revoke` writes it, and the issuer's key event log (JSON
// lines) so that a node that never met the issuer can verify it.
type RevocationMessage struct {
	V          int    `json:"v"`
	Revocation string `json:"revocation"`
	IssuerLog  string `json:"issuer_log,omitempty"`
}

// EncodeRevocationMessage makes the gossip message of r with the issuer's key event log (may be empty).
func EncodeRevocationMessage(r rbac.Revocation, issuerLog []byte) ([]byte, error) {
	b, err := json.Marshal(RevocationMessage{V: RevocationMessageVersion, Revocation: string(r.Encode()), IssuerLog: string(issuerLog)})
	if err != nil {
		return nil, err
	}
	if len(b) > transports.MaxGossipSize {
		return nil, reason.New(reason.TooLarge, "revocation message of %d bytes (limit %d): the issuer's key event log is too long", len(b), transports.MaxGossipSize)
	}
	return b, nil
}

// DecodeRevocationMessage decodes a revocation gossip message strictly (unknown fields, trailing data,
// another version, a revocation not in canonical form: refused with reason.Malformed). Nothing is
// verified here.
func DecodeRevocationMessage(b []byte) (rbac.Revocation, []byte, error) {
	if len(b) == 0 || len(b) > transports.MaxGossipSize {
		return rbac.Revocation{}, nil, reason.New(reason.Malformed, "revocation message of %d bytes (want 1..%d)", len(b), transports.MaxGossipSize)
	}
	var m RevocationMessage
	if err := strictjson.Decode(b, &m, transports.MaxGossipSize); err != nil {
		return rbac.Revocation{}, nil, reason.Wrap(reason.Malformed, err, "revocation message")
	}
	if m.V != RevocationMessageVersion {
		return rbac.Revocation{}, nil, reason.New(reason.UnknownVersion, "revocation message version %d (this agent speaks %d)", m.V, RevocationMessageVersion)
	}
	r, err := rbac.DecodeRevocation([]byte(m.Revocation))
	if err != nil {
		return rbac.Revocation{}, nil, reason.Wrap(reason.Malformed, err, "revocation message")
	}
	return r, []byte(m.IssuerLog), nil
}

// Revocations applies verified revocations (*authz.Authz).
type Revocations interface {
	// InstallGossipRevocation verifies r completely and applies it; ignore is true when err is not the
	// sender's fault. via says how it came, for the audit record ("gossip", "catch-up from AGENT_ID").
	InstallGossipRevocation(ctx context.Context, r rbac.Revocation, issuerLog []byte, via string) (ignore bool, err error)
}

// Publisher is a transport that may run gossip (*host.Transport): Publish answers an error wrapping
// host.ErrNoGossip when it does not.
type Publisher interface {
	Publish(ctx context.Context, topic string, data []byte) error
}

// maxPeerIDs bounds the libp2p peer ID → agent ID map learnt from verified records.
const maxPeerIDs = 4096

// peerIDs maps libp2p peer IDs to the agents whose verified records name them, to know whom a gossip
// peer is (for the reputation observation when it sends invalid gossip).
type peerIDs struct {
	mu sync.Mutex
	m  map[string]identity.ID
}

func (p *peerIDs) learn(peerID string, id identity.ID) {
	if peerID == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil || len(p.m) >= maxPeerIDs {
		p.m = map[string]identity.ID{}
	}
	p.m[peerID] = id
}

func (p *peerIDs) agent(peerID string) (identity.ID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.m[peerID]
	return id, ok
}

// ValidateGossip implements host.GossipJudge: a message on a topic this agent judges is verified
// completely and applied (a revocation is installed) before the plugin may forward it. A rejected
// message (malformed, bad signature, a key event log that does not verify) counts against its sender:
// a reputation observation when its libp2p peer ID is known from a verified agent record.
func (s *Service) ValidateGossip(ctx context.Context, topic, from string, data []byte) (bool, error) {
	ignore, err := s.judgeGossip(ctx, topic, data, "gossip")
	s.m.gossip(topic, ignore, err)
	if err == nil || ignore {
		return ignore, err
	}
	s.cfg.Logger.Info("invalid gossip refused", "topic", topic, "from", from, "code", reason.Of(err), "err", err)
	if id, ok := s.peers.agent(from); ok && s.cfg.Misbehaved != nil {
		s.cfg.Misbehaved(ctx, id)
	}
	return false, err
}

func (s *Service) judgeGossip(ctx context.Context, topic string, data []byte, via string) (bool, error) {
	switch topic {
	case transports.TopicRevocations:
	case transports.TopicKeyLogs: // rotations and compromise evidence (ADR 0097)
		return s.judgeKeyLog(ctx, data)
	case transports.TopicBlocks: // administrators' block notices (ADR 0101)
		return s.judgeBlock(ctx, data, via)
	default:
		return true, reason.New(reason.GossipUnknownTopic, "gossip topic %q", topic)
	}
	if s.cfg.Revocations == nil {
		return true, reason.New(reason.Unavailable, "this agent applies no revocations")
	}
	r, log, err := DecodeRevocationMessage(data)
	if err != nil {
		return false, err
	}
	return s.cfg.Revocations.InstallGossipRevocation(ctx, r, log, via)
}

// PublishRevocation sends r (with its issuer's key event log) on the revocation topic of every transport
// that runs gossip, and returns how many took it. Gossipsub identifies messages by content, so the same
// revocation published again by any agent is delivered once.
func (s *Service) PublishRevocation(ctx context.Context, r rbac.Revocation, issuerLog []byte) (int, error) {
	msg, err := EncodeRevocationMessage(r, issuerLog)
	if err != nil {
		return 0, err
	}
	return s.publish(ctx, transports.TopicRevocations, msg)
}

// publish sends msg on topic through every transport that runs gossip and returns how many took it.
func (s *Service) publish(ctx context.Context, topic string, msg []byte) (int, error) {
	n := 0
	var errs []error
	for _, nw := range s.cfg.Networks() {
		p, ok := nw.T.(Publisher)
		if !ok {
			continue
		}
		switch err := p.Publish(ctx, topic, msg); {
		case err == nil:
			n++
		case errors.Is(err, host.ErrNoGossip):
		default:
			errs = append(errs, err)
		}
	}
	s.m.gossipPublished(topic, n > 0)
	if n == 0 && len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	return n, nil
}

// RevocationHook returns the function to give rbac.Authorizer.OnRevocation: every revocation recorded
// here (issued, installed or received by gossip) is published in the background, except those learnt by
// catch-up (a returning agent would otherwise republish everything it missed); issuerLog gives its
// issuer's key event log.
func (s *Service) RevocationHook(ctx context.Context, issuerLog func(issuer string) []byte) func(rbac.Revocation) {
	return func(r rbac.Revocation) {
		if s.cu.quieted(r.Grant) { // learnt by catch-up: its peers hold it or catch it up themselves (ADR 0096)
			return
		}
		go func() {
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			defer cancel()
			n, err := s.PublishRevocation(pctx, r, issuerLog(r.Issuer))
			if err != nil || n == 0 {
				s.cfg.Logger.Info("revocation not gossiped", "grant", r.Grant, "transports", n, "err", err)
				return
			}
			s.cfg.Logger.Debug("revocation gossiped", "grant", r.Grant, "transports", n)
		}()
	}
}

// publishTimeout bounds one publication through the plugins.
const publishTimeout = 10 * time.Second

type gossipMetrics struct {
	messages  *prometheus.CounterVec
	published *prometheus.CounterVec
}

func newGossipMetrics() gossipMetrics {
	return gossipMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_gossip_messages_total",
			Help: "Gossip messages judged for a plugin (ADR 0091), by topic and verdict: accept, ignore, or reject:<failure code>.",
		}, []string{"topic", "verdict"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_gossip_publications_total",
			Help: "Gossip messages this agent published, by topic and result (ok, error).",
		}, []string{"topic", "result"}),
	}
}

func (m *serviceMetrics) gossip(topic string, ignore bool, err error) {
	v := "accept"
	switch {
	case err != nil && ignore:
		v = "ignore"
	case err != nil:
		c := string(reason.Of(err))
		if !reason.Registered(c) {
			c = "other"
		}
		v = "reject:" + c
	}
	if !strings.HasPrefix(topic, "/custos/") || len(topic) > 64 {
		topic = "other"
	}
	m.g.messages.WithLabelValues(topic, v).Inc()
}

func (m *serviceMetrics) gossipPublished(topic string, ok bool) {
	r := "ok"
	if !ok {
		r = "error"
	}
	m.g.published.WithLabelValues(topic, r).Inc()
}
