package reason

// The failure-code registry: every code string the agent writes to a peer, an audit record, a metric
// label or a control-socket client is declared once, here, with the domains that use it, a description
// and whether it travels to a peer. Each domain's package (rbac, policy, tasks, control, authz's
// admission refusals, the transport host) defines its constants from these, so a string has one meaning across the agent.

// Domain is the part of the agent that raises a code.
type Domain string

// The domains.
const (
	DomainProtocol  Domain = "protocol"  // handshake, session, envelope, delegation, replay (All); alerts to the peer
	DomainRBAC      Domain = "rbac"      // access denials (rbac.Reason); error_response code, audit, metric
	DomainPolicy    Domain = "policy"    // resource-policy denials (policy.Reason); error_response code, audit, metric
	DomainAdmission Domain = "admission" // the running agent's refusals of handshakes and messages (authz.Refusal*, authz.ReasonUncorrelated)
	DomainTransport Domain = "transport" // the transport host's refusals of a connection (host.Code*; audit, metric)
	DomainTask      Domain = "task"      // error_response codes of the task protocol (tasks.Code*)
	DomainControl   Domain = "control"   // failed responses on the control socket (control.Code*)
	DomainGateway   Domain = "gateway"   // problem responses of the HTTP gateway (agent/gateway)
	DomainDiscovery Domain = "discovery" // refusals of agent records (agent/discovery; DHT validator answers, lookups)
)

// Codes of the domains other than the protocol's (the protocol's are in reason.go). The string values
// are part of the wire, audit and metrics formats.
const (
	NoGrant           Code = "no_grant"
	GrantExpired      Code = "grant_expired"
	GrantRevoked      Code = "grant_revoked"
	GrantBadIssuer    Code = "grant_bad_issuer"
	GrantBadSignature Code = "grant_bad_signature"
	PermissionDenied  Code = "permission_denied"

	RateLimited       Code = "rate_limited"
	QuotaExceeded     Code = "quota_exceeded"
	OutsideTimeWindow Code = "outside_time_window"
	GeoDenied         Code = "geo_denied"

	BadPuzzle         Code = "bad_puzzle"
	Blocked           Code = "blocked"
	MalformedGrants   Code = "malformed_grants"
	GrantWrongSubject Code = "grant_wrong_subject"
	Uncorrelated      Code = "uncorrelated"
	// ExecutorNotPermitted: this agent does not hold the permission acting for a peer needs of it.
	ExecutorNotPermitted Code = "executor_not_permitted"

	BadBinding   Code = "bad_binding"
	PeerMismatch Code = "peer_mismatch"

	UnknownHandler Code = "unknown_handler"
	BadRequest     Code = "bad_request"
	Busy           Code = "busy"
	Denied         Code = "denied"

	HandlerCPULimit     Code = "handler_cpu_limit"
	HandlerMemoryLimit  Code = "handler_memory_limit"
	HandlerProcessLimit Code = "handler_process_limit"
	HandlerFileLimit    Code = "handler_file_limit"
	HandlerSandbox      Code = "handler_sandbox"

	// Cancelled: a submitted task given up by its submitter (agentctl task cancel, ADR 0090).
	Cancelled Code = "cancelled"

	UnknownOp   Code = "unknown_op"
	NotFound    Code = "not_found"
	Unavailable Code = "unavailable"
	Failed      Code = "failed"
	TooLarge    Code = "too_large"
	PeerRefused Code = "peer_refused"

	Unauthenticated    Code = "unauthenticated"
	KeyRevoked         Code = "key_revoked"
	KeyExpired         Code = "key_expired"
	RecordKeyMismatch  Code = "record_key_mismatch"
	RecordHeadMismatch Code = "record_head_mismatch"
	RecordExpired      Code = "record_expired"
	RecordTooLong      Code = "record_too_long"
	RecordStale        Code = "record_stale"
	GossipUnknownTopic Code = "gossip_unknown_topic"
	GossipNotForUs     Code = "gossip_not_for_us"
	// CatchupUnsolicited and CatchupExceeded: the catch-up of revocations (ADR 0096).
	CatchupUnsolicited Code = "catchup_unsolicited"
	CatchupExceeded    Code = "catchup_exceeded"
	// BlockExpired and BlockStale: administrator block notices (ADR 0101).
	BlockExpired Code = "block_expired"
	BlockStale   Code = "block_stale"

	AuditUnavailable Code = "audit_unavailable"

	// MailboxFull and RecipientKeyUnknown: the store-and-forward mailbox (agent/mailbox, ADR 0093).
	MailboxFull         Code = "mailbox_full"
	RecipientKeyUnknown Code = "recipient_key_unknown"
	// ErasureIncomplete: an erasure on request removed part of a subject's data and failed on a store
	// (ADR 0092); the message names the store and what was removed. Running it again finishes it.
	ErasureIncomplete Code = "erasure_incomplete"
)

// A handshake alert carries a protocol code; when the responder's validator refuses the grants the
// initiator presented, it carries that refusal's code instead of validator_refused (HandshakeRefusalAlerts,
// peer.go; ADR 0087): those codes are registered below in their own domains (rbac, admission).

