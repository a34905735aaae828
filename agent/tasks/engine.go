package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/identity"
)

// Defaults of Config.
const (
	DefaultMaxConcurrent = 4
	DefaultMaxQueued     = 256
	DefaultRetryInterval = 5 * time.Second
	DefaultRetention     = 24 * time.Hour
	// DefaultMaxUnacknowledged bounds one requester's stored inbound tasks (Config.MaxUnacknowledged).
	DefaultMaxUnacknowledged = 64
	// DefaultInboundRetention is how long an unacknowledged result is kept (Config.InboundRetention).
	DefaultInboundRetention = time.Hour
	sendTimeout             = 10 * time.Second

	// DefaultTimeout is how long a submitted task may go without a result (Config.Timeout).
	DefaultTimeout = 10 * time.Minute
)

// ErrNoSession: the peer has no live session now (the message is retried when it has one).
var ErrNoSession = errors.New("no session with the peer")

// Sender sends a message to a peer over its live session. It returns an error wrapping ErrNoSession when
// there is none.
type Sender interface {
	Send(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error
}

// KeySource gives the local agent's current delegation (delegation.Manager).
type KeySource interface {
	Current(ctx context.Context) (*delegation.Keys, error)
}

// LogSource gives a peer's cached, verified key event log (peers.Cache).
type LogSource interface {
	Log(id string) (identity.Log, identity.State, bool, error)
}

// Event reports what the engine did, for the audit log and metrics.
type Event struct {
	// Kind: "submitted", "accepted", "refused", "started", "finished", "interrupted", "result",
	// "result_invalid", "failed", "timed_out" (no result within Config.Timeout), "cancelled".
	Kind    string
	TaskID  string
	Peer    string // the requester (inbound) or the executor (outbound)
	Handler string
	Status  string // result status ("ok", "failed") or error code
	Err     error
	// Served is what the executor contributed to a "result" (resource contribution, ADR 0090).
	Served *Served
	// OnBehalfOf is the task's attribution (Request.OnBehalfOf, ADR 0100), when it has one.
	OnBehalfOf string
}

// Served is the resources an executor spent on one task this agent submitted: the seconds it ran (the
// signed result's started..finished, never more than this agent waited for it) and the bytes of its
// input and output.
type Served struct {
	Seconds float64
	Bytes   int64
}

// Config configures an Engine. LocalID, Store, Keys, Peers and Sender are required.
type Config struct {
	LocalID string
	Store   *Store
	// Handlers are the local handlers (see SetHandlers to replace them).
	Handlers Registry
	Keys     KeySource
	Peers    LogSource
	Sender   Sender
	// Admit, when set, decides whether a verified peer's task request is accepted (the policy hook: RBAC,
	// quotas). A non-nil error refuses it with an error_response of code "denied".
	Admit func(ctx context.Context, peer string, req *Request) error
	// MaxConcurrent bounds handlers running at once (default 4).
	MaxConcurrent int
	// MaxQueued bounds accepted, unfinished inbound tasks (default 256); beyond it requests get "busy".
	MaxQueued int
	// RetryInterval is how often unacknowledged requests and unacknowledged results are sent again
	// (default 5 s).
	RetryInterval time.Duration
	// Retention is how long a fetched outbound result is kept (default 24 h).
	Retention time.Duration
	// MaxUnacknowledged bounds one requester's inbound tasks, unfinished or finished but not yet
	// acknowledged (result_received), default 64; beyond it its requests get "busy".
	MaxUnacknowledged int
	// InboundRetention is how long a finished inbound task (input and signed result) is kept for its
	// requester to acknowledge (default 1 h); after that it is deleted unacknowledged.
	InboundRetention time.Duration
	Clock            func() time.Time
	Logger           *slog.Logger
	OnEvent          func(Event)

	// Timeout is how long a submitted task may go without a result before it fails with CodeTimeout
	// (default 10 min); the executor it was sent to is then charged with a failure.
	Timeout time.Duration
}

// Engine runs the task protocol (DESIGN 4.3) on both sides: it accepts, records, runs and answers tasks
// from peers, and submits tasks to peers, retrying until a verified result is stored. Delivery is at least
// once: every accepted task is recorded (fsync) before it is acknowledged, a restart resumes unfinished
// tasks, and task IDs make retries idempotent (a repeated request gets the stored result).
type Engine struct {
	cfg   Config
	store *Store

	mu       sync.Mutex
	handlers Registry
	active   map[string]bool          // inbound keys scheduled or running in this process
	waiters  map[string]chan struct{} // closed when that outbound task changes (Wait)
	// acking: outbound tasks whose result is being stored and acknowledged (onResult); Wait does not
	// return them done before the acknowledgement is sent (holdWaiters).
	acking map[string]bool
	// evidence remembers the executors' key event logs and delegations that verified (onResult).
	evidence envelope.EvidenceCache
	draining bool
	closed   bool // no more background sends

	sem       chan struct{}
	runCtx    context.Context
	runCancel context.CancelFunc
	wg        sync.WaitGroup // handler goroutines
	bg        sync.WaitGroup // retry loop and sends
	stop      chan struct{}
	stopOnce  sync.Once
}

// New makes an engine. Call Start to resume stored tasks.
func New(cfg Config) (*Engine, error) {
	if cfg.LocalID == "" || cfg.Store == nil || cfg.Keys == nil || cfg.Peers == nil || cfg.Sender == nil {
		return nil, errors.New("tasks: LocalID, Store, Keys, Peers and Sender are required")
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = DefaultMaxQueued
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.MaxUnacknowledged <= 0 {
		cfg.MaxUnacknowledged = DefaultMaxUnacknowledged
	}
	if cfg.InboundRetention <= 0 {
		cfg.InboundRetention = DefaultInboundRetention
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for n := range cfg.Handlers {
		if !ValidHandlerName(n) {
			return nil, fmt.Errorf("tasks: handler name %q (want 1-32 of a-z 0-9 _ -, starting with a letter)", n)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{
		cfg: cfg, store: cfg.Store, handlers: cfg.Handlers, active: map[string]bool{}, waiters: map[string]chan struct{}{}, acking: map[string]bool{},
		sem: make(chan struct{}, cfg.MaxConcurrent), runCtx: ctx, runCancel: cancel, stop: make(chan struct{}),
	}, nil
}

// Start resumes inbound tasks that were accepted but not finished (a restart mid-task) and starts the
// retry loop.
func (e *Engine) Start() error {
	ins, err := e.store.ListInbound()
	if err != nil {
		return err
	}
	for _, in := range ins {
		if in.State != InDone {
			e.cfg.Logger.Info("resuming a task accepted before the restart", "task", in.TaskID, "from", in.Requester, "handler", in.Handler, "runs", in.Runs)
			e.schedule(in)
		}
	}
	e.bg.Add(1)
	go e.retryLoop()
	return nil
}

// SetHandlers replaces the handler registry (configuration reload). Tasks already running keep their
// handler; queued tasks use the new registry.
func (e *Engine) SetHandlers(r Registry) error {
	for n := range r {
		if !ValidHandlerName(n) {
			return fmt.Errorf("tasks: handler name %q", n)
		}
	}
	e.mu.Lock()
	e.handlers = r
	e.mu.Unlock()
	return nil
}

// Handlers returns the names of the current handlers, sorted.
func (e *Engine) Handlers() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.handlers.Names()
	sort.Strings(n)
	return n
}

func (e *Engine) handler(name string) Handler {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handlers[name]
}

func (e *Engine) event(ev Event) {
	if e.cfg.OnEvent != nil {
		e.cfg.OnEvent(ev)
	}
}

// changed wakes the Waits of outbound task id. (One channel per waited-for task: waking every waiter on
// every change made each of them decode its whole record, input included, per change of any task.) It
// comes after the event of the change, so that a Wait that returns a final task has its event reported.
// Callers wake waiters last.
func (e *Engine) changed(id string) {
	e.mu.Lock()
	if ch, ok := e.waiters[id]; ok {
		close(ch)
		delete(e.waiters, id)
	}
	e.mu.Unlock()
}

// holdWaiters keeps Wait from returning outbound task id done until releaseWaiters, and reports false
// when it is held already (its result is being stored). A result is stored (and visible to a Wait reading
// the store) before its acknowledgement is sent, and a submitter whose Wait returns sends its next task
// at once. That request must not overtake the acknowledgement on the session, or the executor still
// counts the task against its MaxUnacknowledged and refuses the next one busy (retried only after
// RetryInterval: the ~2 min stalls of BenchmarkTasks with 64 workers).
func (e *Engine) holdWaiters(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.acking[id] {
		return false
	}
	e.acking[id] = true
	return true
}

// releaseWaiters ends a holdWaiters and wakes the Waits of id.
func (e *Engine) releaseWaiters(id string) {
	e.mu.Lock()
	delete(e.acking, id)
	e.mu.Unlock()
	e.changed(id)
}

func (e *Engine) send(peer string, t envelope.MessageType, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	return e.cfg.Sender.Send(ctx, peer, t, payload)
}

// Handle processes one verified, decrypted message from peer (the session already checked its sender,
// signature, counter and replay). Heartbeat and feedback are not task messages and are ignored here.
func (e *Engine) Handle(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	switch t {
	case envelope.TaskRequest:
		return e.onRequest(ctx, peer, payload)
	case envelope.TaskResponse:
		return e.onResponse(peer, payload)
	case envelope.TaskProgress:
		return e.onProgress(peer, payload)
	case envelope.TaskResult:
		return e.onResult(peer, payload)
	case envelope.ErrorResponse:
		return e.onError(peer, payload)
	}
	return nil
}

// ---- executor side ----

func (e *Engine) refuse(peer, id, code, msg string) error {
	e.event(Event{Kind: "refused", TaskID: id, Peer: peer, Status: code, Err: errors.New(msg)})
	return e.send(peer, envelope.ErrorResponse, (&ErrorMessage{TaskID: id, Code: code, Message: msg}).Encode())
}

func (e *Engine) onRequest(ctx context.Context, peer string, payload []byte) error {
	req, err := DecodeRequest(payload)
	if err != nil {
		return err // no task ID to answer to
	}
	if cur, err := e.store.Inbound(peer, req.TaskID); err != nil {
		return err
	} else if cur != nil {
		return e.answerExisting(cur)
	}
	if e.handler(req.Handler) == nil {
		return e.refuse(peer, req.TaskID, CodeUnknownHandler, fmt.Sprintf("no handler %q here (handlers: %v)", req.Handler, e.Handlers()))
	}
	if e.cfg.Admit != nil {
		if err := e.cfg.Admit(ctx, peer, req); err != nil {
			return e.refuse(peer, req.TaskID, CodeDenied, err.Error())
		}
	}
	e.mu.Lock()
	draining, queued := e.draining, len(e.active)
	e.mu.Unlock()
	if draining {
		return e.refuse(peer, req.TaskID, CodeBusy, "the agent is shutting down; retry later")
	}
	if queued >= e.cfg.MaxQueued {
		return e.refuse(peer, req.TaskID, CodeBusy, fmt.Sprintf("%d tasks queued; retry later", queued))
	}
	// Finished tasks stay stored until their requester acknowledges the result: bound them per requester.
	if mine, err := e.store.CountInbound(peer); err != nil {
		return e.refuse(peer, req.TaskID, CodeInternal, "the task could not be recorded; retry later")
	} else if mine >= e.cfg.MaxUnacknowledged {
		return e.refuse(peer, req.TaskID, CodeBusy, fmt.Sprintf("%d of your tasks are unfinished or their results not acknowledged "+
			"(result_received); acknowledge results before sending more", mine))
	}
	rec := &Inbound{TaskID: req.TaskID, Requester: peer, Handler: req.Handler, Input: req.Input,
		InputSHA256: HexSHA256(req.Input), State: InAccepted, Accepted: e.cfg.Clock().UTC(), OnBehalfOf: req.OnBehalfOf}
	stored, created, err := e.store.Accept(rec) // fsynced before the acknowledgement below
	if err != nil {
		e.cfg.Logger.Error("task not recorded", "task", req.TaskID, "from", peer, "err", err)
		return e.refuse(peer, req.TaskID, CodeInternal, "the task could not be recorded; retry later")
	}
	if !created {
		return e.answerExisting(stored)
	}
	e.event(Event{Kind: "accepted", TaskID: rec.TaskID, Peer: peer, Handler: rec.Handler, OnBehalfOf: rec.OnBehalfOf})
	e.schedule(rec)
	return e.send(peer, envelope.TaskResponse, (&Response{TaskID: rec.TaskID, Status: StatusAccepted}).Encode())
}

// answerExisting answers a repeated request from the store: the result when there is one, else the
// acceptance again.
func (e *Engine) answerExisting(in *Inbound) error {
	if in.State == InDone {
		return e.pushResult(in)
	}
	return e.send(in.Requester, envelope.TaskResponse, (&Response{TaskID: in.TaskID, Status: StatusAccepted}).Encode())
}

func (e *Engine) pushResult(in *Inbound) error {
	msg := &ResultMessage{TaskID: in.TaskID, Evidence: in.Evidence, Delegation: in.Delegation}
	if err := e.send(in.Requester, envelope.TaskResult, msg.Encode()); err != nil {
		return err
	}
	// When it was sent paces the resends (flushPeer); a crash that loses it only resends sooner.
	now := e.cfg.Clock().UTC()
	e.store.UpdateInboundLater(in.Requester, in.TaskID, func(r *Inbound) bool { r.Pushed = now; return true })
	return nil
}

func (e *Engine) schedule(in *Inbound) {
	k := string(inKey(in.Requester, in.TaskID))
	e.mu.Lock()
	if e.active[k] || e.draining {
		e.mu.Unlock()
		return
	}
	e.active[k] = true
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.active, k)
			e.mu.Unlock()
		}()
		select {
		case e.sem <- struct{}{}:
		case <-e.runCtx.Done():
			return
		}
		defer func() { <-e.sem }()
		e.run(in.Requester, in.TaskID)
	}()
}

func (e *Engine) run(requester, id string) {
	log := e.cfg.Logger.With("task", id, "from", requester)
	now := e.cfg.Clock().UTC()
	in, err := e.store.Inbound(requester, id)
	if err != nil || in == nil {
		if err != nil {
			log.Error("task store", "err", err)
		}
		return
	}
	if in.State == InDone {
		return
	}
	// Running, deferred: a crash before it is committed finds the task accepted, and runs it again either
	// way (the result below is what must be on disk before it is sent).
	e.store.UpdateInboundLater(requester, id, func(r *Inbound) bool {
		if r.State == InDone {
			return false
		}
		r.State, r.Started, r.Runs = InRunning, now, r.Runs+1
		return true
	})
	e.event(Event{Kind: "started", TaskID: id, Peer: requester, Handler: in.Handler, OnBehalfOf: in.OnBehalfOf})
	_ = e.send(requester, envelope.TaskProgress, (&Progress{TaskID: id, State: "running"}).Encode())
	doc := &ResultDoc{TaskID: id, Requester: requester, Handler: in.Handler, InputSHA256: in.InputSHA256, Started: now.Unix()}
	h := e.handler(in.Handler)
	var out []byte
	if h == nil {
		err = fmt.Errorf("handler %q is no longer configured", in.Handler)
	} else {
		out, err = h.Run(e.runCtx, in.Input)
	}
	if e.runCtx.Err() != nil {
		// Shutting down: not a result. The record stays unfinished and runs again at the next start.
		log.Warn("task interrupted by shutdown; it runs again at the next start")
		e.event(Event{Kind: "interrupted", TaskID: id, Peer: requester, Handler: in.Handler})
		return
	}
	if err == nil && len(out) > MaxOutput {
		err = fmt.Errorf("output of %d bytes exceeds %d", len(out), MaxOutput)
	}
	if err != nil {
		doc.Status, doc.Error, out = ResultFailed, clipText(err.Error(), MaxErrorText), nil
	} else {
		doc.Status = ResultOK
	}
	doc.Output, doc.OutputSHA256 = out, HexSHA256(out)
	fin := e.cfg.Clock().UTC()
	doc.Finished = fin.Unix()
	keys, err := e.cfg.Keys.Current(e.runCtx)
	var evidence, deleg []byte
	if err == nil {
		evidence, deleg, err = SignResult(e.runCtx, e.cfg.LocalID, doc, keys, fin)
	}
	if err != nil {
		log.Error("task result not signed; the task runs again later", "err", err)
		return
	}
	in, err = e.store.UpdateInbound(requester, id, func(r *Inbound) error {
		r.State, r.Finished, r.Status, r.Evidence, r.Delegation = InDone, fin, doc.Status, evidence, deleg
		return nil
	})
	if err != nil {
		log.Error("task result not recorded; the task runs again later", "err", err)
		return
	}
	e.event(Event{Kind: "finished", TaskID: id, Peer: requester, Handler: in.Handler, Status: doc.Status, OnBehalfOf: in.OnBehalfOf})
	if err := e.pushResult(in); err != nil {
		log.Info("result not delivered now; it is sent when the requester reconnects", "err", err)
	}
}

func clipText(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ---- submitter side ----

// Submission is a task to submit (SubmitTask).
type Submission struct {
	To      string
	Handler string
	Input   []byte
	// OnBehalfOf attributes the task to a client of this agent (ADR 0100; ValidOnBehalfOf), "" for none.
	OnBehalfOf string
}

// Submit records a task for peer to and sends it as soon as a session with the peer exists. The record is
// on disk (fsync) when Submit returns.
func (e *Engine) Submit(ctx context.Context, to, handler string, input []byte) (*Outbound, error) {
	return e.SubmitTask(ctx, Submission{To: to, Handler: handler, Input: input})
}

// SubmitTask is Submit with an attribution: the request carries s.OnBehalfOf, signed with it.
func (e *Engine) SubmitTask(ctx context.Context, s Submission) (*Outbound, error) {
	to, handler, input := s.To, s.Handler, s.Input
	if !ValidOnBehalfOf(s.OnBehalfOf) {
		return nil, fmt.Errorf("on_behalf_of %q: want 1-%d of a-z 0-9 . _ -, starting with a letter or digit", clip(s.OnBehalfOf), MaxOnBehalfOf)
	}
	id, err := identity.ParseID(to)
	if err != nil {
		return nil, fmt.Errorf("recipient %q: %w", to, err)
	}
	to = id.String()
	if to == e.cfg.LocalID {
		return nil, fmt.Errorf("recipient %s is this agent; submit to a peer", to)
	}
	if !ValidHandlerName(handler) {
		return nil, fmt.Errorf("handler name %q: want 1-32 of a-z 0-9 _ -, starting with a letter", handler)
	}
	if len(input) > MaxInput {
		return nil, fmt.Errorf("input of %d bytes exceeds the limit of %d bytes", len(input), MaxInput)
	}
	now := e.cfg.Clock().UTC()
	o := &Outbound{TaskID: NewTaskID(), To: to, Handler: handler, Input: append([]byte{}, input...), InputSHA256: HexSHA256(input),
		State: OutPending, Submitted: now, Updated: now, OnBehalfOf: s.OnBehalfOf}
	if err := e.store.CreateOutbound(o); err != nil {
		return nil, err
	}
	e.event(Event{Kind: "submitted", TaskID: o.TaskID, Peer: to, Handler: handler, OnBehalfOf: s.OnBehalfOf})
	e.changed(o.TaskID)
	e.goSend(func() { e.sendRequest(o) })
	return o, nil
}

// goSend runs fn in a goroutine Close waits for; false (and fn not run) once the engine is closed.
func (e *Engine) goSend(fn func()) bool {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return false
	}
	e.bg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.bg.Done()
		fn()
	}()
	return true
}

