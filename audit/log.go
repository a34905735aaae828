// Package audit is the agent's tamper-evident audit log: append-only JSON-lines segments (files 0600 in
// a 0700 directory, normally <home>/audit), every record hash-chained to the one before, the chain
// signed at checkpoints by the agent's identity key (through a keystore.Signer, so on a TPM or token),
// group commit so that Append returns only once its record is on disk (fsync), retention that removes
// whole old segments while the rest still verifies, and Verify, which names the first bad record.
//
// docs/adr/0004-audit-log.md gives the format and the reasons.
package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/internal/privacy"
	"github.com/custos-agent/custos/keystore"
)

// Observer receives the writer's own counters (the agent's metrics implement it). It lets the audit
// package report without depending on the metrics package. Methods are called from the writer's
// goroutine and must not block.
type Observer interface {
	// AuditRecordsWritten counts records made durable (after fsync).
	AuditRecordsWritten(n int)
	// AuditWriteFailed counts a failed write or fsync: the log stops accepting records.
	AuditWriteFailed(err error)
	// AuditCheckpointFailed counts a checkpoint the keystore could not sign (retried later).
	AuditCheckpointFailed(err error)
	// AuditAckLatency observes, per record, the time from Append to its durable acknowledgement.
	AuditAckLatency(d time.Duration)
	// AuditFailing reports that the log cannot write (true, after a failed write or fsync) or writes
	// again (false, once the writer recovered).
	AuditFailing(failing bool)
	// AuditRecordLost counts a record refused (never acknowledged) because the log could not write.
	AuditRecordLost()
}

type nopObserver struct{}

func (nopObserver) AuditRecordsWritten(int)       {}
func (nopObserver) AuditWriteFailed(error)        {}
func (nopObserver) AuditCheckpointFailed(error)   {}
func (nopObserver) AuditAckLatency(time.Duration) {}
func (nopObserver) AuditFailing(bool)             {}
func (nopObserver) AuditRecordLost()              {}

// Retention says which whole segments may be removed. Zero values keep everything. The segment being
// written is never removed.
type Retention struct {
	// MaxAge removes a segment once its newest record is older than this.
	MaxAge time.Duration
	// MaxBytes removes the oldest segments while all segments together are larger than this.
	MaxBytes int64
}

// Options configure a log. Signer, AgentID and Generation are required.
type Options struct {
	// Signer is the agent's identity key (a TPM or token key through the keystore). It signs
	// checkpoints only, never on the path of an Append.
	Signer keystore.Signer
	// Generation is the key event log generation of Signer (see SetSigner after a rotation).
	Generation uint64
	// AgentID is the agent's ID ("ed25519:..." / "p256:..."), part of every checkpoint signature.
	AgentID string

	// CheckpointEvery signs a checkpoint once this many records are not yet covered (default 1000).
	CheckpointEvery int
	// CheckpointInterval signs a checkpoint when the oldest uncovered record is this old (default 1m).
	CheckpointInterval time.Duration

	// SegmentMaxBytes starts a new segment once the current one is this large (default 8 MiB).
	SegmentMaxBytes int64
	// SegmentMaxAge starts a new segment once the current one is this old (default 24h).
	SegmentMaxAge time.Duration
	// Retention removes old segments (default: keep everything).
	Retention Retention

	// Secrets says what Append does with details that look like secrets (default RedactSecrets).
	Secrets SecretPolicy
	// Addresses, when set, minimises every appended record before it is hashed: network addresses in
	// Actor, Subject and every string of Details are truncated (internal/privacy; ADR 0082). The agent
	// sets it; nil writes records as given.
	Addresses *privacy.Addresses
	// SubjectKeys, when set, seals every appended record's personal fields (another agent's ID as actor
	// or subject, its address and the details that name it) under that agent's key, made on first use
	// (ADR 0099): erasing the agent destroys the key. nil writes every field in the clear.
	SubjectKeys SubjectKeys
	// MaxBatch bounds how many records one group commit writes (default 1024).
	MaxBatch int
	// Observer receives the writer's counters (optional).
	Observer Observer
	// Logger receives warnings (optional; default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests of retention set it.
	Now func() time.Time
	// Retry bounds the delays between attempts to write again after a failed write or fsync (default
	// 500ms doubling to 10s, with jitter; internal/backoff).
	Retry backoff.Policy

	// wrapFile, when set, wraps every segment file the writer opens (tests inject write failures).
	wrapFile func(*os.File) segmentFile
}

