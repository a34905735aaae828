package discovery

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

// Key event logs on gossip (ADR 0097, docs/protocol.md "Gossip topics"): a rotation notice is an agent's
// key event log (its new head); compromise evidence is two logs of one agent that fork (two different
// events, each validly signed, for one generation). Both are judged against the peer cache: only agents
// it holds are of interest here (so that fresh identities cannot fill it nor be relayed through it).

// KeyLogMessageVersion is the version of the key-log gossip message.
const KeyLogMessageVersion = 1

// KeyLogMessage is what travels on transports.TopicKeyLogs: Log, an agent's key event log (JSON lines,
// as identity.Log.Encode writes it), and for compromise evidence Fork, another log of the same agent
// that forks from it.
type KeyLogMessage struct {
	V    int    `json:"v"`
	Log  string `json:"log"`
	Fork string `json:"fork,omitempty"`
}

// EncodeKeyLogMessage makes the gossip message of lg (a rotation notice) or, with fork, of compromise
// evidence. A message over transports.MaxGossipSize is refused (too_large): a log that long travels
// only in handshakes.
func EncodeKeyLogMessage(lg, fork *identity.Log) ([]byte, error) {
	m := KeyLogMessage{V: KeyLogMessageVersion, Log: string(lg.Encode())}
	if fork != nil {
		m.Fork = string(fork.Encode())
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > transports.MaxGossipSize {
		return nil, reason.New(reason.TooLarge, "key-log message of %d bytes (limit %d)", len(b), transports.MaxGossipSize)
	}
	return b, nil
}

// DecodeKeyLogMessage decodes a key-log gossip message strictly and verifies what needs no state: each
// log verifies from its inception (key_log_invalid), both are of one agent, and with a fork they do fork
// (malformed otherwise). It returns the agent, the log and the fork (nil without one).
func DecodeKeyLogMessage(b []byte) (identity.ID, *identity.Log, *identity.Log, error) {
	var none identity.ID
	if len(b) == 0 || len(b) > transports.MaxGossipSize {
		return none, nil, nil, reason.New(reason.Malformed, "key-log message of %d bytes (want 1..%d)", len(b), transports.MaxGossipSize)
	}
	var m KeyLogMessage
	if err := strictjson.Decode(b, &m, transports.MaxGossipSize); err != nil {
		return none, nil, nil, reason.Wrap(reason.Malformed, err, "key-log message")
	}
	if m.V != KeyLogMessageVersion {
		return none, nil, nil, reason.New(reason.UnknownVersion, "key-log message version %d (this agent speaks %d)", m.V, KeyLogMessageVersion)
	}
	lg, st, err := decodeVerifiedLog(m.Log, "log")
	if err != nil {
		return none, nil, nil, err
	}
	if m.Fork == "" {
		return st.ID, lg, nil, nil
	}
	fork, fst, err := decodeVerifiedLog(m.Fork, "fork")
	if err != nil {
		return none, nil, nil, err
	}
	if !fst.ID.Equal(st.ID) {
		return none, nil, nil, reason.New(reason.Malformed, "key-log evidence: the fork is of %s, the log of %s", fst.ID, st.ID)
	}
	if identity.CompareForks(lg, fork) == nil {
		return none, nil, nil, reason.New(reason.Malformed, "key-log evidence of %s: the two logs do not fork", st.ID)
	}
	return st.ID, lg, fork, nil
}

func decodeVerifiedLog(s, what string) (*identity.Log, identity.State, error) {
	if s == "" || s[len(s)-1] != '\n' {
		return nil, identity.State{}, reason.New(reason.Malformed, "key-log message: %s is not JSON lines ending in a newline", what)
	}
	lg, err := identity.DecodeLog([]byte(s))
	if err != nil {
		return nil, identity.State{}, reason.Wrap(reason.Malformed, err, "key-log message: %s", what)
	}
	if len(lg.Events) == 0 || !bytes.Equal(lg.Encode(), []byte(s)) {
		return nil, identity.State{}, reason.New(reason.Malformed, "key-log message: %s is empty or not in canonical form", what)
	}
	st, err := lg.Verify()
	if err != nil {
		return nil, identity.State{}, reason.Wrap(reason.KeyLogInvalid, err, "key-log message: %s", what)
	}
	return &lg, st, nil
}

// keyLogCache is the peer cache as key-log gossip needs it (*peers.Cache).
type keyLogCache interface {
	Logs
	Log(id string) (identity.Log, identity.State, bool, error)
	CommitLog(id identity.ID, l *identity.Log) error
}

// judgeKeyLog judges a key-log gossip message against the peer cache and applies it: a log that extends
// the cached one is stored (accept); the same head (accept); an older one (ignore, key_log_stale); a log
// or evidence that forks from the cached one marks the agent compromised (accept: it is forwarded, so
// that every agent holding it learns it) and, when the message carried one log only, this agent
// publishes the evidence with both. An agent not in the cache: ignore. This agent's own log: accept
// (its own notices pass its validator), logging an error when it shows a fork.
func (s *Service) judgeKeyLog(ctx context.Context, data []byte) (bool, error) {
	id, lg, fork, err := DecodeKeyLogMessage(data)
	if err != nil {
		return false, err
	}
	if id.Equal(s.cfg.Self) { // its own notice (a publisher's validator judges it too), or evidence against it
		own := s.cfg.OwnLog()
		if fork == nil {
			fork, lg = lg, own
		}
		if identity.CompareForks(lg, fork) != nil {
			s.cfg.Logger.Error("key-log gossip shows this agent's own key event log forked: its keys are compromised; rotate with the recovery key", "generation", forkGeneration(lg, fork))
		}
		return false, nil
	}
	kc, ok := s.cfg.Logs.(keyLogCache)
	if !ok {
		return true, reason.New(reason.GossipNotForUs, "key event log of %s: this agent keeps no peer cache", id)
	}
	cached, cst, known, err := kc.Log(id.String())
	switch {
	case reason.Of(err) == reason.PeerCompromised:
		if fork != nil {
			return false, nil // valid evidence of what is known: forwarded
		}
		return true, reason.Wrap(reason.PeerCompromised, err, "key event log of %s", id)
	case err != nil:
		return true, err
	case !known:
		return true, reason.New(reason.GossipNotForUs, "key event log of %s, an agent not in the peer cache", id)
	}
	if fork == nil { // a rotation notice
		st, err := kc.CheckLog(id, lg)
		switch {
		case reason.Of(err) == reason.KeyLogFork: // marked compromised by CheckLog
			s.cfg.Logger.Warn("key-log gossip: the agent's key event log forked; marked compromised", "agent", id.String(), "err", err)
			go s.publishKeyLog(ctx, &cached, lg) // the evidence, for agents that hold the branch gossiped
			return false, nil
		case err != nil:
			return true, err
		case st.Generation > cst.Generation:
			if err := kc.CommitLog(id, lg); err != nil {
				return true, err
			}
			s.cfg.Logger.Info("key-log gossip: a newer key event log stored", "agent", id.String(), "generation", st.Generation)
			return false, nil
		}
		if l, _ := lg.Verify(); l.Generation < cst.Generation {
			return true, reason.New(reason.KeyLogStale, "key event log of %s at generation %d; generation %d is cached", id, l.Generation, cst.Generation)
		}
		return false, nil // the head held here
	}
	// Compromise evidence: one of the logs forks from the cached one, or both extend it (then the first
	// is stored and the second forks from it). CheckLog marks the agent compromised.
	for _, l := range []*identity.Log{lg, fork, nil} {
		if l == nil {
			if err := kc.CommitLog(id, lg); err != nil {
				return true, err
			}
			l = fork
		}
		_, err := kc.CheckLog(id, l)
		switch {
		case reason.Of(err) == reason.KeyLogFork:
			s.cfg.Logger.Warn("key-log gossip: evidence that the agent's key event log forked; marked compromised", "agent", id.String(), "err", err)
			return false, nil
		case err != nil:
			return true, err
		}
	}
	return true, reason.New(reason.Internal, "key-log evidence of %s: no fork found against the cached log", id)
}

func forkGeneration(a, b *identity.Log) uint64 {
	for i := range min(len(a.Events), len(b.Events)) {
		if a.Events[i].Digest() != b.Events[i].Digest() {
			return a.Events[i].Generation
		}
	}
	return 0
}

// PublishKeyLog sends lg (a rotation notice; with fork, compromise evidence) on the key-log topic of every
// transport that runs gossip, and returns how many took it.
func (s *Service) PublishKeyLog(ctx context.Context, lg, fork *identity.Log) (int, error) {
	msg, err := EncodeKeyLogMessage(lg, fork)
	if err != nil {
		return 0, err
	}
	return s.publish(ctx, transports.TopicKeyLogs, msg)
}

// publishKeyLog publishes in the background (bounded by publishTimeout), logging the outcome.
func (s *Service) publishKeyLog(ctx context.Context, lg, fork *identity.Log) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	if n, err := s.PublishKeyLog(pctx, lg, fork); err != nil || n == 0 {
		s.cfg.Logger.Info("key event log not gossiped", "transports", n, "evidence", fork != nil, "err", err)
	}
}

// PublishOwnKeyLog gossips this agent's key event log in the background (a rotation notice): called
// after its identity rotated, so that agents that hold its log learn the new head without a session.
func (s *Service) PublishOwnKeyLog(ctx context.Context) { go s.publishKeyLog(ctx, s.cfg.OwnLog(), nil) }
