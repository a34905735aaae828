package audit

import (
	"fmt"
	"strings"
)

// EventType names what a record is about. Types are lowercase, dot-separated words ("auth.failure").
// The agent's parts use the constants below; a plugin or a later version may log a type not listed
// here as long as it has that form. Types under "audit." are written by the log itself and refused
// from Append.
type EventType string

// Authentication (docs/protocol.md, handshake). Every attempt is logged, successful or not.
const (
	// AuthSuccess: a peer completed the handshake. Actor: the peer's agent ID. Details: "transport",
	// "remote" (address), "roles".
	AuthSuccess EventType = "auth.success"
	// AuthFailure: a handshake failed. Actor: the claimed agent ID (untrusted: nothing the peer sent
	// before its signature verified is trusted) or "" when none was offered. Details must carry
	// "reason" (the handshake's reason code, e.g. "bad_signature", "expired_delegation", "revoked",
	// "blocked", "unknown_version", "bad_puzzle", "timeout"), plus "transport" and "remote".
	AuthFailure EventType = "auth.failure"
)

// Authorization.
const (
	// AccessDenied: RBAC or a resource policy refused an operation. Actor: the requester; Subject: the
	// operation or message type. Details: "permission" (the one missing) and/or "policy", "reason".
	AccessDenied EventType = "access.denied"
	// RateLimited: a request was refused by a token bucket or quota. Actor: the peer; Details: "limit"
	// (which bucket or quota), "role".
	RateLimited EventType = "ratelimit.exceeded"
	// ReplayRefused: an envelope was refused as a replay (seen message_id, timestamp outside the window,
	// counter going backwards). Actor: the sender; Details: "reason", "message_id".
	ReplayRefused EventType = "message.replay"
)

// Key events of this agent's own identity (the key event log; DESIGN 3.3). Subject: the agent ID.
// Details must carry "generation"; they name the keystore URI ("key_uri", never a secret) where useful.
const (
	// KeyInit: a new identity was created (inception, generation 0).
	KeyInit EventType = "key.init"
	// KeyRotate: the identity moved to its pre-committed next key.
	KeyRotate EventType = "key.rotate"
	// KeyDestroy: an old key was destroyed after its grace period.
	KeyDestroy EventType = "key.destroy"
	// KeyRecover: a lost key was replaced through the recovery key.
	KeyRecover EventType = "key.recover"
	// KeyDelegate: the identity key signed a new delegation for an operational key. Details: "expires".
	KeyDelegate EventType = "key.delegate"
	// KeyUse: the identity key signed data for its operator (agentctl sign; not a protocol signature).
	// Details: "generation", "sha256" (of the data signed), "source".
	KeyUse EventType = "key.use"
	// KeyUnlockFailed: the keystore of the identity key refused the PIN or passphrase it was given (outcome
	// failure). Details: "generation", "backend", "source". Written without the key, its checkpoint cannot
	// be signed: an audit.checkpoint_failed follows, and the next start signs the head.
	KeyUnlockFailed EventType = "key.unlock_failed"
)

// Role grants (DESIGN 6). Actor: the administrator's agent ID; Subject: the grantee.
const (
	// GrantIssued: this agent, as a system administrator, signed a grant. Details: "roles", "expires".
	GrantIssued EventType = "grant.issued"
	// GrantAccepted: a signed grant presented by a peer was verified and stored.
	GrantAccepted EventType = "grant.accepted"
	// GrantRevoked: a grant was revoked. Details: "grant" (its digest), "reason".
	GrantRevoked EventType = "grant.revoked"
)

// Configuration. Details must carry "digest": the SHA-256 of the configuration bytes as loaded
// (base64url or hex), so that two records can be compared without storing the configuration.
const (
	// ConfigLoaded: the agent read its configuration (at start). Subject: the file path.
	ConfigLoaded EventType = "config.loaded"
	// ConfigChanged: the configuration changed while running (reload, or a control-API change).
	// Details: "digest" (new), "previous_digest", "changed" (names of changed settings).
	ConfigChanged EventType = "config.changed"
)

// Trust and reputation (DESIGN 6).
const (
	// TrustChanged: a peer moved between trust levels. Subject: the peer; Details must carry "from" and
	// "to" (new, trusted, super, restricted, blocked) and "reason".
	TrustChanged EventType = "trust.changed"
	// PeerBlocked: an administrator's block notice was installed (ADR 0101). Subject: the blocked agent;
	// Details: "issuer", "until" (RFC 3339), "source" (local: issued here; remote: received by gossip or
	// catch-up, with "via"), "reason" (the notice's).
	PeerBlocked EventType = "peer.blocked"
	// PeerUnblocked: a network block ended: an administrator's unblock notice ("source", "issuer") or its
	// end passed ("source": expired).
	PeerUnblocked EventType = "peer.unblocked"
)

