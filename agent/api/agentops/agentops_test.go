package agentops

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

type fakeIdentity struct{ ping error }

func (fakeIdentity) ID() identity.ID                  { return identity.ID{} }
func (fakeIdentity) Current() custody.Generation      { return custody.Generation{} }
func (fakeIdentity) KeystoreURI() string              { return "pkcs11:token=t" }
func (f fakeIdentity) Ping(ctx context.Context) error { return f.ping }

type fakeDelegations struct{}

func (fakeDelegations) Mode() delegation.Mode    { return delegation.Mode("delegated") }
func (fakeDelegations) Live() []*delegation.Keys { return nil }

type fakeTasks struct{}

func (fakeTasks) Handlers() []string { return nil }
func (fakeTasks) Stats() tasks.Stats { return tasks.Stats{} }

type fakeAudit struct{}

func (fakeAudit) Head(context.Context) (audit.Head, error) { return audit.Head{Seq: 7}, nil }

// TestStatusHealthAndPendingRestart (issue 18, defect 8): status reports whether the keystore answers
// (the audit log's state is AuditWriting, ADR 0089), and, after a reload, the parts of the loaded configuration that wait for
// a restart, or that the file has changed since it was loaded (or would not load).
func TestStatusHealthAndPendingRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("metrics: {address: \"127.0.0.1:9464\"}\nlog: {level: info}\n")
	started, digest, err := config.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	// A reload of a file that changes the metrics address (restart-only) and the log level (applied):
	// the configuration in force has the new log level and the old metrics address.
	write("metrics: {address: \"127.0.0.1:9465\"}\nlog: {level: debug}\n")
	loaded, digest2, err := config.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	inForce := *loaded
	inForce.Metrics = started.Metrics

	status := func(id fakeIdentity, al fakeAudit, dg string, cfg *config.Config) api.Status {
		t.Helper()
		o := &ops{Deps{Identity: id, Delegations: fakeDelegations{}, Tasks: fakeTasks{}, Audit: al,
			Info: Info{ConfigPath: path, Digest: func() string { return dg }, Control: func() string { return "" }, MetricsURL: func() string { return "" },
				Sessions: func() []api.SessionStatus { return nil }, Transports: func() []api.TransportStatus { return nil },
				Config: func() *config.Config { return cfg }}}}
		v, err := o.status(context.Background(), rbac.Cred{}, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		return v.(api.Status)
	}

	st := status(fakeIdentity{}, fakeAudit{}, digest2, &inForce)
	if !slices.Equal(st.ConfigPendingRestart, []string{"metrics"}) || st.ConfigFileDigest != "" || st.ConfigFileError != "" {
		t.Errorf("after the reload: pending %v, file digest %q, file error %q; want [metrics]", st.ConfigPendingRestart, st.ConfigFileDigest, st.ConfigFileError)
	}
	if !st.Health.Keystore.OK || st.Health.Keystore.Detail != "pkcs11" {
		t.Errorf("health %+v, want the keystore ok", st.Health)
	}

	// Nothing waits when the file in force is the one loaded at the start.
	write("metrics: {address: \"127.0.0.1:9464\"}\nlog: {level: info}\n")
	if st := status(fakeIdentity{}, fakeAudit{}, digest, started); len(st.ConfigPendingRestart) != 0 || st.ConfigPendingRestart == nil {
		t.Errorf("at the start: pending %#v, want []", st.ConfigPendingRestart)
	}
	// The file changed since it was loaded: its digest, nothing guessed.
	if st := status(fakeIdentity{}, fakeAudit{}, digest2, &inForce); st.ConfigFileDigest != digest || len(st.ConfigPendingRestart) != 0 {
		t.Errorf("changed file: digest %q pending %v, want %s and none", st.ConfigFileDigest, st.ConfigPendingRestart, digest)
	}
	write("limits: {drain_timeout: 30}\n")
	if st := status(fakeIdentity{}, fakeAudit{}, digest2, &inForce); !strings.Contains(st.ConfigFileError, "limits.drain_timeout: 30 is not a duration") {
		t.Errorf("file that would not load: %q", st.ConfigFileError)
	}

	// Failures.
	st = status(fakeIdentity{ping: errors.New("CKR_DEVICE_REMOVED")}, fakeAudit{}, digest, started)
	if st.Health.Keystore.OK || !strings.Contains(st.Health.Keystore.Error, "CKR_DEVICE_REMOVED") {
		t.Errorf("health with a failing keystore: %+v", st.Health)
	}
}