var rank = map[string]int{OutPending: 0, OutSent: 1, OutAccepted: 2, OutRunning: 3, OutDone: 4, OutFailed: 4}

func (e *Engine) sendRequest(o *Outbound) {
	if o.Input == nil && o.InputSHA256 != HexSHA256(nil) { // listed without its input
		full, err := e.store.Outbound(o.TaskID)
		if err != nil {
			e.cfg.Logger.Warn("task store", "task", o.TaskID, "err", err)
			return
		}
		o = full
	}
	req := &Request{TaskID: o.TaskID, Handler: o.Handler, Input: o.Input, OnBehalfOf: o.OnBehalfOf}
	if err := e.send(o.To, envelope.TaskRequest, req.Encode()); err != nil {
		if !errors.Is(err, ErrNoSession) {
			e.cfg.Logger.Info("task request not sent; retrying later", "task", o.TaskID, "to", o.To, "err", err)
		}
		return
	}
	// Sent, deferred (Store): a crash that loses it sends the request again (task IDs make that
	// idempotent). Not a final state: Wait is not woken.
	now := e.cfg.Clock().UTC()
	e.store.UpdateOutboundLater(o.TaskID, func(r *Outbound) bool {
		if rank[r.State] < rank[OutSent] {
			r.State = OutSent
		}
		r.LastSent, r.Updated = now, now
		r.Attempts++
		return true
	})
}

