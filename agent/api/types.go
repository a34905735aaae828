package api

import (
	"encoding/json"
	"time"

	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Requests and responses of the control operations (Table). The JSON field names are the wire format
// (docs/protocol.md does not cover the control socket: it is local and versioned with agentctl).

// TransportStatus describes one transport plugin.
type TransportStatus struct {
	Name     string   `json:"name"`
	Plugin   string   `json:"plugin"`
	SHA256   string   `json:"sha256"`
	PID      int      `json:"pid"`
	Running  bool     `json:"running"`
	Restarts uint64   `json:"restarts"`
	Listen   []string `json:"listen"`
	// Sandbox summarises the protections of the current plugin process (ADR 0040), e.g. "landlock v7,
	// seccomp, userns, mntns, pidns, no_new_privs, caps_dropped, uid 65534"; SandboxDetail has each.
	Sandbox       string              `json:"sandbox"`
	SandboxDetail sandbox.Protections `json:"sandbox_detail"`
	// DHTMode is how the current plugin process runs its DHT: "server" (answers lookups), "client" (only
	// asks: this agent lacks discover_peers, self.lookup.answer), absent for a transport without a DHT.
	DHTMode string `json:"dht_mode,omitempty"`
}

// Status is the answer to OpStatus.
type Status struct {
	AgentID           string            `json:"agent_id"`
	Generation        uint64            `json:"generation"`
	Keystore          string            `json:"keystore"`
	DelegationMode    string            `json:"delegation_mode"`
	DelegationExpires time.Time         `json:"delegation_expires"`
	Version           string            `json:"version"`
	PID               int               `json:"pid"`
	Started           time.Time         `json:"started"`
	Config            string            `json:"config"`
	ConfigDigest      string            `json:"config_digest"`
	Control           string            `json:"control"`
	Metrics           string            `json:"metrics,omitempty"`
	Transports        []TransportStatus `json:"transports"`
	Sessions          []SessionStatus   `json:"sessions"`
	Handlers          []string          `json:"handlers"`
	Tasks             tasks.Stats       `json:"tasks"`
	// ConfigPendingRestart are the parts of the configuration last loaded (ConfigDigest) that still run
	// as they were at the start until the daemon restarts (a reload applies the rest at once); never nil.
	// ConfigFileDigest is the file's digest now when it has changed since it was loaded (a reload, or
	// SIGHUP, applies it); ConfigFileError says why the file as it is now would not load.
	ConfigPendingRestart []string `json:"config_pending_restart"`
	ConfigFileDigest     string   `json:"config_file_digest,omitempty"`
	ConfigFileError      string   `json:"config_file_error,omitempty"`
	// Health is whether the keystore answers now; the audit log's is AuditWriting.
	Health       StatusHealth `json:"health"`
	AuditWriting AuditWriting `json:"audit_writing"`
}

// StatusHealth is the health of the parts an agent cannot work without (the audit log's: AuditWriting).
type StatusHealth struct {
	// Keystore: the keystore holding the current generation's key answers (custody.Ping: the check behind
	// the custos_keystore_up metric, ADR 0076), asked when the status is.
	Keystore PartHealth `json:"keystore"`
}

// PartHealth is one part's health: OK, what it is (Detail), and the failure when not OK.
type PartHealth struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

// AuditWriting is the audit log's write state and what the agent does about it (audit.on_failure, ADR
// 0089): while Writing is false and OnFailure is refuse, Refusing is the reason code (audit_unavailable)
// with which new tasks, inbound sessions and mutating control operations are refused, and Detail the
// sentence they carry.
type AuditWriting struct {
	audit.Health
	OnFailure string `json:"on_failure"`
	Refusing  string `json:"refusing,omitempty"`
	Detail    string `json:"detail,omitempty"`
}

// Line is the state in one line (agentctl status).
func (a AuditWriting) Line() string {
	switch {
	case a.Writing:
		return "writing (on_failure " + a.OnFailure + ")"
	case a.Refusing != "":
		return "NOT WRITING: " + a.Cause + " since " + a.Since.Format(time.RFC3339) + "; refusing new work (" + a.Refusing + "): " + a.Error
	default:
		return "NOT WRITING: " + a.Cause + " since " + a.Since.Format(time.RFC3339) + "; carrying on unaudited (on_failure continue): " + a.Error
	}
}

// PeerStatus is one known peer (cached key event log, session, dial target, reputation).
type PeerStatus struct {
	ID          string         `json:"id"`
	Connected   bool           `json:"connected"`
	Session     *SessionStatus `json:"session,omitempty"`
	Generation  *uint64        `json:"generation,omitempty"` // of its cached key event log
	Compromised bool           `json:"compromised"`
	Trust       string         `json:"trust"`
	Score       float64        `json:"score"`
	Target      *TargetStatus  `json:"dial,omitempty"`
	// Reputation is the score with the factors behind it; Roles the roles the peer holds here (grants and
	// authorization.default_peer_roles); Evidence how many of its signed results lost a vote (authz.go).
	Reputation *reputation.Report `json:"reputation,omitempty"`
	Roles      []string           `json:"roles"`
	Evidence   int                `json:"evidence"`
}

// ConnectArgs are OpPeersConnect's arguments.
type ConnectArgs struct {
	Address   string `json:"address"`
	ID        string `json:"id"`
	Transport string `json:"transport,omitempty"`
}

// SubmitArgs are OpTaskSubmit's arguments.
type SubmitArgs struct {
	To      string       `json:"to"`
	Handler string       `json:"handler"`
	Input   envelope.B64 `json:"input"`
	// OnBehalfOf attributes the task to a client (the HTTP gateway sets its key's name, ADR 0100); the
	// request carries it, signed, to the executor.
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
}

// TaskView is a submitted task as the control API shows it.
type TaskView struct {
	TaskID      string    `json:"task_id"`
	To          string    `json:"to"`
	Handler     string    `json:"handler"`
	State       string    `json:"state"`
	InputSHA256 string    `json:"input_sha256"`
	Submitted   time.Time `json:"submitted"`
	Updated     time.Time `json:"updated"`
	Attempts    int       `json:"attempts"`
	ErrorCode   string    `json:"error_code,omitempty"`
	Error       string    `json:"error,omitempty"`
	// OnBehalfOf is the task's attribution (SubmitArgs.OnBehalfOf), when it has one.
	OnBehalfOf string      `json:"on_behalf_of,omitempty"`
	Result     *ResultView `json:"result,omitempty"`
}

// ResultView is a verified task result: what the executor signed, the signature, and the evidence a
// third party needs to check it (agentctl task verify).
type ResultView struct {
	Status       string       `json:"status"`
	Output       envelope.B64 `json:"output"`
	OutputSHA256 string       `json:"output_sha256"`
	Error        string       `json:"error,omitempty"`
	Executor     string       `json:"executor"`
	// Started, Finished, SignedAt and DelegationNotAfter are RFC 3339 in UTC, like every time in the
	// control API's JSON (the signed documents hold unix seconds: the same instants, to the second).
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Signature is the evidence envelope's signature by the executor's operational key.
	Signature envelope.B64 `json:"signature"`
	SignedAt  time.Time    `json:"signed_at"`
	// OperationalKey is the key that signed (base64url), certified by the delegation of generation
	// DelegationGeneration valid until DelegationNotAfter.
	OperationalKey       string          `json:"operational_key"`
	OperationalAlgorithm string          `json:"operational_algorithm"`
	DelegationGeneration uint64          `json:"delegation_generation"`
	DelegationNotAfter   time.Time       `json:"delegation_not_after"`
	Verified             bool            `json:"verified"`
	Evidence             *tasks.Evidence `json:"evidence"`
}

// GetArgs are OpTaskGet's arguments.
type GetArgs struct {
	TaskID string `json:"task_id"`
	// WaitMS waits up to this many milliseconds for the task to become final (at most MaxWait).
	WaitMS int64 `json:"wait_ms,omitempty"`
	// OnBehalfOf, when set, restricts the answer to a task submitted on behalf of that client (the
	// gateway's per-key ownership, ADR 0100): another task is answered not_found, before any wait, and is
	// not marked fetched.
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
}

// Address is one way to reach a peer.
type Address struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
}

