package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
)

// ErrInUse: another process is serving the control socket (a daemon is already running for this home).
var ErrInUse = errors.New("control socket in use")

// Op is one operation the server offers.
type Op struct {
	// Fn runs the operation. Its result is encoded as the response's result; an error becomes a failed
	// response (an *Error keeps its code; anything else is CodeFailed).
	Fn func(ctx context.Context, caller rbac.Cred, args json.RawMessage) (any, error)
	// Permission is the rbac operation whose permission a caller needs (agent/api's table); the server
	// passes it to Config.Authorize before Fn runs. Listen refuses an operation without one.
	Permission rbac.Operation
	// Mutating operations are reported to OnRequest even when they succeed; read-only ones only when they
	// fail or are denied.
	Mutating bool
}

// Config configures a Server.
type Config struct {
	// Path of the socket (<home>/control.sock; less than 108 bytes).
	Path string
	// Ops maps operation names to their implementations.
	Ops map[string]Op
	// Authorize decides whether caller may run op, which needs the permission of the rbac operation perm
	// (Op.Permission; the hook for rbac.Authorizer.AuthorizeLocal). Every request passes through it, and
	// only here. Nil allows the daemon's own uid and root only.
	Authorize func(ctx context.Context, caller rbac.Cred, op string, perm rbac.Operation) error
	// RefuseCaller, when set, is asked about every caller before its request is read: a refusal is
	// answered with CodeDenied and the reason, and reported to OnRequest (op "") with the caller's
	// credentials. The daemon refuses transport plugin processes and their descendants here
	// (RefusePluginProcesses): the control socket serves people, not plugins.
	RefuseCaller func(caller rbac.Cred) (refuse bool, reason string)
	// OnRequest is told about every denied or failed request and every mutating one (audit). It may block
	// briefly (an fsynced audit append).
	OnRequest func(caller rbac.Cred, op string, err error)
	// RequestTimeout bounds reading a request and writing its response (default 10 s); the operation
	// itself is bounded by its own arguments (e.g. a wait).
	RequestTimeout time.Duration
	// MaxConns bounds concurrent connections (default 64).
	MaxConns int
	Logger   *slog.Logger
}

// Server serves the control socket.
type Server struct {
	cfg  Config
	ln   *net.UnixListener
	sem  chan struct{}
	wg   sync.WaitGroup
	ctx  context.Context
	stop context.CancelFunc
	once sync.Once
}

// Listen creates the socket (mode 0600). A stale socket file left by a daemon that died is replaced; a
// socket another process still serves is not (ErrInUse).
func Listen(cfg Config) (*Server, error) {
	if cfg.Path == "" || len(cfg.Path) >= 108 {
		return nil, fmt.Errorf("control socket path %q: must be non-empty and shorter than 108 bytes (use a shorter --home)", cfg.Path)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Authorize == nil {
		self := uint32(os.Getuid())
		cfg.Authorize = func(_ context.Context, c rbac.Cred, _ string, _ rbac.Operation) error {
			if c.UID == self || c.UID == 0 {
				return nil
			}
			return Errorf(CodeDenied, "uid %d may not use this agent's control socket (it belongs to uid %d)", c.UID, self)
		}
	}
	for name, op := range cfg.Ops {
		if err := checkOp(name, op); err != nil {
			return nil, err
		}
	}
	if fi, err := os.Lstat(cfg.Path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s exists and is not a socket; move it away", cfg.Path)
		}
		c, err := net.DialTimeout("unix", cfg.Path, time.Second)
		if err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%w: %s is served by another process (is a daemon already running for this home?)", ErrInUse, cfg.Path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("control socket %s: %w", cfg.Path, err)
		}
		if err := os.Remove(cfg.Path); err != nil {
			return nil, fmt.Errorf("remove stale control socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, ln: ln, sem: make(chan struct{}, cfg.MaxConns), ctx: ctx, stop: cancel}, nil
}

// Refused reports whether the server refuses caller before reading its request (Config.RefuseCaller),
// and why.
func (s *Server) Refused(caller rbac.Cred) (bool, string) {
	if s.cfg.RefuseCaller == nil {
		return false, ""
	}
	return s.cfg.RefuseCaller(caller)
}

// Path is the socket's path.
func (s *Server) Path() string { return s.cfg.Path }

// Serve accepts connections until Close.
func (s *Server) Serve() error {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.cfg.Logger.Warn("control socket: too many connections; refusing one")
			s.reply(c, nil, Errorf(CodeUnavailable, "too many concurrent control requests"))
			_ = c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			defer c.Close()
			s.serveConn(c)
		}()
	}
}

