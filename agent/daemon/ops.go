package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"sort"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
)

// Control operations (agent/control protocol) and their arguments and results.
const (
	OpStatus       = "status"        // {} -> Status
	OpPeersList    = "peers.list"    // {} -> []PeerStatus
	OpPeersConnect = "peers.connect" // ConnectArgs -> SessionStatus
	OpTaskSubmit   = "task.submit"   // SubmitArgs -> TaskView
	OpTaskGet      = "task.get"      // GetArgs -> TaskView (with the result and its evidence when final)
	OpTaskList     = "task.list"     // {} -> []TaskView (without results)
	OpConfigReload = "config.reload" // {} -> ReloadResult (what SIGHUP does)
)

// MaxWait bounds a task.get wait.
const MaxWait = 10 * time.Minute

// scaled is n units (a count read from a request) as a Duration, saturating instead of wrapping when
// n*unit does not fit: the callers' range checks then refuse it.
func scaled(n int64, unit time.Duration) time.Duration {
	if unit <= 0 {
		return 0
	}
	if lim := int64(math.MaxInt64 / unit); n > lim {
		return math.MaxInt64
	} else if n < -lim {
		return math.MinInt64
	}
	return time.Duration(n) * unit
}

func parseID(s string) (identity.ID, error) { return identity.ParseID(s) }

func (d *Daemon) ops() map[string]control.Op {
	ops := map[string]control.Op{
		OpStatus:         {Fn: d.opStatus},
		OpPeersList:      {Fn: d.opPeersList},
		OpPeersConnect:   {Fn: d.opConnect, Mutating: true},
		OpTaskSubmit:     {Fn: d.opSubmit, Mutating: true},
		OpTaskGet:        {Fn: d.opTaskGet},
		OpTaskList:       {Fn: d.opTaskList},
		OpConfigReload:   {Fn: d.opReload, Mutating: true},
		OpIdentityReload: {Fn: d.opIdentityReload, Mutating: true},
		OpAuditHead:      {Fn: d.opAuditHead},
	}
	maps.Copy(ops, d.authzOps()) // grants, revocations, blocking, replicated tasks (authz_grants.go)
	return ops
}

// TransportStatus describes one transport plugin.
type TransportStatus struct {
	Name     string   `json:"name"`
	Plugin   string   `json:"plugin"`
	SHA256   string   `json:"sha256"`
	PID      int      `json:"pid"`
	Running  bool     `json:"running"`
	Restarts uint64   `json:"restarts"`
	Listen   []string `json:"listen"`
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
}

