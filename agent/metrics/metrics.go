// Package metrics holds the agent's Prometheus metrics: its own registry (never the global default one),
// every metric named custos_*, plus the Go and process collectors, served on a loopback /metrics
// endpoint (Serve). Other packages record through the methods of Metrics, so label names and values stay
// in one place; the audit log reports through its small audit.Observer interface, which Metrics
// implements without either package importing the other.
//
// Label values are bounded: a value that is not a short lowercase identifier is counted as "other", so a
// peer cannot create series by sending odd strings.
package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Label values used by the methods below.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
	DirectionIn   = "in"
	DirectionOut  = "out"
	// Other replaces a label value that is not a short lowercase identifier.
	Other = "other"
)

// FailedOperations are the values of the operation label of custos_operations_failed_total.
var FailedOperations = []string{OpTask, OpEnvelope, OpControl, OpGrant}

// Operation label values of custos_operations_failed_total.
const (
	OpTask     = "task"
	OpEnvelope = "envelope"
	OpControl  = "control"
	OpGrant    = "grant"
)

// TrustLevels are the values of the trust_level label of custos_peers (agent/reputation's levels).
var TrustLevels = []string{"super", "trusted", "new", "restricted", "blocked"}

// Metrics is the agent's set of metrics with its own registry. The zero value is not usable; call New.
// A nil *Metrics is valid and records nothing, so optional instrumentation needs no checks.
type Metrics struct {
	reg *prometheus.Registry

	authAttempts   *prometheus.CounterVec
	failedOps      *prometheus.CounterVec
	messages       *prometheus.CounterVec
	messageBytes   *prometheus.CounterVec
	sessions       *prometheus.GaugeVec
	ksDuration     *prometheus.HistogramVec
	ksErrors       *prometheus.CounterVec
	replays        *prometheus.CounterVec
	rateLimited    *prometheus.CounterVec
	accessDenied   *prometheus.CounterVec
	peers          *prometheus.GaugeVec
	pluginRestarts *prometheus.CounterVec
	pluginSandbox  *prometheus.GaugeVec
	auditRecords   prometheus.Counter
	auditFailures  prometheus.Counter
	auditCPFails   prometheus.Counter
	auditAck       prometheus.Histogram
	ops            opsMetrics // ops.go
}

