package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
)

func custodyOpts() custody.Options {
	return custody.Options{Openers: map[string]keystore.OpenFunc{software.Scheme: software.Open}, Logger: quietLogger()}
}

// openAgain opens the identity in home a second time, as agentctl in another process would.
func openAgain(t *testing.T, home string) *custody.Custody {
	t.Helper()
	c, err := custody.Open(context.Background(), home, custodyOpts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func types(recs []audit.Record) string {
	var s []string
	for _, r := range recs {
		s = append(s, string(r.Type))
	}
	return strings.Join(s, ",")
}

// TestKeyEventRecords: the records computed from two views of an identity, for each custody operation.
func TestKeyEventRecords(t *testing.T) {
	ctx := context.Background()
	home, c := testHome(t)
	id := c.ID().String()
	type step struct {
		name string
		op   func() error
		want string // record types
		gens string // their generations
	}
	steps := []step{
		{"rotate with grace", func() error { _, err := c.Rotate(ctx, custody.RotateRequest{Grace: time.Hour}); return err }, "key.rotate", "1"},
		{"nothing changed", func() error { return c.Reload(ctx) }, "", ""},
		{"rotate, destroying the old key", func() error {
			_, err := c.Rotate(ctx, custody.RotateRequest{DestroyOld: true})
			return err
		}, "key.rotate,key.destroy", "2,1"},
		{"two rotations at once", func() error {
			for range 2 {
				if _, err := c.Rotate(ctx, custody.RotateRequest{Grace: time.Hour}); err != nil {
					return err
				}
			}
			return nil
		}, "key.rotate,key.rotate", "3,4"},
	}
	// Inception first: a new identity (no earlier view).
	recs := custody.KeyEventRecords(nil, c.Keys(), c.Log(), "uid:1", custody.SourceAgentctl)
	if types(recs) != "key.init" || recs[0].Subject != id || recs[0].Actor != "uid:1" || recs[0].Details["generation"] != uint64(0) ||
		recs[0].Details["source"] != custody.SourceAgentctl || recs[0].Details["recovery"] != false {
		t.Fatalf("init: %+v", recs)
	}
	for _, k := range []string{"key_uri", "next_key_uri"} {
		if u, _ := recs[0].Details[k].(string); !strings.HasPrefix(u, "file:"+filepath.Join(home, custody.KeysDir)) || strings.Contains(u, "?") {
			t.Fatalf("init %s %q: want the key file URI without its query (passphrase source)", k, u)
		}
	}
	for _, s := range steps {
		before := c.Keys()
		if err := s.op(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		recs := custody.KeyEventRecords(before, c.Keys(), c.Log(), "uid:1", custody.SourceDaemon)
		var gens []string
		for _, r := range recs {
			gens = append(gens, fmt.Sprint(r.Details["generation"]))
			if r.Subject != id || r.Outcome != audit.OutcomeSuccess || r.Details["source"] != custody.SourceDaemon {
				t.Fatalf("%s: %+v", s.name, r)
			}
			if err := r.Type.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		if types(recs) != s.want || strings.Join(gens, ",") != s.gens {
			t.Fatalf("%s: records %q generations %q, want %q %q", s.name, types(recs), strings.Join(gens, ","), s.want, s.gens)
		}
	}
}

// TestIdentityReloadRecordsKeyEvents: another process (agentctl) rotates the identity of a running daemon
// and asks it to reload (OpIdentityReload) while a SIGHUP-style Reload runs at the same time: the daemon
// writes key.rotate and key.destroy exactly once, issues and records a delegation under the new key, signs
// checkpoints with it, and the sealed log verifies.
func TestIdentityReloadRecordsKeyEvents(t *testing.T) {
	ctx := context.Background()
	home, cust := testHome(t)
	cfgPath := filepath.Join(home, "agent.yaml")
	cfg, digest := writeConfig(t, cfgPath, "metrics: {disabled: true}\n")
	d, err := Start(ctx, Options{Home: home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	sock := filepath.Join(home, ControlFile)

	// Nothing changed: nothing recorded.
	var res api.IdentityReloadResult
	if err := control.Call(ctx, sock, api.OpIdentityReload, nil, &res); err != nil || res.Changed || len(res.Recorded) != 0 || res.Generation != 0 {
		t.Fatalf("reload without a change: %+v %v", res, err)
	}
	// Arguments are refused like any other operation's.
	if err := control.Call(ctx, sock, api.OpIdentityReload, map[string]any{"generation": 3}, nil); control.CodeOf(err) != control.CodeBadRequest {
		t.Fatalf("reload with arguments: %v", err)
	}

	cli := openAgain(t, home)
	if _, err := cli.Rotate(ctx, custody.RotateRequest{DestroyOld: true}); err != nil {
		t.Fatal(err)
	}
	// The same change reported twice at once (agentctl's request and a SIGHUP): recorded once.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := d.Reload(ctx); err != nil {
			t.Error(err)
		}
	}()
	if err := control.Call(ctx, sock, api.OpIdentityReload, nil, &res); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if res.Generation != 1 { // which of the two requests saw the change first is up to the scheduler
		t.Fatalf("reload after the rotation: %+v", res)
	}
	var st api.Status
	if err := control.Call(ctx, sock, api.OpStatus, nil, &st); err != nil || st.Generation != 1 {
		t.Fatalf("status after the rotation: %+v %v", st, err)
	}
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(home, AuditDir)
	rep, err := audit.Verify(dir, cli.Log())
	if err != nil || !rep.Sealed {
		t.Fatalf("audit log: %+v %v", rep, err)
	}
	if len(rep.Generations) == 0 || rep.Generations[len(rep.Generations)-1] != 1 {
		t.Fatalf("checkpoint generations %v: the seal must be signed by generation 1", rep.Generations)
	}
	var keyRecs []string
	err = audit.Query(ctx, dir, audit.Filter{Types: []string{"key.*"}}, func(e audit.Entry) error {
		keyRecs = append(keyRecs, string(e.Type)+"/"+toUint(e.Details["generation"])+"/"+e.Actor)
		if e.Subject != cust.ID().String() {
			t.Errorf("%s record about %q", e.Type, e.Subject)
		}
		if e.Type != audit.KeyDelegate && e.Details["source"] != custody.SourceDaemon {
			t.Errorf("%s record from %v", e.Type, e.Details["source"])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// key.delegate at start (generation 0); the rotation and destruction exactly once, attributed to
	// whichever request saw them first; a delegation under generation 1.
	got := strings.Join(keyRecs, " ")
	if !strings.HasPrefix(got, "key.delegate/0/") || strings.Count(got, "key.rotate/1/") != 1 || strings.Count(got, "key.destroy/0/") != 1 ||
		!strings.HasSuffix(got, "key.delegate/1/"+cust.ID().String()) {
		t.Fatalf("key records: %s", got)
	}
	if !strings.Contains(got, "key.rotate/1/uid:") && !strings.Contains(got, "key.rotate/1/operator") {
		t.Fatalf("key.rotate actor: %s", got)
	}
}

func toUint(v any) string {
	if n, ok := v.(json.Number); ok {
		return n.String()
	}
	return fmt.Sprintf("%T", v)
}