// SessionStatus describes one session.
type SessionStatus struct {
	Peer        string    `json:"peer"`
	Transport   string    `json:"transport"`
	Remote      string    `json:"remote"`
	Role        string    `json:"role"`
	Established time.Time `json:"established"`
	Expires     time.Time `json:"expires"`
	Generation  uint64    `json:"peer_generation"`
	SessionID   string    `json:"session_id"`
	// Existing: peers connect found this session already open, so the address it was given was not
	// dialled (not checked); it was stored as the address to re-dial the peer at.
	Existing bool `json:"existing,omitempty"`
}

// TargetStatus describes a peer this agent keeps a session with.
type TargetStatus struct {
	Addresses []Address `json:"addresses"`
	Source    string    `json:"source"`
	Attempts  int       `json:"dial_attempts"`
	LastError string    `json:"last_error,omitempty"`
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Digest         string   `json:"digest"`
	PreviousDigest string   `json:"previous_digest"`
	Changed        []string `json:"changed"`
	Applied        []string `json:"applied"`
	NeedRestart    []string `json:"need_restart,omitempty"`
	Generation     uint64   `json:"generation"`
	Rotated        bool     `json:"identity_rotated"`
}

// IdentityReloadResult is the answer to OpIdentityReload.
type IdentityReloadResult struct {
	Generation         uint64   `json:"generation"`
	PreviousGeneration uint64   `json:"previous_generation"`
	Changed            bool     `json:"changed"`
	Recorded           []string `json:"recorded"` // the audit event types written, in order
}