// upgrade records that the executor accepted or started a task: deferred (Store), as a crash that loses
// it only shows the task as sent (and sends it again). Not a final state: Wait is not woken.
func (e *Engine) upgrade(peer, id, state string) error {
	now := e.cfg.Clock().UTC()
	e.store.UpdateOutboundLater(id, func(r *Outbound) bool {
		if r.To != peer {
			e.cfg.Logger.Warn("a task state from a peer the task did not go to: ignored", "peer", peer, "state", state, "task", id, "to", r.To)
			return false
		}
		if rank[r.State] >= rank[state] {
			return false
		}
		r.State, r.Updated = state, now
		return true
	})
	return nil
}

func (e *Engine) onResponse(peer string, payload []byte) error {
	r, err := DecodeResponse(payload)
	if err != nil {
		return err
	}
	if r.Status == StatusResultReceived {
		in, err := e.store.Inbound(peer, r.TaskID)
		if err != nil || in == nil || in.State != InDone {
			return err
		}
		// The result is acknowledged: forgotten at once for the quota (MaxUnacknowledged), on disk with
		// the next commit (a crash before it pushes the result again, and it is acknowledged again).
		e.store.DeleteInboundLater(peer, r.TaskID)
		return nil
	}
	return e.upgrade(peer, r.TaskID, OutAccepted)
}