// keystoreBuckets span a software key (tens of microseconds) to a slow TPM (seconds).
var keystoreBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// New makes the metrics and registers them, with the Go and process collectors, in a new registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), ops: newOpsMetrics()}
	m.authAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_auth_attempts_total",
		Help: "Peer authentication attempts (handshakes) by result and failure reason (\"\" on success).",
	}, []string{"result", "reason"})
	m.failedOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_operations_failed_total",
		Help: "Operations that failed, by operation: task (a task this agent ran ended in error), envelope (a peer's message refused: bad signature, replay, undecryptable), control (a control-socket request that failed or was denied), grant (a grant or revocation operation that failed).",
	}, []string{"operation"})
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_messages_total",
		Help: "Protocol messages by transport and direction (in, out).",
	}, []string{"transport", "direction"})
	m.messageBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_message_bytes_total",
		Help: "Bytes of protocol messages by transport and direction (in, out).",
	}, []string{"transport", "direction"})
	m.sessions = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_sessions_active",
		Help: "Authenticated sessions open now, by transport.",
	}, []string{"transport"})
	m.ksDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custos_keystore_operation_duration_seconds",
		Help:    "Latency of keystore operations (generate, signer, sign, public_key, destroy, list, ping) by backend, successful or not.",
		Buckets: keystoreBuckets,
	}, []string{"backend", "operation"})
	m.ksErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_keystore_errors_total",
		Help: "Failed keystore operations by backend, operation and error kind (not_found, wrong_secret, unavailable, ...).",
	}, []string{"backend", "operation", "kind"})
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_replays_refused_total",
		Help: "Messages refused as replays, by reason (replayed_message, stale_timestamp, future_timestamp, counter_reuse, ...).",
	}, []string{"reason"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_rate_limited_total",
		Help: "Requests refused by a rate limit or quota, by limit.",
	}, []string{"limit"})
	m.accessDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_access_denied_total",
		Help: "Requests refused by authorization (RBAC, resource policy, handshake admission), by reason, and would-be refusals of log-only rules (mode=\"log_only\").",
	}, []string{"reason", "mode"})
	m.peers = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_peers",
		Help: "Known peers by trust level.",
	}, []string{"trust_level"})
	m.pluginRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_plugin_restarts_total",
		Help: "Transport plugin restarts by the supervisor, by plugin.",
	}, []string{"plugin"})
	m.pluginSandbox = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_plugin_sandbox",
		Help: "Whether each sandbox protection (ADR 0040) confines the transport plugin's current process: 1 applied, 0 missing.",
	}, []string{"plugin", "protection"})
	m.auditRecords = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_audit_records_total",
		Help: "Audit records made durable (fsynced).",
	})
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_audit_write_failures_total",
		Help: "Audit log write or fsync failures (the log then refuses records until its writer writes again; custos_audit_failing is 1 meanwhile).",
	})
	m.auditCPFails = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "custos_audit_checkpoint_failures_total",
		Help: "Audit checkpoints the identity key could not sign (retried).",
	})
	m.auditAck = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custos_audit_ack_duration_seconds",
		Help:    "Time from an audit append to its durable acknowledgement (group commit).",
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
	})
	m.reg.MustRegister(m.authAttempts, m.failedOps, m.messages, m.messageBytes, m.sessions, m.ksDuration,
		m.ksErrors, m.replays, m.rateLimited, m.accessDenied, m.peers, m.pluginRestarts, m.pluginSandbox, m.auditRecords, m.auditFailures,
		m.auditCPFails, m.auditAck,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.reg.MustRegister(m.ops.collectors()...)
	for _, op := range FailedOperations {
		m.failedOps.WithLabelValues(op)
	}
	m.ops.auditFailing.Set(0)
	// A counter first seen after its increase has no earlier sample, and increase() over it is 0: the
	// series the alerts watch start at zero.
	for _, l := range []string{"rate", "quota"} {
		m.rateLimited.WithLabelValues(l)
	}
	m.ops.tasksRefused.WithLabelValues("busy")
	// Series that alerts compare against exist from the start, at zero.
	m.authAttempts.WithLabelValues(ResultSuccess, "")
	for _, c := range reason.All {
		m.authAttempts.WithLabelValues(ResultFailure, string(c))
	}
	for _, d := range []reason.Domain{reason.DomainRBAC, reason.DomainPolicy, reason.DomainAdmission} {
		for _, c := range reason.InDomain(d) {
			m.accessDenied.WithLabelValues(string(c), "enforced")
		}
	}
	for _, l := range TrustLevels {
		m.peers.WithLabelValues(l)
	}
	for _, c := range []reason.Code{reason.ReplayedMessage, reason.StaleTimestamp, reason.FutureTimestamp, reason.CounterReuse} {
		m.replays.WithLabelValues(string(c))
	}
	return m
}

// Registry is the agent's own registry (for Serve, tests, or adding collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// label bounds a label value: 1-48 characters of a-z, 0-9, '_', '-', '.'; anything else is "other".
func label(s string) string {
	if len(s) == 0 || len(s) > 48 {
		return Other
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' && c != '.' {
			return Other
		}
	}
	return s
}

// code bounds a failure-code label to the failure-code registry (reason): an unregistered string is
// Other.
func code(s string) string {
	if reason.Registered(s) {
		return s
	}
	return Other
}

// AuthSucceeded counts a completed handshake.
func (m *Metrics) AuthSucceeded() {
	if m != nil {
		m.authAttempts.WithLabelValues(ResultSuccess, "").Inc()
	}
}

// AuthFailed counts a failed handshake with its reason code (reason).
func (m *Metrics) AuthFailed(reasonCode string) {
	if m != nil {
		m.authAttempts.WithLabelValues(ResultFailure, code(reasonCode)).Inc()
	}
}

// OperationFailed counts a failed operation.
func (m *Metrics) OperationFailed(operation string) {
	if m != nil {
		m.failedOps.WithLabelValues(label(operation)).Inc()
	}
}

// Message counts one protocol message of n bytes on transport in direction (DirectionIn/DirectionOut).
func (m *Metrics) Message(transport, direction string, n int) {
	if m == nil {
		return
	}
	t, d := label(transport), label(direction)
	m.messages.WithLabelValues(t, d).Inc()
	m.messageBytes.WithLabelValues(t, d).Add(float64(n))
}