func (o *Options) defaults() error {
	if o.Signer == nil {
		return errors.New("audit: Options.Signer is required (the identity key signs checkpoints)")
	}
	if o.AgentID == "" {
		return errors.New("audit: Options.AgentID is required")
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 1000
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Minute
	}
	if o.SegmentMaxBytes <= 0 {
		o.SegmentMaxBytes = 8 << 20
	}
	if o.SegmentMaxAge <= 0 {
		o.SegmentMaxAge = 24 * time.Hour
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Retry.Min <= 0 {
		o.Retry.Min = 500 * time.Millisecond
	}
	if o.Retry.Max <= 0 {
		o.Retry.Max = 10 * time.Second
	}
	return nil
}

// segmentFile is the active segment as the writer uses it: an *os.File (Options.wrapFile lets a test
// make it fail).
type segmentFile interface {
	Write(b []byte) (int, error)
	Sync() error
	Truncate(size int64) error
	Close() error
}

// ErrClosed: the log was closed.
var ErrClosed = errors.New("audit log closed")

// ErrFailed: an earlier write or fsync failed (disk full, I/O error); the log refuses records until
// its writer has re-synced the segment and written again (it retries by itself; see Health).
var ErrFailed = errors.New("audit log cannot write")

// Log is an open audit log with its single writer. It is safe for concurrent use.
type Log struct {
	dir  string
	opts Options
	lg   *slog.Logger
	obs  Observer
	lock *os.File

	mu     sync.RWMutex // guards closed, and sending on reqs
	closed bool
	reqs   chan *request
	ctl    chan func()
	done   chan struct{} // closed when the writer goroutine ends
	errMu  sync.Mutex
	failed error  // the write failure in force (nil: writing)
	health Health // guarded by errMu; Writing is failed == nil

	keyMu  sync.Mutex
	signer keystore.Signer
	gen    uint64

	closeErr error
	keys     keyCache

	// Owned by the writer goroutine.
	f          segmentFile
	segs       []segMeta // oldest first; the last is the active one
	seq        uint64    // last written seq
	head       [32]byte  // hash of the last written record
	lastData   uint64    // seq of the last record that is not a checkpoint
	covered    uint64    // highest head_seq signed by a checkpoint this log wrote or found
	uncovSince time.Time // when the oldest uncovered record was written
	signing    bool
	signRes    chan signResult
	signNow    string       // a checkpoint is due at once (after create or recovery): its reason
	manual     []chan error // Checkpoint callers waiting for the next signature
	retryAfter time.Time    // after a failed signature, no new attempt before this
	recovering bool         // a recovery attempt writes its record past the failure
	prune      *signJob     // pending retention, waiting for its signature
	lastRet    time.Time
	buf        []byte
}

type segMeta struct {
	name      string
	first     uint64
	firstPrev string
	last      uint64
	lastTime  time.Time
	lastHash  [32]byte
	size      int64
	created   time.Time
}

type request struct {
	p     *pending
	start time.Time
	seq   uint64
	err   error
	done  chan struct{}
}

type signJob struct {
	reason   string // count, interval, open, close, manual, retention
	headSeq  uint64
	head     [32]byte
	signer   keystore.Signer
	gen      uint64
	segments []segMeta // retention: the segments to remove
	waiters  []chan error
}

type signResult struct {
	job *signJob
	sig []byte
	err error
}

// Open opens (or creates) the log in dir and starts its writer. Only one process may have a log open:
// a second Open fails with ErrLocked. A log that was not closed cleanly is repaired: a torn last record
// (an incomplete line) is cut off and an audit.repaired record says so; otherwise an audit.recovered
// record notes the unclean shutdown. Damage anywhere but the tail of the last segment is not repaired:
// Open fails and names it (run Verify; move the directory aside to start a new log).
func Open(ctx context.Context, dir string, opts Options) (*Log, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create audit directory: %w", err)
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if fi.Mode().Perm()&0o077 != 0 {
		opts.Logger.Warn("audit directory was accessible to others; setting mode 0700", "dir", dir, "mode", fi.Mode().Perm())
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("restrict audit directory: %w", err)
		}
	}
	lock, err := lockFile(dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		dir: dir, opts: opts, lg: opts.Logger, obs: opts.Observer, lock: lock,
		reqs: make(chan *request, 4*opts.MaxBatch), ctl: make(chan func()), done: make(chan struct{}),
		signer: opts.Signer, gen: opts.Generation, signRes: make(chan signResult, 1),
		health: Health{Writing: true},
	}
	if err := l.load(); err != nil {
		if l.f != nil {
			l.f.Close()
		}
		lock.Close()
		return nil, err
	}
	l.lastRet = opts.Now()
	l.planRetention()
	go l.run()
	return l, nil
}

// Dir is the log's directory.
func (l *Log) Dir() string { return l.dir }

// SetSigner switches checkpoint signing to a new identity key after a rotation. gen must not be lower
// than the current generation.
func (l *Log) SetSigner(s keystore.Signer, gen uint64) error {
	if s == nil {
		return errors.New("audit: SetSigner needs a signer")
	}
	l.keyMu.Lock()
	defer l.keyMu.Unlock()
	if gen < l.gen {
		return fmt.Errorf("audit: generation %d is older than the current %d", gen, l.gen)
	}
	l.signer, l.gen = s, gen
	return nil
}

// Append writes r and returns its sequence number once it is durable (written and fsynced, together
// with whatever other records were waiting: group commit). Details that look like secrets are redacted
// (or refused under RefuseSecrets). If ctx ends first Append returns ctx's error; the record may still
// be written.
func (l *Log) Append(ctx context.Context, r Record) (uint64, error) {
	if a := l.opts.Addresses; a != nil {
		r.Actor, r.Subject, r.Details = a.Text(r.Actor), a.Text(r.Subject), a.Details(r.Details)
	}
	w, err := prepare(&r, l.opts.Secrets, false, &l.keys)
	if err != nil {
		return 0, err
	}
	if len(w.Details)+6*(len(w.Actor)+len(w.Subject))+512 > MaxRecordSize {
		return 0, fmt.Errorf("%w: the record's details are too large (limit about %d bytes)", ErrInvalidRecord, MaxRecordSize-512)
	}
	if !r.Time.IsZero() {
		w.Time = r.Time.UTC().Format(timeFormat)
	}
	var p *pending
	if keys := l.opts.SubjectKeys; keys != nil {
		plan, err := planSeal(ctx, w, l.opts.AgentID, keys)
		if err != nil {
			return 0, err
		}
		if plan != nil {
			p = &pending{seal: plan, time: w.Time} // the writer seals it for its seq
		}
	}
	if p == nil {
		if p, err = newPending(w); err != nil {
			return 0, err
		}
	}
	if !r.Time.IsZero() {
		p.t = r.Time.UTC()
	}
	req := &request{p: p, start: time.Now(), done: make(chan struct{})}
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return 0, ErrClosed
	}
	if err := l.failure(); err != nil {
		l.mu.RUnlock()
		l.lost(1)
		return 0, err
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		l.mu.RUnlock()
		return 0, ctx.Err()
	}
	l.mu.RUnlock()
	select {
	case <-req.done:
		return req.seq, req.err
	case <-ctx.Done():
		return 0, fmt.Errorf("audit record not acknowledged (it may still be written): %w", ctx.Err())
	}
}