func (e *Engine) onProgress(peer string, payload []byte) error {
	p, err := DecodeProgress(payload)
	if err != nil {
		return err
	}
	return e.upgrade(peer, p.TaskID, OutRunning)
}

func (e *Engine) ackResult(peer, id string) error {
	return e.send(peer, envelope.TaskResponse, (&Response{TaskID: id, Status: StatusResultReceived}).Encode())
}

func (e *Engine) onResult(peer string, payload []byte) error {
	m, err := DecodeResultMessage(payload)
	if err != nil {
		return err
	}
	o, err := e.store.Outbound(m.TaskID)
	if errors.Is(err, ErrNotFound) {
		// Pruned, or never ours: let the executor forget it.
		return e.ackResult(peer, m.TaskID)
	}
	if err != nil {
		return err
	}
	if o.To != peer {
		return fmt.Errorf("%s sent a result for task %s, which went to %s", peer, o.TaskID, o.To)
	}
	if o.State == OutDone {
		return e.ackResult(peer, o.TaskID) // a repeated push: the acknowledgement was lost
	}
	if o.State == OutFailed && (o.ErrorCode == CodeTimeout || o.ErrorCode == CodeCancelled) {
		e.cfg.Logger.Info("a result after the task was given up: acknowledged and dropped", "task", o.TaskID, "from", peer, "code", o.ErrorCode)
		return e.ackResult(peer, o.TaskID)
	}
	// One result per task at a time: a repeated push that arrives while the first is being stored is
	// dropped (the first one's acknowledgement answers both).
	if !e.holdWaiters(o.TaskID) {
		return nil
	}
	log, _, ok, err := e.cfg.Peers.Log(peer)
	if err == nil && !ok {
		err = fmt.Errorf("no key event log cached for %s", peer)
	}
	if err != nil {
		e.releaseWaiters(o.TaskID)
		return err
	}
	_, doc, verr := verifyResult(&e.evidence, m.Evidence, m.Delegation, log, Expect{TaskID: o.TaskID, Executor: o.To,
		Requester: e.cfg.LocalID, Handler: o.Handler, InputSHA256: o.InputSHA256})
	now := e.cfg.Clock().UTC()
	if verr != nil {
		_, err = e.store.UpdateOutbound(o.TaskID, func(r *Outbound) error {
			r.State, r.ErrorCode, r.Error, r.Updated = OutFailed, "invalid_result", verr.Error(), now
			return nil
		})
		e.event(Event{Kind: "result_invalid", TaskID: o.TaskID, Peer: peer, Handler: o.Handler, Err: verr})
		e.releaseWaiters(o.TaskID)
		return errors.Join(verr, err)
	}
	kel := log.Encode()
	// Stored and acknowledged off the receive loop, so that the session's next results are verified
	// meanwhile and their commits shared (group commit) instead of one commit each, one after the other.
	store := func() {
		_, err := e.store.UpdateOutbound(o.TaskID, func(r *Outbound) error {
			r.State, r.Status, r.Evidence, r.Delegation, r.KeyEventLog, r.Updated = OutDone, doc.Status,
				append([]byte{}, m.Evidence...), append([]byte{}, m.Delegation...), kel, now
			r.ErrorCode, r.Error = "", ""
			if doc.Status == ResultFailed {
				r.Error = doc.Error
			}
			return nil
		})
		if err != nil {
			e.releaseWaiters(o.TaskID)
			e.cfg.Logger.Warn("task result not recorded; not acknowledged (the executor sends it again)", "task", o.TaskID, "from", peer, "err", err)
			return
		}
		// The result is on disk (fsync) before the acknowledgement leaves, and the acknowledgement
		// leaves before any Wait returns the task done (holdWaiters).
		aerr := e.ackResult(peer, o.TaskID)
		if aerr != nil {
			e.cfg.Logger.Info("result acknowledgement not sent; it is sent when the executor pushes the result again", "task", o.TaskID, "to", peer, "err", aerr)
		}
		e.event(Event{Kind: "result", TaskID: o.TaskID, Peer: peer, Handler: o.Handler, Status: doc.Status, Served: served(o, doc, now)})
		e.releaseWaiters(o.TaskID)
	}
	if !e.goSend(store) {
		e.releaseWaiters(o.TaskID)
		return errClosed
	}
	return nil
}