// Entry is one registered code.
type Entry struct {
	Code        Code
	Domains     []Domain // every domain that raises it, with this one meaning
	Description string
	Wire        bool // sent to a peer (alert or error_response), not only audited, counted or shown locally
}

// entries is the registry. A code string appears once; a code several domains share (internal,
// timeout, bad_request, denied) lists them all under its one meaning.
func entries() []Entry {
	p, d := []Domain{DomainProtocol}, func(ds ...Domain) []Domain { return ds }
	return []Entry{
		{Malformed, p, "a message does not decode (strict decoding refused it)", true},
		{UnknownVersion, p, "a protocol, envelope or delegation version this agent does not speak", true},
		{UnknownMessageType, p, "an envelope message type or frame type that is not defined", true},
		{TruncatedFrame, p, "the stream ended inside a frame", true},
		{OversizedFrame, p, "a frame or field larger than its limit", true},
		{UnexpectedMessage, p, "a well-formed message at the wrong point of the protocol", true},
		{BadSignature, p, "a signature does not verify under the key it must verify under", true},
		{WrongRecipient, p, "a message or handshake meant for another agent", true},
		{TranscriptMismatch, p, "the peer saw a different handshake transcript", true},
		{KeyConfirmation, p, "\"established\" does not open under the derived session key", true},
		{DelegationExpired, p, "now is after the delegation's not-after", true},
		{DelegationNotYetValid, p, "now is before the delegation's not-before", true},
		{DelegationWrongKey, p, "the delegation is not signed by the identity's current key", true},
		{DelegationInvalid, p, "the delegation is well-formed but unacceptable", true},
		{DelegationUnavailable, p, "the local agent holds no valid delegation", true},
		{ReplayedMessage, p, "a message ID already seen inside the window", true},
		{StaleTimestamp, p, "older than the replay window allows", true},
		{FutureTimestamp, p, "further in the future than the replay window allows", true},
		{CounterReuse, p, "a session counter that is not the next expected one", true},
		{ReplayCacheFull, p, "the replay cache is at capacity", true},
		{KeyLogFork, p, "a verified key event log forks from the cached one", true},
		{KeyLogInvalid, p, "the peer's key event log does not verify", true},
		{KeyLogStale, p, "the peer presents an older key-log head than the one cached", true},
		{KeyLogMissing, p, "the peer's head is newer than the cache and it sent no log", true},
		{PeerCompromised, p, "the peer was marked compromised earlier", true},
		{UnknownPeer, p, "no cached key event log or delegation for the sender", true},
		{ValidatorRefused, p, "the validator refused a verified peer", true},
		{Timeout, d(DomainProtocol, DomainControl, DomainTask), "the handshake, a frame read or a wait ran out of time; a submitted task got no result within tasks.timeout (a failure of its executor)", true},
		{DecryptFailed, p, "an authenticated payload does not decrypt", true},
		{SessionExpired, p, "the session outlived its re-authentication deadline", true},
		{PeerAlert, p, "the peer reported a failure and closed", true},
		{Closed, p, "the connection or session is closed", true},
		{Internal, d(DomainProtocol, DomainTask), "a local failure (keystore, randomness, storage, recording a task)", true},
		{ReauthRateLimited, p, "re-authentications faster than this agent allows", true},

		{NoGrant, d(DomainRBAC), "the subject holds no grant (or its uid/gid maps to no role)", true},
		{GrantExpired, d(DomainRBAC), "the grant that would give the permission has expired", true},
		{GrantRevoked, d(DomainRBAC), "the grant that would give the permission was revoked", true},
		{GrantBadIssuer, d(DomainRBAC), "the grant (or revocation, or block notice) is signed by an agent that is not a system administrator", true},
		{GrantBadSignature, d(DomainRBAC), "the grant's (or revocation's, or block notice's) signature does not verify under its issuer's key", true},
		{PermissionDenied, d(DomainRBAC), "the subject's valid roles do not carry the permission", true},

		{RateLimited, d(DomainPolicy), "a rate limit refused the request", true},
		{QuotaExceeded, d(DomainPolicy), "a quota refused the request", true},
		{OutsideTimeWindow, d(DomainPolicy), "the request came outside the allowed time window", true},
		{GeoDenied, d(DomainPolicy), "the peer's region is not allowed", true},

		{BadPuzzle, d(DomainAdmission), "the admission puzzle was not solved (or not for this handshake)", true},
		{Blocked, d(DomainAdmission), "the peer's trust level is Blocked", true},
		{MalformedGrants, d(DomainAdmission), "the presented grants do not decode", true},
		{GrantWrongSubject, d(DomainAdmission), "a presented grant names another agent", true},
		{Uncorrelated, d(DomainAdmission), "an error_response that answers nothing this agent sent to that peer", false},
		{ExecutorNotPermitted, d(DomainAdmission), "this agent does not hold the permission acting for the peer needs of it (process_tasks to run its task, share_results to send it a result or feedback, discover_peers to answer DHT lookups): a peer_node grant of one of its administrators, or authorization.own_roles; ask its operator", true},

		{BadBinding, d(DomainTransport), "a connection's transport binding does not verify", false},
		{PeerMismatch, d(DomainTransport), "the peer on the connection is not the one dialled", false},

		{UnknownHandler, d(DomainTask), "the executor has no handler of that name", true},
		{BadRequest, d(DomainTask, DomainControl), "the request does not decode, its arguments are invalid or it breaks a limit", true},
		{Busy, d(DomainTask), "the executor's queue is full; retry later", true},
		{Denied, d(DomainTask, DomainControl), "policy or permissions refused the request", true},
		{HandlerCPULimit, d(DomainTask), "the exec handler used up its CPU-time limit (in a failed result)", true},
		{HandlerMemoryLimit, d(DomainTask), "the exec handler ran out of its memory limit (in a failed result)", true},
		{HandlerProcessLimit, d(DomainTask), "the exec handler reached its process limit (in a failed result)", true},
		{HandlerFileLimit, d(DomainTask), "the exec handler wrote past its file-size limit (in a failed result)", true},
		{HandlerSandbox, d(DomainTask), "the exec handler could not be confined as configured (in a failed result)", true},
		{Cancelled, d(DomainTask), "the submitter gave the task up (agentctl task cancel); a late result is acknowledged and dropped", false},

		{UnknownOp, d(DomainControl), "no such control operation", false},
		{NotFound, d(DomainControl), "the task or peer does not exist", false},
		{Unavailable, d(DomainControl), "the daemon cannot do it now (shutting down, no transport)", false},
		{Failed, d(DomainControl), "the operation failed (the message says why)", false},
		{TooLarge, d(DomainControl), "the request exceeds the control socket's limit", false},
		{PeerRefused, d(DomainControl), "a peer could not be reached or refused", false},

		{Unauthenticated, d(DomainGateway), "the HTTP request carries no API key, or one the agent does not know", false},
		{KeyRevoked, d(DomainGateway), "the request's API key was revoked", false},
		{KeyExpired, d(DomainGateway), "the request's API key has expired", false},
		{RecordKeyMismatch, d(DomainDiscovery), "an agent record stored or found under the key of another agent", false},
		{RecordHeadMismatch, d(DomainDiscovery), "an agent record's key-log head is not the head of the key event log it carries", false},
		{RecordExpired, d(DomainDiscovery), "an agent record past its expiry", false},
		{RecordTooLong, d(DomainDiscovery), "an agent record that expires further ahead than a verifier accepts", false},
		{RecordStale, d(DomainDiscovery), "an agent record with a lower sequence than the one already held", false},
		{MailboxFull, d(DomainGateway), "the mailbox holds its limit of messages for that recipient or in total (or the recipient's inbox is full: the sender keeps the message and delivers it again later); retry once it has delivered", false},
		{RecipientKeyUnknown, d(DomainGateway), "the gateway holds no unexpired delegation (encryption key) of the recipient: it must connect to this agent once first", false},
		{GossipUnknownTopic, d(DomainDiscovery), "a gossip message on a topic this agent does not judge (ADR 0091)", false},
		{GossipNotForUs, d(DomainDiscovery), "a gossiped revocation signed by an agent that is not this agent's administrator nor the issuer of a grant it holds: ignored, not forwarded, nobody penalised", false},
		{CatchupUnsolicited, d(DomainDiscovery), "a catch-up batch carries a revocation this agent did not ask that peer for (or no want is outstanding): the batch is dropped, the peer scored down and catch-up with it ends for the session (ADR 0096)", false},
		{CatchupExceeded, d(DomainDiscovery), "a peer sent more catch-up offers or wants in one session than the limits allow (ADR 0096): dropped, the peer scored down", false},
		{BlockExpired, d(DomainDiscovery), "a block notice past its end (until): refused, its publisher scored down (ADR 0101)", false},
		{BlockStale, d(DomainDiscovery), "a block notice issued before the one held for that agent: ignored, not forwarded (ADR 0101)", false},
		{AuditUnavailable, d(DomainAdmission), "the agent's audit log cannot write records (disk full, I/O error) and audit.on_failure is refuse: no new work until it can; retry later", true},
		{ErasureIncomplete, d(DomainControl), "an erasure removed part of a subject's data and failed on a store (the message names it and what went); run it again", false},
	}
}

// registry is entries() indexed by code string, built once and never written after.
var registry = func() map[Code]Entry {
	m := make(map[Code]Entry)
	for _, e := range entries() {
		m[e.Code] = e
	}
	return m
}()

// Registry returns every registered code (a fresh copy: callers may keep or change it).
func Registry() []Entry { return entries() }

// Lookup returns the entry of the code string s.
func Lookup(s string) (Entry, bool) {
	e, ok := registry[Code(s)]
	return e, ok
}

// Registered reports whether s is a registered code.
func Registered(s string) bool {
	_, ok := Lookup(s)
	return ok
}

// InDomain lists the codes domain d raises, in registry order.
func InDomain(d Domain) []Code {
	var out []Code
	for _, e := range entries() {
		for _, x := range e.Domains {
			if x == d {
				out = append(out, e.Code)
			}
		}
	}
	return out
}
