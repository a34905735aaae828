package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
)

// SubmitRequest is the body of POST /v1/tasks.
type SubmitRequest struct {
	// To is the executing agent (not with Redundancy >= 2: the agent picks the peers).
	To      string       `json:"to,omitempty"`
	Handler string       `json:"handler"`
	Input   envelope.B64 `json:"input"`
	// Redundancy >= 2 runs the task on that many peers and votes (api.OpTaskReplicate); Vote is the
	// weighting (reputation, stake, hybrid).
	Redundancy int    `json:"redundancy,omitempty"`
	Vote       string `json:"vote,omitempty"`
}

// VerifyResult is the answer of POST /v1/evidence/verify.
type VerifyResult struct {
	Verified     bool         `json:"verified"`
	Error        string       `json:"error,omitempty"`
	TaskID       string       `json:"task_id,omitempty"`
	Executor     string       `json:"executor,omitempty"`
	Requester    string       `json:"requester,omitempty"`
	Handler      string       `json:"handler,omitempty"`
	Status       string       `json:"status,omitempty"`
	Output       envelope.B64 `json:"output,omitempty"`
	OutputSHA256 string       `json:"output_sha256,omitempty"`
}

// Health is the answer of GET /v1/healthz.
type Health struct {
	Status  string `json:"status"`
	AgentID string `json:"agent_id"`
}

// call is one request in progress: who asks and what became of it (for the audit record).
type call struct {
	key     *Key
	route   string
	details map[string]any
}

type endpoint struct {
	pattern string
	// perm is the permission the key needs besides api_access ("": none); public endpoints need no key.
	perm   rbac.Permission
	public bool
	stream bool
	fn     func(w http.ResponseWriter, r *http.Request, c *call) error
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	for _, e := range []endpoint{
		{pattern: "GET /v1/healthz", public: true, fn: s.healthz},
		{pattern: "GET /v1/openapi.json", public: true, fn: s.openapi},
		{pattern: "POST /v1/tasks", perm: rbac.SubmitTasks, fn: s.submit},
		{pattern: "GET /v1/tasks/{id}", perm: rbac.ViewResults, fn: s.task},
		{pattern: "GET /v1/tasks/{id}/events", perm: rbac.ViewResults, stream: true, fn: s.events},
		{pattern: "GET /v1/agents/{id}", perm: rbac.ViewStatus, fn: s.agent},
		{pattern: "POST /v1/evidence/verify", perm: rbac.ViewResults, fn: s.verify},
		{pattern: "POST /v1/agents/{id}/messages", perm: rbac.SubmitTasks, fn: s.postMessage},
		{pattern: "GET /v1/messages", perm: rbac.ViewResults, fn: s.messages},
		{pattern: "/", public: true, fn: func(w http.ResponseWriter, r *http.Request, _ *call) error {
			return newProblem(http.StatusNotFound, reason.NotFound, fmt.Sprintf("no endpoint %s %s (GET /v1/openapi.json lists them)", r.Method, r.URL.Path))
		}},
	} {
		s.mux.Handle(e.pattern, s.wrap(e))
	}
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// wrap runs the checks every endpoint shares, in order: the client address's rate, the body limit, the
// key (401), api_access and the endpoint's permission (403), the key's rate (429); then the endpoint;
// then the audit record and the metrics.
func (s *Server) wrap(e endpoint) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := s.now()
		w := &statusWriter{ResponseWriter: rw}
		c := &call{route: e.pattern, details: map[string]any{}}
		err := s.admit(w, r, e, c)
		if err == nil {
			err = e.fn(w, r, c)
		}
		var p *problem
		if err != nil {
			if !errors.As(err, &p) {
				p = fromControl(err)
			}
			if w.status == 0 {
				p.write(w)
			}
		}
		status := w.status
		if status == 0 {
			status = http.StatusOK
		}
		s.reqs.WithLabelValues(e.pattern, strconv.Itoa(status)).Inc()
		if !e.stream {
			s.dur.WithLabelValues(e.pattern).Observe(s.now().Sub(start).Seconds())
		}
		if e.public && err == nil {
			return // healthz and the document: no key, nothing to attribute
		}
		actor, outcome := "anonymous", audit.OutcomeSuccess
		if c.key != nil {
			actor = "key:" + c.key.Name
		}
		c.details["status"], c.details["remote"], c.details["path"] = status, clientAddr(r), r.URL.Path
		if p != nil {
			c.details["reason"], c.details["error"] = string(p.code), p.detail
			outcome = audit.OutcomeFailure
			if p.status == http.StatusUnauthorized || p.status == http.StatusForbidden || p.status == http.StatusTooManyRequests {
				outcome = audit.OutcomeDenied
			}
		}
		s.opts.Audit(Request, actor, e.pattern, outcome, c.details)
	})
}