// errClosed: the engine is closed.
var errClosed = errors.New("tasks: the engine is closed")

func (e *Engine) onError(peer string, payload []byte) error {
	em, err := DecodeError(payload)
	if err != nil {
		return err
	}
	final := false
	_, err = e.store.UpdateOutbound(em.TaskID, func(r *Outbound) error {
		if r.To != peer {
			return fmt.Errorf("%s sent an error for task %s, which went to %s", peer, em.TaskID, r.To)
		}
		if Final(r.State) {
			return nil
		}
		r.ErrorCode, r.Error, r.Updated = em.Code, em.Message, e.cfg.Clock().UTC()
		// The executor's resource policy refusing a resend of a task it already accepted judges that
		// message, not the task: the task stays accepted (its result, or the submitter's own timeout,
		// ends it). Found by `make soak`: a resend on a new session was refused rate_limited and the
		// submitter failed a task the executor was running.
		final = !em.Retryable() && (rank[r.State] < rank[OutAccepted] || !em.policyRefusal())
		if final {
			r.State = OutFailed
		}
		return nil
	})
	if err == nil && final {
		e.event(Event{Kind: "failed", TaskID: em.TaskID, Peer: peer, Status: em.Code, Err: errors.New(em.Message)})
	}
	e.changed(em.TaskID)
	return err
}