// SessionOpened and SessionClosed track the sessions open on a transport.
func (m *Metrics) SessionOpened(transport string) {
	if m != nil {
		m.sessions.WithLabelValues(label(transport)).Inc()
	}
}

// SessionClosed: see SessionOpened.
func (m *Metrics) SessionClosed(transport string) {
	if m != nil {
		m.sessions.WithLabelValues(label(transport)).Dec()
	}
}

// ReplayRefused counts a message refused as a replay, with its reason code.
func (m *Metrics) ReplayRefused(reasonCode string) {
	if m != nil {
		m.replays.WithLabelValues(label(reasonCode)).Inc()
	}
}

// RateLimited counts a request refused by a rate limit or quota.
func (m *Metrics) RateLimited(limit string) {
	if m != nil {
		m.rateLimited.WithLabelValues(label(limit)).Inc()
	}
}

// AccessDenied counts a request refused by authorization with its reason code (no_grant, rate_limited,
// geo_denied, ...); enforced false counts a would-be refusal of a rule in log-only mode.
func (m *Metrics) AccessDenied(reasonCode string, enforced bool) {
	if m != nil {
		mode := "enforced"
		if !enforced {
			mode = "log_only"
		}
		m.accessDenied.WithLabelValues(code(reasonCode), mode).Inc()
	}
}

// SetPeers sets how many known peers are at a trust level.
func (m *Metrics) SetPeers(level string, n int) {
	if m != nil {
		m.peers.WithLabelValues(label(level)).Set(float64(n))
	}
}

// PluginRestarted counts a restart of a transport plugin by its supervisor.
func (m *Metrics) PluginRestarted(plugin string) {
	if m != nil {
		m.pluginRestarts.WithLabelValues(label(plugin)).Inc()
	}
}

// PluginSandbox sets, for plugin, each sandbox protection's gauge (1 applied, 0 missing).
func (m *Metrics) PluginSandbox(plugin string, applied map[string]bool) {
	if m == nil {
		return
	}
	for p, ok := range applied {
		v := 0.0
		if ok {
			v = 1
		}
		m.pluginSandbox.WithLabelValues(label(plugin), label(p)).Set(v)
	}
}

// ObserveKeystore records one keystore operation's latency and, when err is not nil, its error kind.
func (m *Metrics) ObserveKeystore(backend, operation string, d time.Duration, err error) {
	if m == nil {
		return
	}
	b, op := label(backend), label(operation)
	m.ksDuration.WithLabelValues(b, op).Observe(d.Seconds())
	if err != nil {
		m.ksErrors.WithLabelValues(b, op, ErrorKind(err)).Inc()
	}
}

// ErrorKind names a keystore error's kind for the kind label.
func ErrorKind(err error) string {
	kinds := []struct {
		err  error
		name string
	}{
		{keystore.ErrNotFound, "not_found"}, {keystore.ErrExists, "exists"},
		{keystore.ErrUnsupportedAlgorithm, "unsupported_algorithm"}, {keystore.ErrBadURI, "bad_uri"},
		{keystore.ErrWrongSecret, "wrong_secret"}, {keystore.ErrUnavailable, "unavailable"},
		{keystore.ErrKeyLost, "key_lost"}, {keystore.ErrCorrupt, "corrupt"}, {keystore.ErrClosed, "closed"},
		{keystore.ErrBadSignature, "bad_signature"}, {context.Canceled, "canceled"},
		{context.DeadlineExceeded, "timeout"},
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return Other
}

// AuditRecordsWritten implements audit.Observer.
func (m *Metrics) AuditRecordsWritten(n int) {
	if m != nil {
		m.auditRecords.Add(float64(n))
	}
}

// AuditWriteFailed implements audit.Observer.
func (m *Metrics) AuditWriteFailed(error) {
	if m != nil {
		m.auditFailures.Inc()
	}
}

// AuditCheckpointFailed implements audit.Observer.
func (m *Metrics) AuditCheckpointFailed(error) {
	if m != nil {
		m.auditCPFails.Inc()
	}
}

// AuditAckLatency implements audit.Observer.
func (m *Metrics) AuditAckLatency(d time.Duration) {
	if m != nil {
		m.auditAck.Observe(d.Seconds())
	}
}