func (s *Server) admit(w http.ResponseWriter, r *http.Request, e endpoint, c *call) error {
	now := s.now()
	if ok, wait := s.addrRL.take(now, "addr:"+clientAddr(r), s.cfg.AddressRate); !ok {
		return &problem{status: http.StatusTooManyRequests, code: reason.RateLimited, retryAfter: wait,
			detail: fmt.Sprintf("client address %s is over %v requests per second", clientAddr(r), s.cfg.AddressRate)}
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	tooLarge := func() error {
		if r.ContentLength > s.cfg.MaxBodyBytes {
			return newProblem(http.StatusRequestEntityTooLarge, reason.TooLarge, fmt.Sprintf("the body of %d bytes is over the limit of %d (gateway.max_body_bytes)", r.ContentLength, s.cfg.MaxBodyBytes))
		}
		return nil
	}
	if e.public {
		return tooLarge()
	}
	tok, err := bearer(r.Header.Get("Authorization"))
	if err == nil {
		c.key, err = s.opts.Keys.Authenticate(tok)
	}
	if err != nil {
		var ae *AuthError
		if errors.As(err, &ae) {
			return newProblem(http.StatusUnauthorized, ae.Code, ae.Msg)
		}
		return err
	}
	for _, need := range []rbac.Permission{rbac.APIAccess, e.perm} {
		if need != "" && !s.has(c.key, need) {
			return newProblem(http.StatusForbidden, reason.PermissionDenied,
				fmt.Sprintf("the key %s (roles %v) lacks the permission %s", c.key.Name, c.key.Roles, need))
		}
	}
	if err := tooLarge(); err != nil { // after the key: the refusal is attributed
		return err
	}
	rate := c.key.Rate
	if rate == 0 {
		rate = s.cfg.KeyRate
	}
	if ok, wait := s.keyRate.take(now, "key:"+c.key.ID, rate); !ok {
		return &problem{status: http.StatusTooManyRequests, code: reason.RateLimited, retryAfter: wait,
			detail: fmt.Sprintf("the key %s is over its %v requests per second", c.key.Name, rate)}
	}
	return nil
}

// owner is the attribution a key may read tasks of (ADR 0100): its own name, so GET /v1/tasks/{id} and
// its events answer 404 for a task another key submitted (not 403: that would say it exists). A key
// with a role carrying manage_agents (system_admin) reads every task of this agent: "" (no restriction).
func (s *Server) owner(k *Key) string {
	if s.has(k, rbac.ManageAgents) {
		return ""
	}
	return k.Name
}

func (s *Server) has(k *Key, p rbac.Permission) bool {
	for _, r := range k.Roles {
		if s.opts.Roles.Has(r, p) {
			return true
		}
	}
	return false
}

// decode reads the whole body (bounded by the MaxBytesReader) and decodes it strictly into v.
func (s *Server) decode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newProblem(http.StatusRequestEntityTooLarge, reason.TooLarge, fmt.Sprintf("the body is over the limit of %d bytes (gateway.max_body_bytes)", mbe.Limit))
		}
		return newProblem(http.StatusBadRequest, reason.BadRequest, "request body: "+err.Error())
	}
	if err := decodeBody(b, v, int(s.cfg.MaxBodyBytes)); err != nil {
		return badJSON(err)
	}
	return nil
}