// PeerUp is called when a session with peer is established: unacknowledged requests to it are sent
// again, and stored results for it are pushed.
func (e *Engine) PeerUp(peer string) {
	e.goSend(func() { e.flushPeer(peer, true) })
}

// flushPeer resends what peer is owed. all: everything unfinished (a new session); otherwise only what
// is due by the retry intervals.
func (e *Engine) flushPeer(peer string, all bool) {
	now := e.cfg.Clock()
	slow := 6 * e.cfg.RetryInterval
	outs, err := e.store.ListOutbound()
	if err != nil {
		e.cfg.Logger.Warn("task store", "err", err)
		return
	}
	for _, o := range outs {
		if o.To != peer || Final(o.State) {
			continue
		}
		due := all || now.Sub(o.LastSent) >= e.cfg.RetryInterval
		if rank[o.State] >= rank[OutAccepted] && !all {
			due = now.Sub(o.LastSent) >= slow
		}
		if due {
			e.sendRequest(o)
		}
	}
	ins, err := e.store.ListInbound()
	if err != nil {
		return
	}
	for _, in := range ins {
		if in.Requester == peer && in.State == InDone && (all || now.Sub(in.Pushed) >= slow) {
			_ = e.pushResult(in)
		}
	}
}

func (e *Engine) retryLoop() {
	defer e.bg.Done()
	t := time.NewTicker(e.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		e.retryOnce()
	}
}

