package session

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/handshake"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReauthInterval   = 15 * time.Minute
	DefaultReauthGrace      = time.Minute
	// DefaultReauthBurst is how many re-authentications a peer may cause in a row (each a handshake,
	// in strict mode a signature by the identity key) before the rate limit applies: then one per tenth
	// of this side's re-authentication interval (at least one per second).
	DefaultReauthBurst = 8
	incomingQueue      = 64
	// MaxSessionLifetime is the hard maximum between two authentications of a session, whatever either
	// side's configuration or "established" says (a delegation lives at most as long).
	MaxSessionLifetime = delegation.MaxLifetime
)

// Role is the part an agent plays in a handshake.
type Role int

const (
	// Initiator dials and sends hello.
	Initiator Role = iota + 1
	// Responder accepts and sends challenge.
	Responder
)

// String names the role.
func (r Role) String() string {
	if r == Initiator {
		return "initiator"
	}
	return "responder"
}

// Peer is what a verified handshake established about the other side.
type Peer struct {
	ID         identity.ID
	State      identity.State       // verified key event log state
	Delegation *delegation.Verified // its verified delegation (operational and encryption keys)
	Role       Role                 // the role the peer played
	Version    uint16               // negotiated protocol version
	Grants     []byte               // opaque role grants (sent by an initiator)
	Puzzle     []byte               // the puzzle the responder issued (empty: none)
	Solution   []byte               // the initiator's solution
	Binding    []byte               // what binds a puzzle to this handshake (PuzzleBinding)
	RemoteAddr string               // network address when the transport knows it

	log *identity.Log // the key event log sent inline, stored once the peer is admitted (commitPeer)
}

// Validator decides whether a verified peer may connect: the hook for blocked lists, grants, puzzles and
// reputation. It runs only after the peer's key event log, delegation and handshake signature verified.
// A refusal closes the handshake with validator_refused.
type Validator interface {
	Validate(ctx context.Context, p *Peer) error
}

// ValidatorFunc adapts a function to Validator.
type ValidatorFunc func(ctx context.Context, p *Peer) error

// Validate calls f.
func (f ValidatorFunc) Validate(ctx context.Context, p *Peer) error { return f(ctx, p) }

// Puzzler issues an opaque admission puzzle to an initiator (responder side; optional). bind ties the
// puzzle to this handshake (see PuzzleBinding); the Validator checks the solution (Peer.Solution against
// Peer.Puzzle and Peer.Binding).
type Puzzler interface {
	Puzzle(ctx context.Context, initiatorID string, bind []byte) ([]byte, error)
}

// Solver answers a responder's puzzle (initiator side; optional).
type Solver interface {
	Solve(ctx context.Context, puzzle, bind []byte) ([]byte, error)
}

// Event is reported to Config.OnEvent for audit and metrics.
type Event struct {
	Kind      string      // "handshake", "reauth", "reauth_refused" (a re-authentication request refused), "closed", "refused"
	Role      Role        // local role
	Peer      string      // peer agent ID (as claimed, when the failure came before verification)
	Code      reason.Code // "" on success
	Err       error
	SessionID []byte
}