// Checkpoint signs a checkpoint over the current head now and waits until it is written.
func (l *Log) Checkpoint(ctx context.Context) error {
	ch := make(chan error, 1)
	if err := l.control(ctx, func() {
		l.manual = append(l.manual, ch)
		l.kick(false)
	}); err != nil {
		return err
	}
	return l.wait(ctx, ch)
}

// ApplyRetention removes the segments Options.Retention allows now (writing a signed audit.pruned
// record first) and waits until that is done. The writer also does this by itself after it starts a new
// segment and once a minute.
func (l *Log) ApplyRetention(ctx context.Context) error {
	for {
		ch := make(chan error, 1)
		idle := false
		if err := l.control(ctx, func() {
			l.planRetention()
			if l.prune == nil {
				idle = true
				ch <- nil
				return
			}
			l.prune.waiters = append(l.prune.waiters, ch)
			l.kick(false)
		}); err != nil {
			return err
		}
		if err := l.wait(ctx, ch); err != nil || idle {
			return err
		}
	}
}

// Head returns the seq and hash of the last durable record (for VerifyRunning: the daemon reports it
// over the control socket).
func (l *Log) Head(ctx context.Context) (Head, error) {
	ch := make(chan Head, 1)
	if err := l.control(ctx, func() { ch <- Head{Seq: l.seq, Hash: b64.EncodeToString(l.head[:])} }); err != nil {
		return Head{}, err
	}
	select {
	case h := <-ch:
		return h, nil
	case <-ctx.Done():
		return Head{}, ctx.Err()
	case <-l.done:
		select {
		case h := <-ch:
			return h, nil
		default:
			return Head{}, ErrClosed
		}
	}
}

func (l *Log) control(ctx context.Context, fn func()) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.ctl <- fn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Log) wait(ctx context.Context, ch chan error) error {
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-l.done:
		select {
		case err := <-ch:
			return err
		default:
			return ErrClosed
		}
	}
}

// Close stops accepting records, writes what is queued, signs a closing checkpoint over the final head
// (the seal), and releases the directory. The error says whether the seal was written.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return ErrClosed
	}
	l.closed = true
	close(l.reqs)
	l.mu.Unlock()
	<-l.done
	return l.closeErr
}

func (l *Log) failure() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.failed
}

// fail puts the log in the failed state (a write or fsync failed): Append refuses records until the
// writer recovers (tryRecover). A failure while already failed (a recovery attempt) only updates the
// error Health reports.
func (l *Log) fail(err error) error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	l.health.Error = err.Error()
	if l.failed == nil {
		cause := FailureCause(err)
		l.failed = fmt.Errorf("%w (%s): %v; records are refused until writing works again (the writer retries by itself)", ErrFailed, cause, err)
		l.health = Health{Since: l.opts.Now().UTC(), Cause: cause, Error: err.Error()}
		l.lg.Error("audit log write failed; records are refused until writing works again", "cause", cause, "err", err)
		l.obs.AuditWriteFailed(err)
		l.obs.AuditFailing(true)
	}
	return l.failed
}

// lost counts n records refused because the log could not write.
func (l *Log) lost(n int) {
	l.errMu.Lock()
	l.health.RecordsLost += uint64(n)
	l.errMu.Unlock()
	for range n {
		l.obs.AuditRecordLost()
	}
}

// Health is the log's write state, for the agent's status and its refusal of new work.
type Health struct {
	// Writing is true while records are written; false after a write or fsync failed, until the writer
	// has re-synced its segment and written again.
	Writing bool `json:"writing"`
	// Since is when the failure began; Cause is CauseDiskFull or CauseIOError; Error the latest error
	// (of the failed write, then of each attempt to write again).
	Since time.Time `json:"since,omitzero"`
	Cause string    `json:"cause,omitempty"`
	Error string    `json:"error,omitempty"`
	// RecordsLost counts records refused (never acknowledged to their caller) since the failure began;
	// Attempts the attempts to write again.
	RecordsLost uint64 `json:"records_lost,omitempty"`
	Attempts    int    `json:"attempts,omitempty"`
}

// Causes of a write failure (Health.Cause, and the audit.recovered record written after one).
const (
	CauseDiskFull = "disk_full" // ENOSPC or EDQUOT: no space (or quota) left on the file system
	CauseIOError  = "io_error"  // any other error of a write, fsync, or re-opening the segment
	// CauseCrash is the cause in the audit.recovered record Open writes for a log not closed cleanly.
	CauseCrash = "crash"
)