func (e *Engine) retryOnce() {
	peers := map[string]bool{}
	if outs, err := e.store.ListOutbound(); err == nil {
		for _, o := range outs {
			if !Final(o.State) {
				peers[o.To] = true
			}
		}
	}
	if ins, err := e.store.ListInbound(); err == nil {
		for _, in := range ins {
			if in.State == InDone {
				peers[in.Requester] = true
			} else {
				e.schedule(in) // no-op when already scheduled or draining
			}
		}
	}
	e.expire() // lifecycle.go: tasks without a result within Config.Timeout
	for p := range peers {
		e.flushPeer(p, false)
	}
	if n, err := e.store.PruneOutbound(e.cfg.Clock().Add(-e.cfg.Retention)); err == nil && n > 0 {
		e.cfg.Logger.Info("pruned fetched task results", "count", n)
	}
	if n, err := e.store.PruneInbound(e.cfg.Clock().Add(-e.cfg.InboundRetention)); err == nil && n > 0 {
		e.cfg.Logger.Warn("dropped task results their requesters never acknowledged", "count", n, "kept", e.cfg.InboundRetention)
	}
}

// Get returns a submitted task.
func (e *Engine) Get(id string) (*Outbound, error) { return e.store.Outbound(id) }

// MarkFetched notes that a client read the final result (retention starts).
func (e *Engine) MarkFetched(id string) error {
	_, err := e.store.UpdateOutbound(id, func(r *Outbound) error {
		if Final(r.State) && r.Fetched.IsZero() {
			r.Fetched = e.cfg.Clock().UTC()
		}
		return nil
	})
	return err
}