// decodeBody is the strict decoder of every request body (fuzzed: FuzzDecodeBody).
func decodeBody(b []byte, v any, max int) error {
	if len(b) == 0 {
		return errors.New("empty body: send a JSON object")
	}
	return strictjson.Decode(b, v, max)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request, _ *call) error {
	return writeJSON(w, http.StatusOK, Health{Status: "ok", AgentID: s.opts.AgentID})
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request, _ *call) error {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(s.spec)
	return nil
}

// checkSubmit validates a submission before anything is stored; it names the field at fault.
func checkSubmit(a *SubmitRequest) *problem {
	bad := func(field, format string, args ...any) *problem {
		p := newProblem(http.StatusBadRequest, reason.BadRequest, fmt.Sprintf(format, args...))
		p.field = field
		return p
	}
	switch {
	case a.Handler == "":
		return bad("handler", "handler is required (the executor's handler name, e.g. echo)")
	case a.Redundancy < 0 || a.Redundancy == 1 || a.Redundancy > api.MaxRedundancy:
		return bad("redundancy", "redundancy %d: leave it out (one executor) or give 2..%d", a.Redundancy, api.MaxRedundancy)
	case a.Redundancy == 0 && a.Vote != "":
		return bad("vote", "vote applies only with redundancy 2 or more")
	case a.Redundancy == 0:
		if _, err := identity.ParseID(a.To); err != nil {
			return bad("to", "to: %v", err)
		}
	case a.To != "":
		return bad("to", "with redundancy the agent picks the executors: leave out to")
	}
	return nil
}

func (s *Server) submit(w http.ResponseWriter, r *http.Request, c *call) error {
	var a SubmitRequest
	if err := s.decode(r, &a); err != nil {
		return err
	}
	if p := checkSubmit(&a); p != nil {
		return p
	}
	c.details["handler"] = a.Handler
	if a.Redundancy >= 2 {
		var v api.ReplicatedView
		if err := s.opts.Ops.Call(r.Context(), api.OpTaskReplicate, api.ReplicateArgs{Handler: a.Handler, Input: a.Input,
			Redundancy: a.Redundancy, Vote: a.Vote}, &v); err != nil {
			return err
		}
		c.details["group"] = v.Group
		return writeJSON(w, http.StatusOK, v)
	}
	var v api.TaskView
	if err := s.opts.Ops.Call(r.Context(), api.OpTaskSubmit, api.SubmitArgs{To: a.To, Handler: a.Handler, Input: a.Input, OnBehalfOf: c.key.Name}, &v); err != nil {
		return err
	}
	c.details["task_id"], c.details["to"] = v.TaskID, v.To
	w.Header().Set("Location", "/v1/tasks/"+v.TaskID)
	return writeJSON(w, http.StatusAccepted, v)
}

// taskArgs reads the task ID of the path and the wait query parameter (seconds).
func taskArgs(r *http.Request) (api.GetArgs, *problem) {
	id := r.PathValue("id")
	if err := tasks.CheckTaskID(id); err != nil {
		p := newProblem(http.StatusBadRequest, reason.BadRequest, err.Error())
		p.field = "id"
		return api.GetArgs{}, p
	}
	a := api.GetArgs{TaskID: id}
	if q := r.URL.Query().Get("wait"); q != "" {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil || n < 0 || n > int64(api.MaxWait/time.Second) {
			p := newProblem(http.StatusBadRequest, reason.BadRequest, fmt.Sprintf("wait=%q: want whole seconds 0..%d", q, int64(api.MaxWait/time.Second)))
			p.field = "wait"
			return api.GetArgs{}, p
		}
		a.WaitMS = n * 1000
	}
	return a, nil
}