func (d *Daemon) opStatus(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	s := Status{AgentID: d.id.String(), Generation: d.cust.Current().Generation, Keystore: keystoreBackend(d.cust.KeystoreURI()),
		DelegationMode: string(d.dm.Mode()), Version: d.opts.Version, PID: pid(), Started: d.started, Config: d.opts.ConfigPath,
		ConfigDigest: d.currentDigest(), Control: d.ctl.Path(), Metrics: d.metricsURL(), Sessions: d.mgr.statuses(),
		Handlers: d.engine.Handlers(), Tasks: d.engine.Stats()}
	if live := d.dm.Live(); len(live) > 0 {
		s.DelegationExpires = live[0].NotAfter().UTC()
	}
	for _, name := range d.transportNames() {
		ts := d.transports[name]
		st := TransportStatus{Name: name, Plugin: ts.cfg.Plugin, SHA256: ts.cfg.SHA256, PID: ts.t.PID(), Running: ts.t.PID() != 0, Restarts: ts.t.Restarts()}
		for _, l := range ts.listeners {
			st.Listen = append(st.Listen, l.Addrs()...)
		}
		s.Transports = append(s.Transports, st)
	}
	if s.Sessions == nil {
		s.Sessions = []SessionStatus{}
	}
	return s, nil
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

func (d *Daemon) opPeersList(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	cached, err := d.peers.IDs()
	if err != nil {
		return nil, err
	}
	for _, id := range cached {
		ids[id] = true
	}
	sessions := map[string]SessionStatus{}
	for _, s := range d.mgr.statuses() {
		sessions[s.Peer] = s
		ids[s.Peer] = true
	}
	targets := d.mgr.targetStatuses()
	for id := range targets {
		ids[id] = true
	}
	for _, r := range d.rep.List() { // peers known only by their reputation (a blocked peer, say)
		ids[r.Peer] = true
	}
	out := []PeerStatus{}
	for id := range ids {
		p := PeerStatus{ID: id}
		if s, ok := sessions[id]; ok {
			p.Connected, p.Session = true, &s
		}
		if st, ok, err := d.peers.State(id); err == nil && ok {
			g := st.Generation
			p.Generation = &g
		}
		if c, err := d.peers.Compromised(id); err == nil && c != nil {
			p.Compromised = true
		}
		if pid, err := identity.ParseID(id); err == nil {
			r := d.rep.Report(pid)
			p.Trust, p.Score = string(r.Level), r.Score
			d.describePeer(ctx, pid, &p, r)
		}
		if t, ok := targets[id]; ok {
			p.Target = &t
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ConnectArgs are OpPeersConnect's arguments.
type ConnectArgs struct {
	Address   string `json:"address"`
	ID        string `json:"id"`
	Transport string `json:"transport,omitempty"`
}

func (d *Daemon) opConnect(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a ConnectArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	id, err := identity.ParseID(a.ID)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "--id %q: %v", a.ID, err)
	}
	if id.Equal(d.id) {
		return nil, control.Errorf(control.CodeBadRequest, "%s is this agent", id)
	}
	if a.Address == "" {
		return nil, control.Errorf(control.CodeBadRequest, "an address is required")
	}
	if a.Transport == "" {
		a.Transport = InferTransport(a.Address)
	}
	if d.transport(a.Transport) == nil {
		return nil, control.Errorf(control.CodeBadRequest, "transport %s is not configured (configured: %v)", a.Transport, d.transportNames())
	}
	if ps := d.mgr.session(id.String()); ps != nil {
		s := ps.status()
		return s, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ps, err := d.mgr.dial(dctx, id, Address{Transport: a.Transport, Address: a.Address})
	if err != nil {
		return nil, control.Errorf(control.CodeRefused, "connect to %s at %s (%s): %v", id, a.Address, a.Transport, err)
	}
	d.mgr.addTarget(d.ctx, id.String(), []Address{{Transport: a.Transport, Address: a.Address}}, "connect")
	return ps.status(), nil
}

// SubmitArgs are OpTaskSubmit's arguments.
type SubmitArgs struct {
	To      string       `json:"to"`
	Handler string       `json:"handler"`
	Input   envelope.B64 `json:"input"`
}

// TaskView is a submitted task as the control API shows it.
type TaskView struct {
	TaskID      string      `json:"task_id"`
	To          string      `json:"to"`
	Handler     string      `json:"handler"`
	State       string      `json:"state"`
	InputSHA256 string      `json:"input_sha256"`
	Submitted   time.Time   `json:"submitted"`
	Updated     time.Time   `json:"updated"`
	Attempts    int         `json:"attempts"`
	ErrorCode   string      `json:"error_code,omitempty"`
	Error       string      `json:"error,omitempty"`
	Result      *ResultView `json:"result,omitempty"`
}

// ResultView is a verified task result: what the executor signed, the signature, and the evidence a
// third party needs to check it (agentctl task verify).
type ResultView struct {
	Status       string       `json:"status"`
	Output       envelope.B64 `json:"output"`
	OutputSHA256 string       `json:"output_sha256"`
	Error        string       `json:"error,omitempty"`
	Executor     string       `json:"executor"`
	Started      int64        `json:"started"`
	Finished     int64        `json:"finished"`
	// Signature is the evidence envelope's signature by the executor's operational key.
	Signature envelope.B64 `json:"signature"`
	SignedAt  int64        `json:"signed_at"`
	// OperationalKey is the key that signed (base64url), certified by the delegation of generation
	// DelegationGeneration valid until DelegationNotAfter.
	OperationalKey       string          `json:"operational_key"`
	OperationalAlgorithm string          `json:"operational_algorithm"`
	DelegationGeneration uint64          `json:"delegation_generation"`
	DelegationNotAfter   int64           `json:"delegation_not_after"`
	Verified             bool            `json:"verified"`
	Evidence             *tasks.Evidence `json:"evidence"`
}

func view(o *tasks.Outbound) *TaskView {
	return &TaskView{TaskID: o.TaskID, To: o.To, Handler: o.Handler, State: o.State, InputSHA256: o.InputSHA256,
		Submitted: o.Submitted, Updated: o.Updated, Attempts: o.Attempts, ErrorCode: o.ErrorCode, Error: o.Error}
}

func (d *Daemon) fullView(o *tasks.Outbound) (*TaskView, error) {
	v := view(o)
	if o.State != tasks.OutDone {
		return v, nil
	}
	log, err := identity.DecodeLog(o.KeyEventLog)
	if err != nil {
		return nil, fmt.Errorf("stored key event log of %s: %w", o.To, err)
	}
	e, doc, err := tasks.VerifyResult(o.Evidence, o.Delegation, log, tasks.Expect{TaskID: o.TaskID, Executor: o.To,
		Requester: d.id.String(), Handler: o.Handler, InputSHA256: o.InputSHA256})
	if err != nil {
		return nil, fmt.Errorf("stored result of task %s: %w", o.TaskID, err)
	}
	dl, err := delegation.Decode(o.Delegation)
	if err != nil {
		return nil, err
	}
	ev, err := tasks.NewEvidence(o.Evidence, o.Delegation, o.KeyEventLog)
	if err != nil {
		return nil, err
	}
	v.Result = &ResultView{Status: doc.Status, Output: doc.Output, OutputSHA256: doc.OutputSHA256, Error: doc.Error,
		Executor: e.Header.SenderID, Started: doc.Started, Finished: doc.Finished, Signature: e.Signature,
		SignedAt: e.Header.Timestamp, OperationalKey: identity.Base64().EncodeToString(dl.OpKey), OperationalAlgorithm: string(dl.OpAlg),
		DelegationGeneration: dl.Generation, DelegationNotAfter: dl.NotAfter, Verified: true, Evidence: ev}
	return v, nil
}

func (d *Daemon) opSubmit(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a SubmitArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	o, err := d.engine.Submit(ctx, a.To, a.Handler, a.Input)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	return view(o), nil
}

// GetArgs are OpTaskGet's arguments.
type GetArgs struct {
	TaskID string `json:"task_id"`
	// WaitMS waits up to this many milliseconds for the task to become final (at most MaxWait).
	WaitMS int64 `json:"wait_ms,omitempty"`
}

func (d *Daemon) opTaskGet(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a GetArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	if err := tasks.CheckTaskID(a.TaskID); err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	wait := scaled(a.WaitMS, time.Millisecond)
	if wait < 0 || wait > MaxWait {
		return nil, control.Errorf(control.CodeBadRequest, "wait of %v is outside 0..%v", wait, MaxWait)
	}
	var o *tasks.Outbound
	var err error
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		o, err = d.engine.Wait(wctx, a.TaskID)
		cancel()
		if err != nil && o != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = nil // not final yet: answer with the current state
		}
	} else {
		o, err = d.engine.Get(a.TaskID)
	}
	if errors.Is(err, tasks.ErrNotFound) {
		return nil, control.Errorf(control.CodeNotFound, "no task %s was submitted through this agent", a.TaskID)
	}
	if err != nil {
		return nil, err
	}
	v, err := d.fullView(o)
	if err != nil {
		return nil, err
	}
	if tasks.Final(o.State) {
		_ = d.engine.MarkFetched(o.TaskID)
	}
	return v, nil
}

func (d *Daemon) opTaskList(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	outs, err := d.engine.List()
	if err != nil {
		return nil, err
	}
	vs := []*TaskView{}
	for _, o := range outs {
		vs = append(vs, view(o))
	}
	return vs, nil
}

func (d *Daemon) opReload(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	res, err := d.Reload(ctx)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	return res, nil
}

func pid() int { return os.Getpid() }