// GrantView is a grant as the control API shows it.
type GrantView struct {
	// Grant is the encoded grant: what agentctl grant install takes.
	Grant   string    `json:"grant"`
	ID      string    `json:"id"`
	Subject string    `json:"subject"`
	Role    string    `json:"role"`
	Issuer  string    `json:"issuer"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires"`
	// State is how this agent judges it now: valid, expired, revoked, or (for grants peers presented)
	// the rbac denial reason.
	State string `json:"state"`
}

// GrantIssueArgs are OpGrantIssue's arguments.
type GrantIssueArgs struct {
	Subject    string `json:"subject"`
	Role       string `json:"role"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"` // 0: DefaultGrantTTL
}

// GrantIssueResult is the grant this agent signed.
type GrantIssueResult struct {
	GrantView
	// AdminHere says whether this agent is one of its own configured administrators (then the grant is
	// also in force here); Warning says what that means otherwise.
	AdminHere bool   `json:"admin_here"`
	Warning   string `json:"warning,omitempty"`
	// IssuerLog is this agent's key event log (JSON lines) when the grant names a generation above 0: what
	// a verifier that never met this agent needs to check it (agentctl grant --out writes it after the grant).
	IssuerLog string `json:"issuer_log,omitempty"`
}

// GrantInstallArgs are OpGrantInstall's arguments.
type GrantInstallArgs struct {
	Grant string `json:"grant"` // the encoded grant
	// IssuerLog is the issuer's key event log (JSON lines), when the grant file carries it: merged into the
	// peer cache (verified, fork-checked) before the grant is checked.
	IssuerLog string `json:"issuer_log,omitempty"`
}

// Presentation says whether an installed grant reached a connected peer (a fresh handshake started by
// this agent carries it).
type Presentation struct {
	Peer      string `json:"peer"`
	Presented bool   `json:"presented"`
	Transport string `json:"transport,omitempty"`
	Address   string `json:"address,omitempty"`
	Error     string `json:"error,omitempty"`
}

// GrantInstallResult is an installed grant and where it was presented.
type GrantInstallResult struct {
	Grant     GrantView      `json:"grant"`
	Presented []Presentation `json:"presented"`
}

// GrantRemoveArgs are OpGrantRemove's arguments.
type GrantRemoveArgs struct {
	GrantID string `json:"grant_id"`
}

// GrantsList is OpGrantsList's answer: the grants this agent holds and presents, and those its peers
// presented to it.
type GrantsList struct {
	Held  []GrantView `json:"held"`
	Peers []GrantView `json:"peers"`
}

// RevokeArgs are OpRevoke's arguments.
type RevokeArgs struct {
	GrantID string `json:"grant_id"`
}

// RevokeResult is the revocation this agent signed.
type RevokeResult struct {
	// Revocation is the encoded revocation: what agentctl revoke install takes on the other agents.
	Revocation string    `json:"revocation"`
	GrantID    string    `json:"grant_id"`
	Issuer     string    `json:"issuer"`
	Issued     time.Time `json:"issued"`
	// AppliedHere says whether this agent, as one of its own administrators, applied it at once.
	AppliedHere bool   `json:"applied_here"`
	Warning     string `json:"warning,omitempty"`
	IssuerLog   string `json:"issuer_log,omitempty"` // as GrantIssueResult.IssuerLog
}

// RevocationInstallArgs are OpRevocationInstall's arguments.
type RevocationInstallArgs struct {
	Revocation string `json:"revocation"`
	IssuerLog  string `json:"issuer_log,omitempty"` // as GrantInstallArgs.IssuerLog
}

// RevocationInstallResult says what an installed revocation did.
type RevocationInstallResult struct {
	GrantID string `json:"grant_id"`
	Issuer  string `json:"issuer"`
	// RemovedHeld is true when the revoked grant was one this agent held (it is no longer presented).
	RemovedHeld bool `json:"removed_held"`
	// Applied is true when this agent lists the issuer as an administrator: the grant gives nothing here
	// from now on (false: only the held grant was dropped).
	Applied bool `json:"applied"`
}