func (s *Server) task(w http.ResponseWriter, r *http.Request, c *call) error {
	a, p := taskArgs(r)
	if p != nil {
		return p
	}
	c.details["task_id"] = a.TaskID
	a.OnBehalfOf = s.owner(c.key)
	var v api.TaskView
	if err := s.opts.Ops.Call(r.Context(), api.OpTaskGet, a, &v); err != nil {
		return err
	}
	c.details["state"] = v.State
	return writeJSON(w, http.StatusOK, v)
}

// events streams a task's states as server-sent events ("state" for each change, "result" with the final
// view), then ends. Open streams are capped (gateway.max_streams: 503 busy above it).
func (s *Server) events(w http.ResponseWriter, r *http.Request, c *call) error {
	a, p := taskArgs(r)
	if p != nil {
		return p
	}
	c.details["task_id"] = a.TaskID
	if n := s.streams.Add(1); n > int64(s.cfg.MaxStreams) {
		s.streams.Add(-1)
		return &problem{status: http.StatusServiceUnavailable, code: reason.Busy, retryAfter: time.Second,
			detail: fmt.Sprintf("%d event streams are open, the limit (gateway.max_streams)", s.cfg.MaxStreams)}
	}
	s.open.Inc()
	defer func() { s.streams.Add(-1); s.open.Dec() }()
	// The first state before the stream starts: a task that does not exist is a 404, not an empty stream.
	a.OnBehalfOf = s.owner(c.key)
	var v api.TaskView
	if err := s.opts.Ops.Call(r.Context(), api.OpTaskGet, api.GetArgs{TaskID: a.TaskID, OnBehalfOf: a.OnBehalfOf}, &v); err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	ctx, cancel := context.WithTimeout(r.Context(), api.MaxWait)
	defer cancel()
	last := ""
	for {
		ev := "state"
		if tasks.Final(v.State) {
			ev = "result"
		}
		if v.State != last || ev == "result" {
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev, b); err != nil {
				return nil // the client went away
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
			last = v.State
		}
		if ev == "result" {
			c.details["state"] = v.State
			return nil
		}
		if ctx.Err() != nil {
			return nil // the client went away, or the stream reached api.MaxWait
		}
		if err := s.opts.Ops.Call(ctx, api.OpTaskGet, api.GetArgs{TaskID: a.TaskID, WaitMS: 1000, OnBehalfOf: a.OnBehalfOf}, &v); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(w, "event: error\ndata: %q\n\n", err.Error())
			_ = rc.Flush()
			return nil
		}
	}
}

func (s *Server) agent(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.details["agent"] = id
	if _, err := identity.ParseID(id); err != nil {
		p := newProblem(http.StatusBadRequest, reason.BadRequest, err.Error())
		p.field = "id"
		return p
	}
	var all []api.PeerStatus
	if err := s.opts.Ops.Call(r.Context(), api.OpPeersList, nil, &all); err != nil {
		return err
	}
	for _, p := range all {
		if p.ID == id {
			return writeJSON(w, http.StatusOK, p)
		}
	}
	return newProblem(http.StatusNotFound, reason.NotFound, fmt.Sprintf("this agent knows nothing of %s (no key event log, session or reputation)", id))
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request, _ *call) error {
	var ev tasks.Evidence
	if err := s.decode(r, &ev); err != nil {
		return err
	}
	e, doc, err := tasks.VerifyEvidence(&ev)
	if err != nil {
		return writeJSON(w, http.StatusOK, VerifyResult{Verified: false, Error: err.Error()})
	}
	return writeJSON(w, http.StatusOK, VerifyResult{Verified: true, TaskID: doc.TaskID, Executor: e.Header.SenderID,
		Requester: doc.Requester, Handler: doc.Handler, Status: doc.Status, Output: doc.Output, OutputSHA256: doc.OutputSHA256})
}
