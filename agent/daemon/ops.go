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

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
)

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

// handlers are the daemon's implementations of the control API (agent/api.Table gives each operation's
// permission and types; api.Ops joins the two and fails on a mismatch).
func (d *Daemon) handlers() map[string]api.Handler {
	hs := map[string]api.Handler{
		api.OpStatus:         d.opStatus,
		api.OpPeersList:      d.opPeersList,
		api.OpPeersConnect:   d.opConnect,
		api.OpTaskSubmit:     d.opSubmit,
		api.OpTaskGet:        d.opTaskGet,
		api.OpTaskList:       d.opTaskList,
		api.OpConfigReload:   d.opReload,
		api.OpIdentityReload: d.opIdentityReload,
		api.OpAuditHead:      d.opAuditHead,
	}
	maps.Copy(hs, d.authzOps())      // grants, revocations, blocking, replicated tasks (authz_grants.go)
	maps.Copy(hs, d.disc.Handlers()) // peers.find (agent/discovery)
	return hs
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
		st.SandboxDetail = ts.t.Sandbox()
		st.Sandbox = st.SandboxDetail.String()
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
