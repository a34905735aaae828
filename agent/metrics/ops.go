package metrics

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The operational metrics (issue 17): the keystore's health, the free space under the home, the task
// queue, refused tasks, the audit log's fail-closed state and the identity key's age. They are
// registered by New beside the others; the gauge functions are attached by the daemon (WatchHome,
// TaskQueue, IdentityKeyAge) once the parts they read exist.
type opsMetrics struct {
	keystoreUp   *prometheus.GaugeVec
	tasksRefused *prometheus.CounterVec
	auditFailing prometheus.Gauge
	auditLost    prometheus.Counter
	rotations    *prometheus.CounterVec
	destroyed    prometheus.Counter

	fn funcCollectors
}

func newOpsMetrics() opsMetrics {
	return opsMetrics{
		keystoreUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "custos_keystore_up",
			Help: "Whether the identity's keystore answered its last health check (1) or not (0), by backend; checked every metrics.keystore_check_interval.",
		}, []string{"backend"}),
		tasksRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_tasks_refused_total",
			Help: "Task requests from peers refused by the executor, by reason (busy: the queue is full or the agent drains; denied; unknown_handler; internal; audit_unavailable).",
		}, []string{"reason"}),
		auditFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "custos_audit_failing",
			Help: "1 while the audit log cannot write records (disk full, I/O error); with audit.on_failure refuse the agent then refuses new work.",
		}),
		auditLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_audit_records_lost_total",
			Help: "Audit records that could not be written (never acknowledged to their caller), counted while the log was failing.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_identity_rotations_total",
			Help: "Identity key rotations made by the daemon's schedule (rotation.interval), by result.",
		}, []string{"result"}),
		destroyed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_identity_keys_destroyed_total",
			Help: "Retired identity keys destroyed by the daemon at the end of their grace period.",
		}),
	}
}

func (o *opsMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{o.keystoreUp, o.tasksRefused, o.auditFailing, o.auditLost, o.rotations, o.destroyed, &o.fn}
}

// funcCollectors holds the gauges whose value is read at scrape time, attached after New.
type funcCollectors struct {
	homeFree, homeSize         func() (float64, bool)
	queued, queueLimit, keyAge func() (float64, bool)
	rotationInterval           func() (float64, bool)
}

var (
	descHomeFree   = prometheus.NewDesc("custos_home_free_bytes", "Bytes available to the agent on the file system of its home directory (the state database, the audit log).", nil, nil)
	descHomeSize   = prometheus.NewDesc("custos_home_size_bytes", "Size in bytes of the file system of the agent's home directory.", nil, nil)
	descQueued     = prometheus.NewDesc("custos_tasks_queued", "Inbound tasks accepted and not finished (the executor's queue).", nil, nil)
	descQueueLimit = prometheus.NewDesc("custos_tasks_queue_limit", "The most inbound tasks the executor queues (limits.max_queued_tasks); beyond it requests are refused busy.", nil, nil)
	descKeyAge     = prometheus.NewDesc("custos_identity_key_age_seconds", "Age of the identity's current key generation (since its key event); rotation.interval bounds it.", nil, nil)
	descRotation   = prometheus.NewDesc("custos_identity_rotation_interval_seconds", "The configured rotation.interval of the identity key (0: no scheduled rotation).", nil, nil)
)

func (f *funcCollectors) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHomeFree, descHomeSize, descQueued, descQueueLimit, descKeyAge, descRotation} {
		ch <- d
	}
}

func (f *funcCollectors) Collect(ch chan<- prometheus.Metric) {
	for _, g := range []struct {
		d  *prometheus.Desc
		fn func() (float64, bool)
	}{{descHomeFree, f.homeFree}, {descHomeSize, f.homeSize}, {descQueued, f.queued}, {descQueueLimit, f.queueLimit}, {descKeyAge, f.keyAge}, {descRotation, f.rotationInterval}} {
		if g.fn == nil {
			continue
		}
		if v, ok := g.fn(); ok {
			ch <- prometheus.MustNewConstMetric(g.d, prometheus.GaugeValue, v)
		}
	}
}