// BlockNoticeArgs are OpPeersBlockNetwork's arguments: block (or with Unblock, lift the network blocks
// of) agent ID until Until (ADR 0101).
type BlockNoticeArgs struct {
	ID      string    `json:"id"`
	Unblock bool      `json:"unblock,omitempty"`
	Until   time.Time `json:"until,omitempty"` // required for a block; an unblock defaults to the longest block
	Reason  string    `json:"reason,omitempty"`
}

// BlockNoticeResult is the notice this agent signed.
type BlockNoticeResult struct {
	Notice string    `json:"notice"` // the encoded notice, as it travels
	Agent  string    `json:"agent"`
	Action string    `json:"action"`
	Issuer string    `json:"issuer"`
	Issued time.Time `json:"issued"`
	Until  time.Time `json:"until"`
	// AppliedHere: this agent, one of its own administrators, applied it at once.
	AppliedHere bool `json:"applied_here"`
	// Published: handed to the gossip publisher (it reaches agents over every transport with gossip).
	Published bool   `json:"published"`
	Warning   string `json:"warning,omitempty"`
}

// PeerArgs name a peer.
type PeerArgs struct {
	ID string `json:"id"`
}

// ReplicateArgs are OpTaskReplicate's arguments.
type ReplicateArgs struct {
	Handler    string       `json:"handler"`
	Input      envelope.B64 `json:"input"`
	Redundancy int          `json:"redundancy"`
	// Vote is the weighting: reputation (default), stake or hybrid.
	Vote string `json:"vote,omitempty"`
	// WaitMS bounds the wait for the results (default 2 minutes, at most MaxWait).
	WaitMS int64 `json:"wait_ms,omitempty"`
}

// VoteView is one selected peer's part in a replicated task.
type VoteView struct {
	Peer   string  `json:"peer"`
	TaskID string  `json:"task_id"`
	State  string  `json:"state"`
	Status string  `json:"status,omitempty"` // the result's status (ok, failed)
	Digest string  `json:"digest,omitempty"` // hex result digest (consensus.DigestOf of the output)
	Weight float64 `json:"weight"`
	// Vote is agree, dissent, silent (no usable result in time) or equivocating.
	Vote       string `json:"vote"`
	ResponseMS int64  `json:"response_ms,omitempty"`
	Error      string `json:"error,omitempty"`
}

// EvidenceView is a dissenting (or equivocating) signed result kept as evidence.
type EvidenceView struct {
	Peer     string `json:"peer"`
	Kind     string `json:"kind"`
	Digest   string `json:"digest"`
	Accepted string `json:"accepted,omitempty"`
	// Evidence is the peer's signed result with its delegation and key event log: anyone can check it
	// with agentctl task verify.
	Evidence json.RawMessage `json:"evidence,omitempty"`
}

// ReplicatedView is the outcome of a replicated task.
type ReplicatedView struct {
	Group       string   `json:"group"`
	Handler     string   `json:"handler"`
	InputSHA256 string   `json:"input_sha256"`
	Mode        string   `json:"mode"`
	Redundancy  int      `json:"redundancy"`
	Selected    []string `json:"selected"`
	Accepted    bool     `json:"accepted"`
	// Digest is the accepted result digest (hex); Output and OutputSHA256 are the accepted output.
	Digest       string         `json:"digest,omitempty"`
	Output       envelope.B64   `json:"output,omitempty"`
	OutputSHA256 string         `json:"output_sha256,omitempty"`
	Share        float64        `json:"share"`
	Weight       float64        `json:"weight"`
	Total        float64        `json:"total"`
	Quorum       float64        `json:"quorum"`
	Reason       string         `json:"reason,omitempty"`
	Votes        []VoteView     `json:"votes"`
	Evidence     []EvidenceView `json:"evidence"`
}

// StakeSignArgs are OpStakeSign's arguments.
type StakeSignArgs struct {
	Stakes     []consensus.Stake `json:"stakes"`
	TTLSeconds int64             `json:"ttl_seconds,omitempty"` // 0: DefaultGrantTTL
}

// StakeSetArgs are OpStakeSet's arguments.
type StakeSetArgs struct {
	Table string `json:"table"` // the encoded stake table
	// Force installs a table older than the one stored (a rollback); it is audited (details "rollback").
	Force bool `json:"force,omitempty"`
	// IssuerLog is the issuer's key event log (JSON lines), when the table file carries it.
	IssuerLog string `json:"issuer_log,omitempty"`
}

