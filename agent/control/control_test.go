package control

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
)

type echoArgs struct {
	Text string `json:"text"`
}

type recorded struct {
	cred rbac.Cred
	op   string
	err  error
}

func start(t *testing.T, mut func(*Config)) (string, *[]recorded, *sync.Mutex) {
	t.Helper()
	dir, err := os.MkdirTemp("", "cx") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var mu sync.Mutex
	var recs []recorded
	cfg := Config{
		Path: filepath.Join(dir, "control.sock"),
		Ops: map[string]Op{
			"echo": {Permission: rbac.CtlStatus, Fn: func(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
				var a echoArgs
				if err := DecodeArgs(raw, &a); err != nil {
					return nil, err
				}
				return a, nil
			}},
			"change": {Permission: rbac.CtlGrant, Mutating: true, Fn: func(context.Context, rbac.Cred, json.RawMessage) (any, error) {
				return map[string]bool{"done": true}, nil
			}},
			"missing": {Permission: rbac.CtlStatus, Fn: func(context.Context, rbac.Cred, json.RawMessage) (any, error) {
				return nil, Errorf(CodeNotFound, "no such thing")
			}},
		},
		OnRequest: func(c rbac.Cred, op string, err error) {
			mu.Lock()
			recs = append(recs, recorded{c, op, err})
			mu.Unlock()
		},
	}
	if mut != nil {
		mut(&cfg)
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Close() })
	return cfg.Path, &recs, &mu
}

func TestCallRoundTripAndErrors(t *testing.T) {
	path, recs, mu := start(t, nil)
	ctx := context.Background()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v (%v), want a 0600 socket", fi.Mode(), err)
	}
	var out echoArgs
	if err := Call(ctx, path, "echo", echoArgs{Text: "hi"}, &out); err != nil || out.Text != "hi" {
		t.Fatalf("echo: %+v %v", out, err)
	}
	cases := []struct {
		op   string
		args any
		code string
		msg  string
	}{
		{"nope", nil, CodeUnknownOp, `unknown operation "nope"`},
		{"echo", map[string]any{"text": "x", "extra": 1}, CodeBadRequest, `unknown field "extra"`},
		{"missing", nil, CodeNotFound, "no such thing"},
		{"echo", map[string]string{"text": strings.Repeat("a", MaxRequest)}, CodeTooLarge, "exceeds"},
	}
	for _, c := range cases {
		err := Call(ctx, path, c.op, c.args, nil)
		var e *Error
		if !errors.As(err, &e) || e.Code != c.code || !strings.Contains(e.Message, c.msg) {
			t.Errorf("%s: err %v, want code %s with %q", c.op, err, c.code, c.msg)
		}
	}
	if err := Call(ctx, path, "change", nil, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var sawChange, sawMissing bool
	for _, r := range *recs {
		if r.cred.UID != uint32(os.Getuid()) || r.cred.PID == 0 {
			t.Errorf("recorded caller %+v, want uid %d and a pid (SO_PEERCRED)", r.cred, os.Getuid())
		}
		sawChange = sawChange || (r.op == "change" && r.err == nil)
		sawMissing = sawMissing || (r.op == "missing" && CodeOf(r.err) == CodeNotFound)
		if r.op == "echo" && r.err == nil {
			t.Errorf("a successful read-only request was reported: %+v", r)
		}
	}
	if !sawChange || !sawMissing {
		t.Fatalf("audit hook saw %+v; want the mutating request and the failed one", *recs)
	}
}

func TestRawProtocolStrictness(t *testing.T) {
	path, _, _ := start(t, nil)
	cases := []struct{ in, want string }{
		{`{"v":2,"op":"echo"}`, "protocol version 2"},
		{`{"v":1,"op":"echo","x":true}`, "unknown field"},
		{`{"v":1,"op":"echo"} {}`, "trailing data"},
		{`not json`, "invalid character"},
	}
	for _, c := range cases {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte(c.in + "\n"))
		line, err := readLine(conn, MaxResponse)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		var resp Response
		if err := json.Unmarshal(line, &resp); err != nil || resp.OK || resp.Error.Code != CodeBadRequest || !strings.Contains(resp.Error.Message, c.want) {
			t.Errorf("%s -> %s, want bad_request with %q", c.in, line, c.want)
		}
	}
}