// FailureCause classifies a write error: CauseDiskFull for no space or quota, else CauseIOError.
func FailureCause(err error) string {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return CauseDiskFull
	}
	return CauseIOError
}

// Health returns the log's write state.
func (l *Log) Health() Health {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	h := l.health
	h.Writing = l.failed == nil
	return h
}

// run is the writer goroutine: group commit, checkpoints, segment rotation, retention.
func (l *Log) run() {
	defer close(l.done)
	tick := max(l.opts.CheckpointInterval/4, 10*time.Millisecond)
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	l.kick(false)
	// After a failed write the writer tries again with backoff (tryRecover) until it writes.
	var retry *time.Timer
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		if retryC == nil && l.failure() != nil {
			retry = time.NewTimer(l.opts.Retry.Delay(l.Health().Attempts))
			retryC = retry.C
		}
		select {
		case <-retryC:
			retryC = nil
			if l.tryRecover() {
				l.kick(false)
			}
		case req, ok := <-l.reqs:
			if !ok {
				l.shutdown()
				return
			}
			l.commitRequests(l.collect(req))
			l.kick(false)
		case res := <-l.signRes:
			l.finishSign(res)
			l.kick(false)
		case fn := <-l.ctl:
			fn()
		case <-ticker.C:
			if l.opts.Now().Sub(l.lastRet) >= time.Minute {
				l.lastRet = l.opts.Now()
				l.planRetention()
			}
			l.kick(true)
		}
	}
}