// Close stops accepting, cancels running operations, waits for them and removes the socket.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		s.stop()
		err = s.ln.Close() // also unlinks the socket file
		s.wg.Wait()
	})
	return err
}

func (s *Server) serveConn(c *net.UnixConn) {
	cred, err := rbac.PeerCred(c)
	if err != nil {
		s.cfg.Logger.Warn("control socket: no peer credentials; closing", "err", err)
		return
	}
	// Before the request is read: nothing a refused caller sends is parsed.
	if refuse, why := s.Refused(cred); refuse {
		e := Errorf(CodeDenied, "%s", why)
		s.cfg.Logger.Warn("control socket: caller refused", "pid", cred.PID, "uid", cred.UID, "reason", why)
		s.report(cred, "", e)
		s.reply(c, nil, e)
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.RequestTimeout))
	line, err := readLine(c, MaxRequest)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			s.report(cred, "", e)
			s.reply(c, nil, e)
		}
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	var req Request
	if err := decodeStrict(line, &req); err != nil {
		s.reply(c, nil, Errorf(CodeBadRequest, "request: %v", err))
		return
	}
	if req.V != Version {
		s.reply(c, nil, Errorf(CodeBadRequest, "protocol version %d (this daemon speaks %d); use the agentctl of the same release", req.V, Version))
		return
	}
	op, ok := s.cfg.Ops[req.Op]
	if !ok {
		s.reply(c, nil, Errorf(CodeUnknownOp, "unknown operation %q", clip(req.Op)))
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	// The operation ends early when the client goes away (a cancelled wait).
	go func() {
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			cancel()
		}
	}()
	if err := s.cfg.Authorize(ctx, cred, req.Op, op.Permission); err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = Errorf(CodeDenied, "%v", err)
		}
		s.report(cred, req.Op, e)
		s.reply(c, nil, e)
		return
	}
	res, err := op.Fn(ctx, cred, req.Args)
	if err != nil || op.Mutating {
		s.report(cred, req.Op, err)
	}
	s.reply(c, res, err)
}

// checkOp refuses an operation the server could not authorize: no function, or no control permission
// in rbac's table (a served operation always has one: deny by default does not depend on a map lookup).
func checkOp(name string, op Op) error {
	if op.Fn == nil {
		return fmt.Errorf("control operation %q has no function", name)
	}
	req, err := rbac.Required(op.Permission)
	if err != nil || req.From != rbac.FromLocal || req.Permission == "" {
		return fmt.Errorf("control operation %q: permission %q is not a control operation of rbac's table", name, op.Permission)
	}
	return nil
}

func (s *Server) report(cred rbac.Cred, op string, err error) {
	if s.cfg.OnRequest != nil {
		s.cfg.OnRequest(cred, op, err)
	}
}

func (s *Server) reply(c net.Conn, res any, err error) {
	var resp Response
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: CodeFailed, Message: err.Error()}
		}
		resp.Error = e
	} else {
		raw, merr := json.Marshal(res)
		if merr != nil {
			resp.Error = Errorf(CodeFailed, "encode result: %v", merr)
		} else {
			resp.OK, resp.Result = true, raw
		}
	}
	b, _ := json.Marshal(&resp)
	if len(b) > MaxResponse {
		b, _ = json.Marshal(&Response{Error: Errorf(CodeFailed, "response of %d bytes exceeds %d", len(b), MaxResponse)})
	}
	_ = c.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
	_, _ = c.Write(append(b, '\n'))
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
