package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/gateway"
)

// TestGatewayWiring: with gateway.listen set, the daemon serves the HTTP API with keys made over the
// control socket, and a task submitted through it is the daemon's task (the same handlers).
func TestGatewayWiring(t *testing.T) {
	ctx := context.Background()
	home, cust := testHome(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, fmt.Sprintf("metrics: {address: \"127.0.0.1:0\"}\ngateway: {listen: %q}\n", addr))
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(ctx)
	sock := filepath.Join(home, ControlFile)
	var k api.GatewayKeyCreated
	if err := control.Call(ctx, sock, api.OpGatewayKeyCreate, api.GatewayKeyCreateArgs{Name: "ci", Roles: []string{"gateway_service", "task_submitter"}}, &k); err != nil {
		t.Fatal(err)
	}
	peer, _ := testHome(t)
	body := fmt.Sprintf(`{"to":%q,"handler":"sha256","input":"eA"}`, mustID(t, peer))
	req, _ := http.NewRequest("POST", "http://"+addr+"/v1/tasks", bytes.NewReader([]byte(body)))
	req.Header.Set("Authorization", "Bearer "+k.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v api.TaskView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != 202 {
		t.Fatalf("submit: %d %v", resp.StatusCode, err)
	}
	var got api.TaskView
	if err := control.Call(ctx, sock, api.OpTaskGet, api.GetArgs{TaskID: v.TaskID}, &got); err != nil || got.TaskID != v.TaskID || got.Handler != "sha256" {
		t.Fatalf("the control socket does not see the gateway's task: %+v %v", got, err)
	}
	// Revoked over the control socket: the key is refused at once.
	if err := control.Call(ctx, sock, api.OpGatewayKeyRevoke, api.GatewayKeyArgs{Name: "ci"}, nil); err != nil {
		t.Fatal(err)
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/v1/tasks/"+v.TaskID, nil)
	req.Header.Set("Authorization", "Bearer "+k.Token)
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	var p gateway.Problem
	if err := json.NewDecoder(resp2.Body).Decode(&p); err != nil || resp2.StatusCode != 401 || p.Reason != "key_revoked" {
		t.Fatalf("revoked key: %d %+v %v", resp2.StatusCode, p, err)
	}
}