// WatchHome exports the free and total bytes of the file system holding dir (read at every scrape).
// Call it once, before the metrics are served.
func (m *Metrics) WatchHome(dir string) {
	if m == nil {
		return
	}
	statfs := func() (unix.Statfs_t, bool) {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return st, false
		}
		return st, true
	}
	m.ops.fn.homeFree = func() (float64, bool) {
		st, ok := statfs()
		return float64(st.Bavail) * float64(st.Bsize), ok
	}
	m.ops.fn.homeSize = func() (float64, bool) {
		st, ok := statfs()
		return float64(st.Blocks) * float64(st.Bsize), ok
	}
}

// TaskQueue exports the executor's queue length (queued, read at every scrape) and its limit. Call it
// once, before the metrics are served.
func (m *Metrics) TaskQueue(queued func() int, limit func() int) {
	if m == nil {
		return
	}
	m.ops.fn.queued = func() (float64, bool) { return float64(queued()), true }
	m.ops.fn.queueLimit = func() (float64, bool) { return float64(limit()), true }
}

// IdentityKeyAge exports the age of the identity's current key (since returns when it was made) and
// the configured rotation interval (0: none), both read at every scrape.
func (m *Metrics) IdentityKeyAge(since func() time.Time, interval func() time.Duration, now func() time.Time) {
	if m == nil {
		return
	}
	m.ops.fn.rotationInterval = func() (float64, bool) { return interval().Seconds(), true }
	m.ops.fn.keyAge = func() (float64, bool) {
		t := since()
		if t.IsZero() {
			return 0, false
		}
		return now().Sub(t).Seconds(), true
	}
}

// TaskRefused counts a peer's task request refused by the executor, with its code.
func (m *Metrics) TaskRefused(code string) {
	if m != nil {
		m.ops.tasksRefused.WithLabelValues(label(code)).Inc()
	}
}

// AuditFailing sets whether the audit log currently cannot write (audit.Observer).
func (m *Metrics) AuditFailing(failing bool) {
	if m == nil {
		return
	}
	v := 0.0
	if failing {
		v = 1
	}
	m.ops.auditFailing.Set(v)
}

// AuditRecordLost counts an audit record that could not be written (audit.Observer).
func (m *Metrics) AuditRecordLost() {
	if m != nil {
		m.ops.auditLost.Inc()
	}
}

// IdentityRotated counts a scheduled rotation by result (ResultSuccess, ResultFailure).
func (m *Metrics) IdentityRotated(result string) {
	if m != nil {
		m.ops.rotations.WithLabelValues(label(result)).Inc()
	}
}

// IdentityKeyDestroyed counts a retired key destroyed at the end of its grace period.
func (m *Metrics) IdentityKeyDestroyed() {
	if m != nil {
		m.ops.destroyed.Inc()
	}
}

// WatchKeystore checks the identity's keystore every interval with ping (through InstrumentKeystore, so
// a failure is also counted in custos_keystore_errors_total) and sets custos_keystore_up for backend.
// It returns when ctx ends. An interval <= 0 checks once.
func (m *Metrics) WatchKeystore(ctx context.Context, backend string, ping func(context.Context) error, interval time.Duration, log *slog.Logger) {
	if m == nil {
		return
	}
	g := m.ops.keystoreUp.WithLabelValues(label(backend))
	up := true
	check := func() {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			g.Set(1)
			if !up && log != nil {
				log.Info("keystore answers again", "backend", backend)
			}
			up = true
		default:
			g.Set(0)
			if up && log != nil {
				log.Error("keystore health check failed", "backend", backend, "err", err)
			}
			up = false
		}
	}
	check()
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			check()
		}
	}
}

// ControlFailed counts a control-socket request that failed or was denied: operations on grants
// ("grant.*") as OpGrant, every other one as OpControl.
func (m *Metrics) ControlFailed(operation string) {
	if m == nil {
		return
	}
	op := OpControl
	if strings.HasPrefix(operation, "grant.") {
		op = OpGrant
	}
	m.failedOps.WithLabelValues(op).Inc()
}