// Config configures both roles. Delegations, KeyLog, Peers and Replay are required.
type Config struct {
	// Delegations holds the local agent's delegated keys.
	Delegations *delegation.Manager
	// KeyLog returns the local agent's own key event log (sent inline to peers whose cache is older).
	KeyLog func() *identity.Log
	// Peers is the peer cache (key event logs, delegations, compromised marks).
	Peers *peers.Cache
	// Replay is the replay cache and timestamp window.
	Replay *replay.Cache
	// Validator admits verified peers (nil: admit all).
	Validator Validator
	// Admit, when set, runs on the responder as soon as the initiator's response arrives, before its key
	// event log, delegation and signature are verified: for the cheap refusals that need no verified
	// identity (the admission puzzle, a Blocked agent ID). The Peer it sees has only ID (as claimed in the
	// hello), Role, Version, Puzzle, Solution, Binding and RemoteAddr. The Validator still runs afterwards.
	Admit Validator
	// Puzzler and Solver handle admission puzzles (nil: none).
	Puzzler Puzzler
	Solver  Solver
	// Grants are sent, opaque, in the initiator's response.
	Grants []byte
	// Hybrid makes the initiator offer ML-KEM-768 besides X25519.
	Hybrid bool
	// SignEnvelopes makes this side sign every session envelope it sends with its operational key. Off by
	// default (ADR 0032): a session envelope is authenticated to its recipient by the session keys alone,
	// and what must convince a third party (task results, feedback) is signed on its own. A received
	// envelope that carries a signature is verified whatever this says.
	SignEnvelopes bool
	// Versions lists supported protocol versions, highest first (default: [1]).
	Versions []uint16
	// HandshakeTimeout bounds a whole handshake (default 10 s).
	HandshakeTimeout time.Duration
	// ReauthInterval is how often the initiator re-authenticates (default 15 min).
	ReauthInterval time.Duration
	// ReauthGrace is how long past the interval the responder waits before closing (default 1 min).
	ReauthGrace time.Duration
	// ReauthBurst is how many re-authentications the peer may cause in a row, by asking for them or by
	// starting them, before the rate limit of one per tenth of ReauthInterval (at least 1 s) applies
	// (default DefaultReauthBurst). A refused request is reported (Event "reauth_refused"); a refused
	// re-authentication closes the session. Both carry reauth_rate_limited.
	ReauthBurst int
	// Clock returns the time (default time.Now).
	Clock func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// OnEvent, when set, is called for every handshake, re-authentication, refusal and close.
	OnEvent func(Event)

	noAutoReauth     bool                         // tests: the initiator never re-authenticates on its own
	testEstablished  func(*handshake.Established) // tests: a responder that changes its "established" message
	testAnyRecipient bool                         // tests: a responder that answers a hello meant for another agent
	testNoMaintain   bool                         // tests: no maintenance goroutine (nothing closes the session on time)
}

func (c *Config) check() (*Config, error) {
	if c.Delegations == nil || c.KeyLog == nil || c.Peers == nil || c.Replay == nil {
		return nil, errors.New("session config: Delegations, KeyLog, Peers and Replay are required")
	}
	cc := *c
	if len(cc.Versions) == 0 {
		cc.Versions = []uint16{handshake.ProtocolVersion}
	}
	for _, v := range cc.Versions {
		if v != handshake.ProtocolVersion {
			return nil, errors.New("session config: this build speaks protocol version 1 only")
		}
	}
	if cc.HandshakeTimeout <= 0 {
		cc.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cc.ReauthInterval == 0 {
		cc.ReauthInterval = DefaultReauthInterval
	}
	if cc.ReauthInterval < time.Second {
		return nil, errors.New("session config: the re-authentication interval must be at least 1 s")
	}
	if cc.ReauthGrace <= 0 {
		cc.ReauthGrace = DefaultReauthGrace
	}
	if cc.ReauthBurst <= 0 {
		cc.ReauthBurst = DefaultReauthBurst
	}
	if cc.Clock == nil {
		cc.Clock = time.Now
	}
	if cc.Logger == nil {
		cc.Logger = slog.Default()
	}
	return &cc, nil
}

// reauthEvery is the spacing of the re-authentications a peer may cause once its burst is spent.
func (c *Config) reauthEvery() time.Duration { return max(c.ReauthInterval/10, time.Second) }

// alterEstablished is what this responder sends: est, or (tests only) a changed copy; est itself stays
// what this side's own timing is computed from.
func (c *Config) alterEstablished(est *handshake.Established) *handshake.Established {
	if c.testEstablished == nil {
		return est
	}
	e := *est
	c.testEstablished(&e)
	return &e
}

func (c *Config) event(e Event) {
	if e.Err != nil {
		e.Code = reason.Of(e.Err)
	}
	if c.OnEvent != nil {
		c.OnEvent(e)
	}
}