// Transport plugin lifecycle (DESIGN 5). Subject: the plugin name; Details: "path", "sha256", "pid".
const (
	// PluginStarted: a plugin process was launched and passed its checksum and handshake.
	PluginStarted EventType = "plugin.started"
	// PluginCrashed: a plugin exited or failed its health check unexpectedly; written when the supervisor
	// finds it dead, before any restart (plugin.restarted follows only if one succeeds). Details: "error",
	// "pid" (the dead process).
	PluginCrashed EventType = "plugin.crashed"
	// PluginRestarted: the supervisor restarted a plugin. Details: "attempt", "backoff".
	PluginRestarted EventType = "plugin.restarted"
	// PluginStartFailed: a launch of a plugin process failed while the supervisor restarted (or updated)
	// it; written for each attempt. Details: "path", "attempt", "reason" (checksum_mismatch when the file's
	// SHA-256 is not the pinned one, else start_failed), "error".
	PluginStartFailed EventType = "plugin.start_failed"
	// PluginUpdated: a plugin's binary was replaced while the agent ran (its new checksum pinned by a
	// configuration reload): the process was restarted on it. Details: "path", "sha256",
	// "previous_sha256", "pid", "downtime_ms".
	PluginUpdated EventType = "plugin.updated"
	// PluginStopped: a plugin was stopped on purpose.
	PluginStopped EventType = "plugin.stopped"
)

// Agent lifecycle and alerts.
const (
	// AgentStarted: the daemon started. Details: "version", "keystore" (backend).
	AgentStarted EventType = "agent.started"
	// AgentStopped: the daemon stopped cleanly.
	AgentStopped EventType = "agent.stopped"
	// AlertRaised: the agent raised an alert of its own (a security violation, resource exhaustion, a
	// suspicious pattern). Details: "alert" (name), "severity", "summary".
	AlertRaised EventType = "alert.raised"
	// AlertResolved: a raised alert cleared.
	AlertResolved EventType = "alert.resolved"
)

// Data protection (ADR 0092).
const (
	// DataErased: the agent erased what it held about a subject on request (agentctl data erase). Actor:
	// who asked; Subject: the reference of the subject's audit key the erasure destroyed (ADR 0099; ""
	// when it had none; the agent ID, sealed under its key, when the erasure failed part-way); Details
	// must carry "removed" (records removed per store) and may carry "kept" (records kept per store, as
	// security evidence or under legal obligation), "subject_key" (destroyed or none) and "shredded"
	// (audit records whose sealed fields can no longer be read). Nothing else about the subject.
	DataErased EventType = "data.erased"
)

// Records the log writes about itself. Append refuses every "audit." type.
const (
	// LogCreated is the first record of a new log. Subject: the agent ID.
	LogCreated EventType = "audit.created"
	// LogCheckpoint carries a signature by the identity key over the chain head (see Checkpoint).
	LogCheckpoint EventType = "audit.checkpoint"
	// LogPruned records that retention removed whole segments. It carries a checkpoint whose head is the
	// last removed record, so the remaining chain still starts at a signed point.
	LogPruned EventType = "audit.pruned"
	// LogRecovered records that the log was found not closed cleanly (the writer crashed or the host
	// lost power) when it was opened again.
	LogRecovered EventType = "audit.recovered"
	// LogRepaired records that a torn (incomplete) tail was cut off on open: which segment, at which
	// offset, how many bytes and their SHA-256.
	LogRepaired EventType = "audit.repaired"
	// LogCheckpointFailed records that signing a checkpoint failed (the keystore's error); the writer
	// retries at the next interval.
	LogCheckpointFailed EventType = "audit.checkpoint_failed"
)

// requiredDetails lists detail keys some event types must carry.
var requiredDetails = map[EventType][]string{
	AuthFailure:   {"reason"},
	KeyInit:       {"generation"},
	KeyRotate:     {"generation"},
	KeyDestroy:    {"generation"},
	KeyRecover:    {"generation"},
	ConfigLoaded:  {"digest"},
	ConfigChanged: {"digest"},
	TrustChanged:  {"from", "to"},
	PeerBlocked:   {"issuer", "until", "source"},
	PeerUnblocked: {"source"},
	DataErased:    {"removed"},
}

// Outcome says how the event ended.
type Outcome string

// Outcomes. An empty outcome is stored as OutcomeInfo.
const (
	OutcomeSuccess Outcome = "success" // the operation succeeded
	OutcomeFailure Outcome = "failure" // it failed (an error, a bad signature)
	OutcomeDenied  Outcome = "denied"  // it was refused by policy (RBAC, rate limit, blocked peer, replay)
	OutcomeInfo    Outcome = "info"    // a fact, not an attempt (config loaded, trust changed)
)

func (o Outcome) valid() bool {
	return o == OutcomeSuccess || o == OutcomeFailure || o == OutcomeDenied || o == OutcomeInfo
}

// maxTypeLen bounds an event type name.
const maxTypeLen = 64

// Validate checks the form of an event type: 1-64 characters of a-z, 0-9, '_' and '.', starting with a
// letter, no empty word.
func (t EventType) Validate() error {
	s := string(t)
	if s == "" || len(s) > maxTypeLen {
		return fmt.Errorf("event type %q: must be 1 to %d characters", s, maxTypeLen)
	}
	if s[0] < 'a' || s[0] > 'z' || strings.Contains(s, "..") || strings.HasSuffix(s, ".") {
		return fmt.Errorf("event type %q: must be lowercase dot-separated words like %q", s, AuthFailure)
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '.' {
			return fmt.Errorf("event type %q: character %q not allowed (use a-z, 0-9, '_' and '.')", s, c)
		}
	}
	return nil
}

func (t EventType) internal() bool { return strings.HasPrefix(string(t), "audit.") }
