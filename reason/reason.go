// Package reason holds the stable failure codes of the agent protocol (handshake, session, envelope,
// delegation, replay). Every protocol failure is an *Error carrying one Code; the code is what goes to the
// audit log, to a metric label and (as an alert) to the peer, and it never changes meaning once released.
// docs/protocol.md lists every code with when it is raised.
//
// A Code is itself an error, so callers test a failure with errors.Is(err, reason.BadSignature) and read
// the sentence with err.Error().
package reason

import (
	"context"
	"errors"
	"fmt"
)

// Code is a stable, machine-readable failure reason, e.g. "bad_signature".
type Code string

// Error makes a Code usable as an errors.Is target.
func (c Code) Error() string { return string(c) }

// The failure reasons of the protocol. The string values are part of the wire and audit format.
const (
	// Framing and decoding.
	Malformed          Code = "malformed"            // a message does not decode (strict decoding refused it)
	UnknownVersion     Code = "unknown_version"      // a protocol, envelope or delegation version this agent does not speak
	UnknownMessageType Code = "unknown_message_type" // an envelope message type or frame type that is not defined
	TruncatedFrame     Code = "truncated_frame"      // the stream ended inside a frame
	OversizedFrame     Code = "oversized_frame"      // a frame or field larger than its limit
	UnexpectedMessage  Code = "unexpected_message"   // a well-formed message at the wrong point of the protocol

	// Signatures and identities.
	BadSignature       Code = "bad_signature"       // a signature does not verify under the key it must verify under
	WrongRecipient     Code = "wrong_recipient"     // a message or handshake meant for another agent
	TranscriptMismatch Code = "transcript_mismatch" // the peer saw a different handshake transcript (tampering in transit)
	KeyConfirmation    Code = "key_confirmation"    // "established" does not open under the derived session key

	// Delegation.
	DelegationExpired     Code = "delegation_expired"       // now is after the delegation's not-after
	DelegationNotYetValid Code = "delegation_not_yet_valid" // now is before the delegation's not-before
	DelegationWrongKey    Code = "delegation_wrong_key"     // not signed by the identity's current key (or wrong generation)
	DelegationInvalid     Code = "delegation_invalid"       // well-formed but unacceptable (wrong agent, lifetime too long, ...)
	DelegationUnavailable Code = "delegation_unavailable"   // the local agent holds no valid delegation (cannot sign)

	// Replay and time.
	ReplayedMessage Code = "replayed_message"  // a message ID already seen inside the window
	StaleTimestamp  Code = "stale_timestamp"   // older than the window allows
	FutureTimestamp Code = "future_timestamp"  // further in the future than the window allows
	CounterReuse    Code = "counter_reuse"     // a session counter that is not the next expected one
	ReplayCacheFull Code = "replay_cache_full" // the replay cache is at capacity: refused rather than forget live entries

	// Key event logs and peers.
	KeyLogFork      Code = "key_log_fork"     // a verified log forks from the cached one: the peer is compromised
	KeyLogInvalid   Code = "key_log_invalid"  // the peer's key event log does not verify
	KeyLogStale     Code = "key_log_stale"    // the peer presents an older key-log head than the one cached
	KeyLogMissing   Code = "key_log_missing"  // the peer's head is newer than the cache and it did not send its log
	PeerCompromised Code = "peer_compromised" // the peer was marked compromised earlier (a fork was proven)
	UnknownPeer     Code = "unknown_peer"     // no cached key event log / delegation for the sender

	// Session lifecycle and policy.
	ValidatorRefused Code = "validator_refused" // the validator refused a verified peer
	Timeout          Code = "timeout"           // the handshake or a frame read ran out of time
	DecryptFailed    Code = "decrypt_failed"    // an authenticated payload does not decrypt
	SessionExpired   Code = "session_expired"   // the session outlived its re-authentication deadline
	PeerAlert        Code = "peer_alert"        // the peer reported a failure and closed
	Closed           Code = "closed"            // the connection or session is closed
	Internal         Code = "internal"          // a local failure (keystore, randomness, storage)
)

// ReauthRateLimited: the peer asked for, or started, re-authentications faster than this agent allows.
const ReauthRateLimited Code = "reauth_rate_limited"

// All lists every code, for documentation and metrics pre-registration.
var All = []Code{
	Malformed, UnknownVersion, UnknownMessageType, TruncatedFrame, OversizedFrame, UnexpectedMessage,
	BadSignature, WrongRecipient, TranscriptMismatch, KeyConfirmation,
	DelegationExpired, DelegationNotYetValid, DelegationWrongKey, DelegationInvalid, DelegationUnavailable,
	ReplayedMessage, StaleTimestamp, FutureTimestamp, CounterReuse, ReplayCacheFull,
	KeyLogFork, KeyLogInvalid, KeyLogStale, KeyLogMissing, PeerCompromised, UnknownPeer,
	ValidatorRefused, Timeout, DecryptFailed, SessionExpired, PeerAlert, Closed, Internal, ReauthRateLimited,
}

// Known reports whether c is one of All.
func Known(c Code) bool {
	for _, k := range All {
		if k == c {
			return true
		}
	}
	return false
}

// Error is a protocol failure: a Code, a sentence saying what was wrong, and optionally the cause.
type Error struct {
	Code   Code
	Detail string
	Err    error
}

// Error reads "code: detail: cause".
func (e *Error) Error() string {
	s := string(e.Code)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is matches the error's Code.
func (e *Error) Is(target error) bool {
	c, ok := target.(Code)
	return ok && c == e.Code
}

// New makes an *Error with a detail sentence.
func New(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Detail: fmt.Sprintf(format, args...)}
}

// Wrap makes an *Error with a detail sentence and a cause.
func Wrap(c Code, err error, format string, args ...any) *Error {
	return &Error{Code: c, Detail: fmt.Sprintf(format, args...), Err: err}
}

// Of returns the code of err: the code of the outermost *Error in its chain, Timeout for a context
// deadline, Closed for a cancelled context, and Internal for anything else (nil gives "").
func Of(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var c Code
	if errors.As(err, &c) {
		return c
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case errors.Is(err, context.Canceled):
		return Closed
	}
	return Internal
}
