//go:build linux

package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/rbac"
)

// buildTCPPlugin compiles the real TCP transport plugin into dir and returns its path and SHA-256.
func buildTCPPlugin(t *testing.T, dir string) (string, string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the transport plugin: %v", err)
	}
	bin := filepath.Join(dir, "transport-tcp")
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/custos-agent/custos/cmd/transport-tcp").CombinedOutput()
	if err != nil {
		t.Fatalf("build transport-tcp: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return bin, hex.EncodeToString(sum[:])
}

// The daemon's control socket refuses its transport plugin processes (issue 11, item 3). Without the
// refusal a plugin process, of the daemon's own uid, is authorized by the default local mapping for the
// operations that make the identity key sign (grant.issue, stake.set, grant.revoke, identity.reload): the
// control server must refuse the real plugin process before any authorization, with a reason naming it, and
// still serve the daemon's own process.
func TestControlRefusesPluginProcesses(t *testing.T) {
	ctx := context.Background()
	home, cust := testHome(t)
	plugin, sum := buildTCPPlugin(t, t.TempDir())
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, fmt.Sprintf("metrics: {disabled: true}\ntransports:\n  - {name: tcp, plugin: %s, sha256: %s, listen: [\"127.0.0.1:0\"]}\n", plugin, sum))
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	pid := d.plugins.Get("tcp").T.PID()
	if pid <= 0 {
		t.Fatalf("plugin pid %d", pid)
	}
	if got := d.plugins.PIDs(); len(got) != 1 || got[0] != pid {
		t.Fatalf("pluginPIDs() = %v, want [%d]", got, pid)
	}
	plug := rbac.Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(pid)}
	// The authorizer alone authorizes the plugin's credentials (the daemon's uid) for the operations that
	// make the identity key sign or change trust: the refusal must come before it.
	for _, op := range []string{api.OpGrantIssue, api.OpStakeSet, api.OpRevoke, api.OpIdentityReload} {
		spec, _ := api.Lookup(op)
		if err := d.authz.AuthorizeOp(ctx, plug, op, spec.Permission); err != nil {
			t.Logf("the local authorizer already refuses %s for the plugin's uid: %v", op, err)
		}
	}
	refused, why := d.ctl.Refused(plug)
	want := fmt.Sprintf("is transport plugin process %d", pid)
	if !refused || !strings.Contains(why, want) {
		t.Fatalf("plugin process %d: refused=%v %q, want refused naming %q", pid, refused, why, want)
	}
	if refused, why := d.ctl.Refused(rbac.Cred{UID: plug.UID, GID: plug.GID, PID: int32(os.Getpid())}); refused {
		t.Fatalf("the daemon's own process was refused: %s", why)
	}
}