// Wait waits until the submitted task id is final or ctx ends, and returns it.
func (e *Engine) Wait(ctx context.Context, id string) (*Outbound, error) {
	for {
		e.mu.Lock()
		ch, ok := e.waiters[id]
		if !ok {
			ch = make(chan struct{})
			e.waiters[id] = ch
		}
		e.mu.Unlock()
		o, err := e.store.Outbound(id)
		if err != nil {
			return nil, err
		}
		if Final(o.State) {
			e.mu.Lock()
			held := e.acking[id] // its acknowledgement is not sent yet: releaseWaiters closes ch
			e.mu.Unlock()
			if !held {
				return o, nil
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return o, ctx.Err()
		}
	}
}

// List returns submitted tasks, newest first.
func (e *Engine) List() ([]*Outbound, error) {
	outs, err := e.store.ListOutbound()
	sort.Slice(outs, func(i, j int) bool { return outs[i].Submitted.After(outs[j].Submitted) })
	return outs, err
}

// Stats counts tasks by side and state.
type Stats struct {
	Inbound  map[string]int `json:"inbound"`
	Outbound map[string]int `json:"outbound"`
	Running  int            `json:"running"`
}

// Stats returns the counts of stored tasks.
func (e *Engine) Stats() Stats {
	s := Stats{Inbound: map[string]int{}, Outbound: map[string]int{}}
	if ins, err := e.store.ListInbound(); err == nil {
		for _, in := range ins {
			s.Inbound[in.State]++
		}
	}
	if outs, err := e.store.ListOutbound(); err == nil {
		for _, o := range outs {
			s.Outbound[o.State]++
		}
	}
	s.Running = len(e.sem)
	return s
}

// Queued is the number of accepted, unfinished inbound tasks (bounded by Config.MaxQueued).
func (e *Engine) Queued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.active)
}

// Drain stops accepting new tasks and waits for running handlers until ctx ends; handlers still running
// then are cancelled (their tasks stay recorded and run again at the next start). It returns how many
// were interrupted.
func (e *Engine) Drain(ctx context.Context) int {
	e.mu.Lock()
	e.draining = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
	}
	e.mu.Lock()
	n := len(e.active)
	e.mu.Unlock()
	e.runCancel()
	<-done
	return n
}

// Close stops the retry loop and cancels running handlers (after Drain, nothing runs). It waits for the
// engine's goroutines.
func (e *Engine) Close() {
	e.stopOnce.Do(func() { close(e.stop) })
	e.mu.Lock()
	e.draining, e.closed = true, true
	e.mu.Unlock()
	e.runCancel()
	e.wg.Wait()
	e.bg.Wait()
	_ = e.store.Flush() // the deferred changes
}