func TestAuthorizeDenies(t *testing.T) {
	path, recs, mu := start(t, func(c *Config) {
		c.Authorize = func(_ context.Context, cred rbac.Cred, op string, _ rbac.Operation) error {
			if op == "change" {
				return errors.New("uid may not change things")
			}
			return nil
		}
	})
	err := Call(context.Background(), path, "change", nil, nil)
	if CodeOf(err) != CodeDenied || !strings.Contains(err.Error(), "may not change") {
		t.Fatalf("err %v, want denied", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(*recs) != 1 || (*recs)[0].op != "change" || CodeOf((*recs)[0].err) != CodeDenied {
		t.Fatalf("recorded %+v, want one denial", *recs)
	}
}

func TestClientCancelCancelsOperation(t *testing.T) {
	var opCtxErr = make(chan error, 1)
	path, _, _ := start(t, func(c *Config) {
		c.Ops["block"] = Op{Permission: rbac.CtlStatus, Fn: func(ctx context.Context, _ rbac.Cred, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			opCtxErr <- ctx.Err()
			return nil, ctx.Err()
		}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := Call(ctx, path, "block", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	select {
	case err := <-opCtxErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("operation ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the daemon-side operation was not cancelled when the client went away")
	}
}

func TestListenSocketStates(t *testing.T) {
	path, _, _ := start(t, nil)
	if _, err := Listen(Config{Path: path}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen: %v, want ErrInUse", err)
	}
	// A stale socket (its server died without removing it) is replaced.
	dir, _ := os.MkdirTemp("", "cx")
	defer os.RemoveAll(dir)
	stale := filepath.Join(dir, "control.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(Config{Path: stale})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s.Close()
	if err := os.WriteFile(stale, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Config{Path: stale}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
	if err := Call(context.Background(), filepath.Join(dir, "none.sock"), "echo", nil, nil); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("no daemon: %v", err)
	}
}

// TestAuthorizeGetsTheOpsPermission: the server hands Config.Authorize the permission declared with the
// operation (agent/api's table), so the check lives in one place and needs no map of its own.
func TestAuthorizeGetsTheOpsPermission(t *testing.T) {
	got := make(chan rbac.Operation, 2)
	path, _, _ := start(t, func(c *Config) {
		c.Authorize = func(_ context.Context, _ rbac.Cred, _ string, perm rbac.Operation) error {
			got <- perm
			if perm == rbac.CtlGrant {
				return errors.New("no grants for you")
			}
			return nil
		}
	})
	ctx := context.Background()
	if err := Call(ctx, path, "echo", echoArgs{Text: "x"}, nil); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != rbac.CtlStatus {
		t.Fatalf("echo authorized as %q, want %q", p, rbac.CtlStatus)
	}
	if err := Call(ctx, path, "change", nil, nil); CodeOf(err) != CodeDenied {
		t.Fatalf("change: %v, want denied", err)
	}
	if p := <-got; p != rbac.CtlGrant {
		t.Fatalf("change authorized as %q, want %q", p, rbac.CtlGrant)
	}
}

// TestListenRefusesOpsWithoutPermission: an operation without a control permission of rbac's table is
// never served (the server does not start).
func TestListenRefusesOpsWithoutPermission(t *testing.T) {
	fn := func(context.Context, rbac.Cred, json.RawMessage) (any, error) { return nil, nil }
	for _, tc := range []struct {
		name string
		op   Op
	}{
		{"none", Op{Fn: fn}},
		{"peer", Op{Fn: fn, Permission: rbac.OpTaskRequest}},
		{"unknown", Op{Fn: fn, Permission: "control.teleport"}},
		{"no function", Op{Permission: rbac.CtlStatus}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "cx")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			s, err := Listen(Config{Path: filepath.Join(dir, "c.sock"), Ops: map[string]Op{"x": tc.op}})
			if err == nil {
				_ = s.Close()
				t.Fatalf("Listen served %+v", tc.op)
			}
			if !strings.Contains(err.Error(), `control operation "x"`) {
				t.Fatalf("error %v does not name the operation", err)
			}
		})
	}
}