// collect takes first and whatever else is already queued, up to MaxBatch.
func (l *Log) collect(first *request) []*request {
	batch := []*request{first}
	for len(batch) < l.opts.MaxBatch {
		select {
		case r, ok := <-l.reqs:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// commitRequests writes a batch with one write and one fsync, then acknowledges every record in it.
func (l *Log) commitRequests(batch []*request) {
	ps := make([]*pending, len(batch))
	for i, r := range batch {
		ps[i] = r.p
	}
	seqs, errs, err := l.commit(ps)
	if err != nil {
		l.lost(len(batch))
	}
	now := time.Now()
	n := 0
	for i, r := range batch {
		switch {
		case errs[i] != nil:
			r.err = errs[i]
		case err != nil:
			r.err = err
		default:
			r.seq = seqs[i]
			n++
			l.obs.AuditAckLatency(now.Sub(r.start))
		}
		close(r.done)
	}
	if n > 0 {
		l.obs.AuditRecordsWritten(n)
	}
}

// commit chains, encodes, writes and fsyncs records. errs holds per-record errors (none today: records
// are checked before they are queued); err is a write failure, which fails the log.
func (l *Log) commit(ps []*pending) (seqs []uint64, errs []error, err error) {
	seqs = make([]uint64, len(ps))
	errs = make([]error, len(ps))
	if err := l.failure(); err != nil && !l.recovering {
		return seqs, errs, err
	}
	if err := l.maybeRotate(); err != nil {
		return seqs, errs, l.fail(err)
	}
	now := l.opts.Now().UTC()
	stamp := now.Format(timeFormat)
	seq, head, lastData := l.seq, l.head, l.lastData
	lastTime := l.segs[len(l.segs)-1].lastTime
	firstPrev, started := "", false
	buf := l.buf[:0]
	var prevBuf [43]byte
	for i, p := range ps {
		prev := ""
		if seq > 0 {
			b64.Encode(prevBuf[:], head[:])
			prev = string(prevBuf[:])
		}
		if p.seal != nil {
			q, err := p.seal.finish(seq + 1)
			if err != nil {
				errs[i] = err // checked when the record was planned: not expected
				continue
			}
			q.t = p.t
			p = q
		}
		if !started {
			firstPrev, started = prev, true
		}
		t := p.time
		if t == "" {
			t = stamp
			if now.After(lastTime) {
				lastTime = now
			}
		} else if p.t.After(lastTime) {
			lastTime = p.t
		}
		buf, head = p.appendLine(buf, seq+1, t, prev)
		seq++
		seqs[i] = seq
		if !p.cp {
			lastData = seq
		}
	}
	l.buf = buf[:0]
	active := &l.segs[len(l.segs)-1]
	if _, err := l.f.Write(buf); err != nil {
		if terr := l.f.Truncate(active.size); terr != nil {
			l.lg.Error("audit: cannot cut a partial write", "err", terr)
		}
		return seqs, errs, l.fail(fmt.Errorf("write %s: %w", active.name, err))
	}
	if err := l.f.Sync(); err != nil {
		return seqs, errs, l.fail(fmt.Errorf("fsync %s: %w", active.name, err))
	}
	if l.lastData <= l.covered && lastData > l.covered {
		l.uncovSince = now
	}
	l.seq, l.head, l.lastData = seq, head, lastData
	if active.size == 0 {
		active.firstPrev = firstPrev
	}
	active.size += int64(len(buf))
	active.last = seq
	active.lastHash = head
	active.lastTime = lastTime
	return seqs, errs, nil
}

// commitInternal writes records the log makes about itself.
func (l *Log) commitInternal(ws ...*wire) error {
	ps := make([]*pending, len(ws))
	for i, w := range ws {
		p, err := newPending(w)
		if err != nil {
			return err
		}
		ps[i] = p
	}
	_, _, err := l.commit(ps)
	if err != nil {
		return err
	}
	l.obs.AuditRecordsWritten(len(ws))
	return nil
}

func internalWire(t EventType, outcome Outcome, subject string, details map[string]any) *wire {
	w, err := prepare(&Record{Type: t, Outcome: outcome, Actor: "audit", Subject: subject, Details: details}, RedactSecrets, true, nil)
	if err != nil {
		panic("audit: internal record: " + err.Error()) // fixed types and plain details: cannot fail
	}
	return w
}

// maybeRotate starts a new segment when the active one is full or old.
func (l *Log) maybeRotate() error {
	active := &l.segs[len(l.segs)-1]
	if active.size == 0 {
		return nil
	}
	if active.size < l.opts.SegmentMaxBytes && l.opts.Now().Sub(active.created) < l.opts.SegmentMaxAge {
		return nil
	}
	name := segmentName(l.seq + 1)
	f, err := os.OpenFile(filepath.Join(l.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start segment %s: %w", name, err)
	}
	if err := atomicfile.SyncDir(l.dir); err != nil {
		f.Close()
		return fmt.Errorf("sync audit directory: %w", err)
	}
	if err := l.f.Close(); err != nil {
		l.lg.Warn("audit: closing the previous segment", "err", err)
	}
	l.f = l.wrap(f)
	l.segs = append(l.segs, segMeta{name: name, first: l.seq + 1, created: l.opts.Now()})
	l.planRetention()
	return nil
}

// kick starts a signature when one is due and none is in flight: a pending retention first, then a
// checkpoint when CheckpointEvery records (or, on a tick, records older than CheckpointInterval) are
// not yet covered.
func (l *Log) kick(tick bool) {
	if err := l.failure(); err != nil {
		// Nothing more is written: tell whoever waits for a signature.
		for _, w := range l.manual {
			w <- err
		}
		l.manual = nil
		if l.prune != nil {
			for _, w := range l.prune.waiters {
				w <- err
			}
			l.prune.waiters = nil
		}
		return
	}
	if l.signing {
		return
	}
	if len(l.manual) > 0 {
		job := &signJob{reason: "manual", waiters: l.manual}
		l.manual = nil
		l.startSign(job)
		return
	}
	if l.opts.Now().Before(l.retryAfter) {
		return
	}
	if l.prune != nil {
		l.startSign(l.prune)
		return
	}
	if l.lastData <= l.covered {
		return
	}
	switch {
	case l.signNow != "":
		l.startSign(&signJob{reason: l.signNow})
		l.signNow = ""
	case l.lastData-l.covered >= uint64(l.opts.CheckpointEvery):
		l.startSign(&signJob{reason: "count"})
	case tick && l.opts.Now().Sub(l.uncovSince) >= l.opts.CheckpointInterval:
		l.startSign(&signJob{reason: "interval"})
	}
}

// startSign signs job in the background; the result comes back to run through signRes. A checkpoint
// job signs the current head; a retention job signs the last record it removes.
func (l *Log) startSign(job *signJob) {
	l.keyMu.Lock()
	job.signer, job.gen = l.signer, l.gen
	l.keyMu.Unlock()
	if job.segments == nil {
		job.headSeq, job.head = l.seq, l.head
	}
	l.signing = true
	b := cpBinding{typ: LogCheckpoint, reason: job.reason}
	switch {
	case job.segments != nil:
		b = cpBinding{typ: LogPruned, reason: job.reason, first: job.segments[0].first, last: job.headSeq}
	case job.reason == sealReason:
		b.seq = job.headSeq + 1 // Close writes the seal right after the head it signs
	}
	msg := checkpointInput(l.opts.AgentID, job.gen, b, job.headSeq, job.head[:]).Message()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		sig, err := job.signer.Sign(ctx, msg)
		l.signRes <- signResult{job: job, sig: sig, err: err}
	}()
}

// finishSign writes the checkpoint (or retention) record for a finished signature.
func (l *Log) finishSign(res signResult) {
	l.signing = false
	job := res.job
	notify := func(err error) {
		for _, w := range job.waiters {
			w <- err
		}
	}
	if res.err != nil {
		l.obs.AuditCheckpointFailed(res.err)
		l.lg.Warn("audit checkpoint not signed; retrying later", "reason", job.reason, "err", res.err)
		// Keep the failure on record. It is itself uncovered, so the next tick retries.
		_ = l.commitInternal(internalWire(LogCheckpointFailed, OutcomeFailure, l.opts.AgentID,
			map[string]any{"reason": job.reason, "head_seq": job.headSeq, "error": res.err.Error()}))
		l.retryAfter = l.opts.Now().Add(l.opts.CheckpointInterval)
		notify(fmt.Errorf("sign audit checkpoint: %w", res.err))
		return
	}
	cp := &Checkpoint{
		Gen: job.gen, Kid: kid(job.signer.Public()), HeadSeq: job.headSeq,
		Head: b64.EncodeToString(job.head[:]), Sig: b64.EncodeToString(res.sig),
	}
	var w *wire
	if job.segments != nil {
		names := make([]any, len(job.segments))
		var total int64
		for i, s := range job.segments {
			names[i] = s.name
			total += s.size
		}
		w = internalWire(LogPruned, OutcomeInfo, l.opts.AgentID, map[string]any{
			"reason": job.reason, "segments": names, "first_seq": job.segments[0].first,
			"through_seq": job.headSeq, "bytes": total,
		})
	} else {
		w = internalWire(LogCheckpoint, OutcomeInfo, l.opts.AgentID, map[string]any{"reason": job.reason})
	}
	w.CP = cp
	if err := l.commitInternal(w); err != nil {
		notify(err)
		return
	}
	l.retryAfter = time.Time{}
	if job.segments == nil {
		l.covered = max(l.covered, job.headSeq)
		notify(nil)
		return
	}
	l.prune = nil
	l.retryAfter = time.Time{}
	err := l.removeSegments(job.segments)
	l.planRetention() // more may be due by now
	notify(err)
}

// removeSegments deletes segments a signed audit.pruned record now vouches for.
func (l *Log) removeSegments(segs []segMeta) error {
	var firstErr error
	for _, s := range segs {
		if err := os.Remove(filepath.Join(l.dir, s.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.lg.Error("audit retention: cannot remove segment", "segment", s.name, "err", err)
			firstErr = cmpErr(firstErr, err)
		}
	}
	if err := atomicfile.SyncDir(l.dir); err != nil {
		firstErr = cmpErr(firstErr, err)
	}
	n := 0
	for n < len(l.segs)-1 && n < len(segs) && l.segs[n].name == segs[n].name {
		n++
	}
	l.segs = l.segs[n:]
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// planRetention picks the oldest segments Retention lets go (never the active one) and queues their
// removal behind a signature over their last record.
func (l *Log) planRetention() {
	r := l.opts.Retention
	if l.prune != nil || (r.MaxAge <= 0 && r.MaxBytes <= 0) || len(l.segs) < 2 {
		return
	}
	var total int64
	for _, s := range l.segs {
		total += s.size
	}
	now := l.opts.Now()
	n := 0
	reason := ""
	for n < len(l.segs)-1 {
		s := l.segs[n]
		switch {
		case r.MaxAge > 0 && now.Sub(s.lastTime) > r.MaxAge:
			reason = "age"
		case r.MaxBytes > 0 && total > r.MaxBytes:
			reason = "size"
		default:
			goto done
		}
		total -= s.size
		n++
	}
done:
	if n == 0 {
		return
	}
	next := l.segs[n]
	if next.size == 0 {
		// The next segment has no record yet: its first record's prev is the current head.
		next.firstPrev = b64.EncodeToString(l.head[:])
	}
	headBytes, err := b64.DecodeString(next.firstPrev)
	if err != nil || len(headBytes) != 32 {
		l.lg.Error("audit retention: cannot anchor the remaining chain", "segment", next.name)
		return
	}
	job := &signJob{reason: reason, headSeq: next.first - 1, segments: append([]segMeta(nil), l.segs[:n]...)}
	copy(job.head[:], headBytes)
	l.prune = job
}

// shutdown runs when Close closed the request channel: finish a signature in flight, seal, release.
func (l *Log) shutdown() {
	if l.signing {
		l.finishSign(<-l.signRes)
	}
	if l.prune != nil {
		for _, w := range l.prune.waiters {
			w <- ErrClosed
		}
		l.prune = nil
	}
	if l.failure() != nil {
		l.tryRecover() // one last attempt, so that the seal can be written
	}
	if err := l.failure(); err != nil {
		l.closeErr = err
	} else {
		l.closeErr = l.seal()
	}
	for _, w := range l.manual {
		w <- l.closeErr
	}
	l.manual = nil
	if err := l.f.Close(); err != nil && l.closeErr == nil {
		l.closeErr = err
	}
	l.lock.Close() // releases the flock
}

func (l *Log) wrap(f *os.File) segmentFile {
	if l.opts.wrapFile != nil {
		return l.opts.wrapFile(f)
	}
	return f
}

// tryRecover is one attempt to write again after a failure: re-sync the active segment with what was
// acknowledged (resync), then write an audit.recovered record saying what failed, since when and how
// many records were refused. Only when that record is durable does the log accept records again; it
// then signs a checkpoint at once. It reports whether the log writes again.
func (l *Log) tryRecover() bool {
	l.errMu.Lock()
	l.health.Attempts++
	h := l.health
	l.errMu.Unlock()
	if err := l.resync(); err != nil {
		l.fail(err)
		l.lg.Warn("audit log still cannot write; retrying", "attempt", h.Attempts, "err", err)
		return false
	}
	l.recovering = true
	werr := l.commitInternal(internalWire(LogRecovered, OutcomeFailure, l.opts.AgentID, map[string]any{
		"reason": "records could not be written (" + h.Cause + "); records were refused, none acknowledged was lost",
		"cause":  h.Cause, "error": h.Error, "failed_at": h.Since.Format(time.RFC3339Nano),
		"records_lost": h.RecordsLost, "attempts": h.Attempts, "last_seq": l.seq,
	}))
	l.recovering = false
	if werr != nil {
		l.lg.Warn("audit log still cannot write; retrying", "attempt", h.Attempts, "err", werr)
		return false
	}
	l.errMu.Lock()
	l.failed = nil
	l.health = Health{Writing: true}
	l.errMu.Unlock()
	l.obs.AuditFailing(false)
	l.signNow = "open"
	l.lg.Info("audit log writes again", "cause", h.Cause, "down_for", l.opts.Now().Sub(h.Since).Round(time.Millisecond),
		"records_lost", h.RecordsLost, "attempts", h.Attempts)
	return true
}

// resync brings the active segment back to exactly the records acknowledged so far, after a failed
// write or fsync: it opens the segment again (a new descriptor: after a failed fsync the old one's
// pages are not to be trusted), cuts whatever a failed write left past the last acknowledged record,
// fsyncs, checks that the last record on disk is the head the writer holds (seq and hash), and removes
// an empty segment a failed rotation left behind. The chain then continues from the same head: no gap.
func (l *Log) resync() error {
	active := l.segs[len(l.segs)-1]
	path := filepath.Join(l.dir, active.name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("re-open %s: %w", active.name, err)
	}
	sf := l.wrap(f)
	ok := false
	defer func() {
		if !ok {
			sf.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("re-open %s: %w", active.name, err)
	}
	switch {
	case fi.Size() < active.size:
		return fmt.Errorf("%w: segment %s is %d bytes, shorter than its acknowledged records (%d bytes): "+
			"restart the agent and run agentctl audit verify", ErrBrokenChain, active.name, fi.Size(), active.size)
	case fi.Size() > active.size:
		if err := sf.Truncate(active.size); err != nil {
			return fmt.Errorf("cut the unacknowledged tail of %s: %w", active.name, err)
		}
	}
	if err := sf.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", active.name, err)
	}
	if active.size > 0 {
		last, _, err := readLastLine(f, active.size)
		if err != nil {
			return fmt.Errorf("re-read %s: %w", active.name, err)
		}
		w, d, err := decodeLine(last)
		if err != nil || w.Seq != l.seq || d != l.head {
			return fmt.Errorf("%w: the last record of %s is not the acknowledged head seq %d: restart the agent and run agentctl audit verify",
				ErrBrokenChain, active.name, l.seq)
		}
	}
	if next := segmentName(l.seq + 1); next != active.name {
		p := filepath.Join(l.dir, next)
		if fi, err := os.Stat(p); err == nil {
			if fi.Size() != 0 {
				return fmt.Errorf("%w: segment %s holds records the writer never acknowledged: restart the agent and run agentctl audit verify", ErrBrokenChain, next)
			}
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("remove the empty segment %s a failed rotation left: %w", next, err)
			}
		}
	}
	if err := atomicfile.SyncDir(l.dir); err != nil {
		return fmt.Errorf("sync audit directory: %w", err)
	}
	if l.f != nil {
		_ = l.f.Close() // its error is the failure's, already reported
	}
	l.f = sf
	ok = true
	return nil
}

// seal signs the final head synchronously and writes the closing checkpoint.
func (l *Log) seal() error {
	job := &signJob{reason: sealReason}
	ch := make(chan error, 1)
	job.waiters = []chan error{ch}
	l.startSign(job)
	l.finishSign(<-l.signRes)
	if err := <-ch; err != nil {
		return fmt.Errorf("seal the audit log: %w", err)
	}
	return nil
}

func kid(p keystore.PublicKey) string {
	d := p.Digest()
	return b64.EncodeToString(d[:])
}

// load reads the existing segments (or creates the first), repairs a torn tail, and positions the
// writer at the end. It writes audit.created, audit.repaired or audit.recovered as needed.
func (l *Log) load() error {
	files, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		name := segmentName(1)
		f, err := os.OpenFile(filepath.Join(l.dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("create first segment: %w", err)
		}
		if err := atomicfile.SyncDir(l.dir); err != nil {
			f.Close()
			return err
		}
		l.f = l.wrap(f)
		l.segs = []segMeta{{name: name, first: 1, created: l.opts.Now()}}
		return l.created()
	}
	// Every segment but the last: its first and last record, checked for form and continuity.
	for _, sf := range files[:len(files)-1] {
		m, err := l.loadClosedSegment(sf)
		if err != nil {
			return err
		}
		if n := len(l.segs); n > 0 && m.first != l.segs[n-1].last+1 {
			return fmt.Errorf("%w: segment %s starts at seq %d but the one before ends at %d (run agentctl audit verify)",
				ErrBrokenChain, sf.name, m.first, l.segs[n-1].last)
		}
		l.segs = append(l.segs, m)
		l.seq, l.head = m.last, m.lastHash
	}
	return l.loadActive(files[len(files)-1])
}

func (l *Log) created() error {
	l.signNow = "open"
	return l.commitInternal(internalWire(LogCreated, OutcomeInfo, l.opts.AgentID, map[string]any{"agent_id": l.opts.AgentID}))
}

func (l *Log) loadClosedSegment(sf segFile) (segMeta, error) {
	path := filepath.Join(l.dir, sf.name)
	f, err := os.Open(path)
	if err != nil {
		return segMeta{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return segMeta{}, err
	}
	if fi.Mode().Perm() != 0o600 {
		_ = os.Chmod(path, 0o600)
	}
	lr := newLineReader(f)
	line, complete, err := lr.read()
	if err != nil || !complete {
		return segMeta{}, fmt.Errorf("%w: segment %s (not the last) is empty or cut short (run agentctl audit verify)", ErrTorn, sf.name)
	}
	w, _, err := decodeLine(line)
	if err != nil {
		return segMeta{}, fmt.Errorf("segment %s line 1: %w", sf.name, err)
	}
	if w.Seq != sf.first {
		return segMeta{}, fmt.Errorf("%w: segment %s starts with seq %d", ErrBrokenChain, sf.name, w.Seq)
	}
	m := segMeta{name: sf.name, first: sf.first, firstPrev: w.Prev, size: fi.Size(), created: fi.ModTime()}
	last, _, err := readLastLine(f, fi.Size())
	if err != nil {
		return segMeta{}, fmt.Errorf("segment %s: %w (run agentctl audit verify)", sf.name, err)
	}
	lw, d, err := decodeLine(last)
	if err != nil {
		return segMeta{}, fmt.Errorf("segment %s last line: %w", sf.name, err)
	}
	m.last, m.lastHash = lw.Seq, d
	m.lastTime, _ = time.Parse(timeFormat, lw.Time)
	if lw.CP == nil {
		l.lastData = lw.Seq
	}
	return m, nil
}

// loadActive scans the last segment in full, cuts off a torn tail, and positions the writer at its end.
func (l *Log) loadActive(sf segFile) error {
	path := filepath.Join(l.dir, sf.name)
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	l.f = l.wrap(f)
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o600 {
		_ = f.Chmod(0o600)
	}
	m := segMeta{name: sf.name, first: sf.first, created: fi.ModTime()}
	if len(l.segs) > 0 && sf.first != l.seq+1 {
		return fmt.Errorf("%w: segment %s does not follow seq %d (run agentctl audit verify)", ErrBrokenChain, sf.name, l.seq)
	}
	if len(l.segs) == 0 && sf.first != 1 {
		// After retention the first remaining segment is the active one: take its first record as given
		// (Verify checks the signed anchor).
		l.seq = sf.first - 1
	}
	var (
		good    int64 // offset after the last good record
		lastW   *wire
		badLine int
		bad     error
	)
	lr := newLineReader(f)
	for {
		line, complete, err := lr.read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil && !complete {
			err = fmt.Errorf("%w: the last line has no newline", ErrTorn)
		}
		var w *wire
		var d [32]byte
		if err == nil {
			w, d, err = decodeLine(line)
		}
		if err == nil && w.Seq != l.seq+1 {
			err = fmt.Errorf("%w: expected seq %d, found %d", ErrBrokenChain, l.seq+1, w.Seq)
		}
		if err == nil && l.seq > 0 && (lastW != nil || len(l.segs) > 0) && w.Prev != b64.EncodeToString(l.head[:]) {
			err = fmt.Errorf("%w: prev does not match the hash of seq %d", ErrBrokenChain, l.seq)
		}
		if err != nil {
			badLine, bad = lr.line, err
			break
		}
		if lastW == nil {
			m.firstPrev = w.Prev
			if t, err := time.Parse(timeFormat, w.Time); err == nil {
				m.created = t // the segment's age counts from its first record
			}
		}
		lastW, good = w, lr.next
		l.seq, l.head = w.Seq, d
		if w.CP == nil {
			l.lastData = w.Seq
		}
		if t, err := time.Parse(timeFormat, w.Time); err == nil {
			m.lastTime = t
		}
	}
	m.last, m.lastHash = l.seq, l.head
	m.size = fi.Size()
	var repaired map[string]any
	if bad != nil {
		// Only a tail with no complete record after the damage is a torn write; anything else is
		// damage that must not be destroyed.
		rest := make([]byte, fi.Size()-good)
		if _, err := f.ReadAt(rest, good); err != nil {
			return err
		}
		if completeRecordIn(rest) {
			return fmt.Errorf("segment %s line %d: %w; this is not a torn tail, so it is not repaired: "+
				"run agentctl audit verify, and move %s aside to start a new log", sf.name, badLine, bad, l.dir)
		}
		sum := sha256.Sum256(rest)
		if err := f.Truncate(good); err != nil {
			return fmt.Errorf("cut the torn tail of %s: %w", sf.name, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		l.lg.Warn("audit: cut a torn record off the end of the log", "segment", sf.name, "line", badLine,
			"offset", good, "bytes", len(rest), "reason", bad)
		repaired = map[string]any{
			"segment": sf.name, "line": badLine, "offset": good, "removed_bytes": len(rest),
			"removed_sha256": b64.EncodeToString(sum[:]), "last_seq": l.seq, "error": bad.Error(),
		}
		m.size = good
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		return err
	}
	l.segs = append(l.segs, m)
	if l.seq == 0 {
		return l.created() // the first segment was created and nothing reached it
	}
	if lastW == nil && len(l.segs) == 1 {
		return fmt.Errorf("%w: the only segment %s is empty but does not start the log (run agentctl audit verify)", ErrBrokenChain, sf.name)
	}
	switch {
	case repaired != nil:
		l.signNow = "open"
		return l.commitInternal(internalWire(LogRepaired, OutcomeFailure, l.opts.AgentID, repaired))
	case lastW == nil || !isSeal(lastW):
		last := "none"
		if lastW != nil {
			last = lastW.Type
		}
		l.signNow = "open"
		return l.commitInternal(internalWire(LogRecovered, OutcomeFailure, l.opts.AgentID, map[string]any{
			"reason": "the log was not closed cleanly (crash or power loss)", "cause": CauseCrash, "last_seq": l.seq, "last_type": last,
		}))
	default:
		l.covered = lastW.CP.HeadSeq
		return nil
	}
}

// sealReason is the reason of the closing checkpoint Close writes.
const sealReason = "close"

// isSeal reports whether a record is the closing checkpoint Close writes.
func isSeal(w *wire) bool {
	return w.CP != nil && EventType(w.Type) == LogCheckpoint && string(w.Details) == `{"reason":"`+sealReason+`"}`
}

// completeRecordIn reports whether b (the bytes after the last good record) holds a complete line that
// decodes as a record.
func completeRecordIn(b []byte) bool {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return false
		}
		if _, _, err := decodeLine(b[:i]); err == nil {
			return true
		}
		b = b[i+1:]
	}
	return false
}