// StakeView is a stake table as the control API shows it.
type StakeView struct {
	// Table is the encoded table: what agentctl grant stake install takes.
	Table   string            `json:"table"`
	Issuer  string            `json:"issuer"`
	Issued  time.Time         `json:"issued"`
	Expires time.Time         `json:"expires"`
	Stakes  []consensus.Stake `json:"stakes"`
	// InForce says whether the table is the one this agent's votes use now.
	InForce bool   `json:"in_force"`
	Warning string `json:"warning,omitempty"`
	// IssuerLog is the signer's key event log (JSON lines) when it rotated since inception (agentctl grant
	// stake --out writes it after the table).
	IssuerLog string `json:"issuer_log,omitempty"`
}

// FindArgs are OpPeersFind's arguments.
type FindArgs struct {
	ID string `json:"id"`
	// TimeoutMS bounds the lookup (default 10 s, at most MaxFindTimeout).
	TimeoutMS int `json:"timeout_ms,omitempty"`
}

// MaxFindTimeout bounds a peers.find lookup.
const MaxFindTimeout = time.Minute

// PeerRecord is a verified agent record (agent/discovery): where the agent says it listens.
type PeerRecord struct {
	AgentID    string        `json:"agent_id"`
	Generation uint64        `json:"generation"`
	PeerID     string        `json:"peer_id,omitempty"`
	Addrs      []PeerAddress `json:"addrs"`
	Seq        uint64        `json:"seq"`
	Expires    time.Time     `json:"expires"`
}

// PeerAddress is one address of a PeerRecord.
type PeerAddress struct {
	Transport string `json:"transport"`
	Address   string `json:"address"`
}

// FeedbackArgs rate the executor of a task this agent submitted (agentctl feedback).
type FeedbackArgs struct {
	TaskID string `json:"task_id"`
	// Score is the rating, -100 (worst) to 100 (best) (reputation.MinRating, MaxRating).
	Score int `json:"score"`
	// Comment is kept in this agent's audit record only (the signed feedback carries no text); at most
	// MaxFeedbackComment bytes of printable UTF-8.
	Comment string `json:"comment,omitempty"`
}

// MaxFeedbackComment bounds FeedbackArgs.Comment.
const MaxFeedbackComment = 500

// FeedbackResult is the feedback given: counted here with full weight, and sent to the connected peers
// (the subject excepted), which count it weighted by this agent's reputation with them.
type FeedbackResult struct {
	TaskID  string `json:"task_id"`
	Subject string `json:"subject"`
	Rating  int    `json:"rating"`
	// SentTo are the peers the signed feedback was sent to; NotSent those it could not be sent to (why).
	SentTo  []string          `json:"sent_to"`
	NotSent map[string]string `json:"not_sent,omitempty"`
	// Reputation is the subject's reputation here after the feedback.
	Reputation reputation.Report `json:"reputation"`
}

// CancelArgs name a submitted task to give up (agentctl task cancel).
type CancelArgs struct {
	TaskID string `json:"task_id"`
}

// DataSubjectArgs names the subject of data.export and data.erase: an agent ID.
type DataSubjectArgs struct {
	Subject string `json:"subject"`
}

// DataExport is the subject-access copy (ADR 0092): everything the agent holds about the subject, by
// store (docs/privacy.md names them). Held is what data.erase removes; Kept is what it keeps, and why.
type DataExport struct {
	Subject   string                     `json:"subject"`
	Generated time.Time                  `json:"generated"`
	Held      map[string]json.RawMessage `json:"held"`
	Kept      []DataKept                 `json:"kept"`
}

// DataKept is what an erasure keeps in one store, and why.
type DataKept struct {
	Store  string          `json:"store"`
	Count  int             `json:"count"`
	Reason string          `json:"reason"`
	Items  json.RawMessage `json:"items,omitempty"` // in an export only
}

// DataErased is what data.erase removed (records per store) and what it kept.
type DataErased struct {
	Subject string         `json:"subject"`
	Removed map[string]int `json:"removed"`
	Kept    []DataKept     `json:"kept"`
	// AuditSeq is the seq of the data.erased audit record.
	AuditSeq uint64 `json:"audit_seq"`
	// SubjectRef is the reference of the subject's audit key that the erasure destroyed (ADR 0099):
	// the data.erased record names it, not the subject. Shredded counts the audit records whose
	// fields were sealed under it and can no longer be read.
	SubjectRef string `json:"subject_ref,omitempty"`
	Shredded   int    `json:"shredded,omitempty"`
}
