package api

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
)

// TestTableMatchesRBAC: every operation of Table has a control permission of rbac's table, and every
// control operation of rbac's table is the permission of at least one operation in Table (no permission
// names an operation nothing serves).
func TestTableMatchesRBAC(t *testing.T) {
	named := map[rbac.Operation]bool{}
	seen := map[string]bool{}
	for _, s := range Table() {
		if s.Name == "" || seen[s.Name] {
			t.Errorf("operation %q: empty or listed twice", s.Name)
		}
		seen[s.Name] = true
		req, err := rbac.Required(s.Permission)
		if err != nil || req.From != rbac.FromLocal || req.Permission == "" {
			t.Errorf("operation %s: permission %q is not a control operation of rbac's table (%+v, %v)", s.Name, s.Permission, req, err)
		}
		named[s.Permission] = true
		if s.Args == nil || s.Result == nil || s.Use == "" {
			t.Errorf("operation %s: Args, Result and Use must be set", s.Name)
		}
	}
	for _, r := range rbac.Table {
		if r.From == rbac.FromLocal && !named[r.Op] {
			t.Errorf("rbac's table names %s, which no served control operation needs: serve it or remove it", r.Op)
		}
		// A peer operation is the handshake or a message type of the agent protocol (what the message
		// dispatcher checks); nothing else arrives from a peer.
		if r.From == rbac.FromPeer && r.Op != rbac.OpHandshake && !envelope.MessageType(r.Op).Valid() {
			t.Errorf("rbac's table names peer operation %s, which is no message type of the protocol: serve it or remove it", r.Op)
		}
	}
}

// TestOpsNeedsTheWholeTable: the daemon's handlers and Table must be the same set.
func TestOpsNeedsTheWholeTable(t *testing.T) {
	h := func(context.Context, rbac.Cred, json.RawMessage) (any, error) { return None{}, nil }
	all := map[string]Handler{}
	for _, s := range Table() {
		all[s.Name] = h
	}
	ops, err := Ops(all)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Table() {
		if o := ops[s.Name]; o.Permission != s.Permission || o.Mutating != s.Mutating || o.Fn == nil {
			t.Errorf("%s: served as %+v, want permission %s mutating %v", s.Name, o, s.Permission, s.Mutating)
		}
	}
	delete(all, OpStatus)
	all["teleport"] = h
	if _, err := Ops(all); err == nil || !strings.Contains(err.Error(), "[status]") || !strings.Contains(err.Error(), "[teleport]") {
		t.Fatalf("Ops with status missing and teleport extra: %v", err)
	}
}

// TestClientCoversTheTable: the client has one method per operation of Table, each sending that
// operation with the table's argument type and decoding the table's result type.
func TestClientCoversTheTable(t *testing.T) {
	dir, err := os.MkdirTemp("", "api") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	got := make(chan string, 1)
	handlers := map[string]Handler{}
	for _, s := range Table() {
		handlers[s.Name] = func(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
			args := reflect.New(reflect.TypeOf(s.Args)).Interface()
			if err := control.DecodeArgs(raw, args); err != nil {
				return nil, err
			}
			got <- s.Name
			return s.Result, nil
		}
	}
	ops, err := Ops(handlers)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := control.Listen(control.Config{Path: filepath.Join(dir, ControlFile), Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })

	c := ForHome(dir)
	ctx := reflect.ValueOf(context.Background())
	called := map[string]bool{}
	ct := reflect.TypeOf(c)
	for i := 0; i < ct.NumMethod(); i++ {
		m := ct.Method(i)
		if m.Name == "Path" {
			continue
		}
		in := []reflect.Value{reflect.ValueOf(c), ctx}
		for j := 2; j < m.Type.NumIn(); j++ {
			in = append(in, reflect.Zero(m.Type.In(j)))
		}
		out := m.Func.Call(in)
		if err, _ := out[1].Interface().(error); err != nil {
			t.Errorf("%s: %v", m.Name, err)
			continue
		}
		op := <-got
		spec, _ := Lookup(op)
		if called[op] {
			t.Errorf("%s sends %s, which another method sends too", m.Name, op)
		}
		called[op] = true
		if want := reflect.TypeOf(spec.Result); out[0].Type() != want {
			t.Errorf("%s answers %v, the table says %s answers %v", m.Name, out[0].Type(), op, want)
		}
		if m.Type.NumIn() == 3 && m.Type.In(2) != reflect.TypeOf(spec.Args) {
			t.Errorf("%s takes %v, the table says %s takes %v", m.Name, m.Type.In(2), op, reflect.TypeOf(spec.Args))
		}
	}
	for _, s := range Table() {
		if !called[s.Name] {
			t.Errorf("no client method sends %s", s.Name)
		}
	}
}

// TestJoinRefusesAnOperationHandledTwice: two services may not both handle one operation.
func TestJoinRefusesAnOperationHandledTwice(t *testing.T) {
	h := func(context.Context, rbac.Cred, json.RawMessage) (any, error) { return None{}, nil }
	hs, err := Join(Handlers{OpStatus: h}, Handlers{OpTaskList: h})
	if err != nil || len(hs) != 2 || hs[OpStatus] == nil || hs[OpTaskList] == nil {
		t.Fatalf("Join of two services: %v %v", hs, err)
	}
	if _, err := Join(Handlers{OpStatus: h, OpTaskList: h}, Handlers{OpStatus: h}); err == nil || !strings.Contains(err.Error(), "[status]") {
		t.Fatalf("Join with status handled twice: %v", err)
	}
}
