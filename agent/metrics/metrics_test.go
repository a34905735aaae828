package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/test/testenv"
)

// The audit writer reports to Metrics through its own interface.
var _ audit.Observer = (*Metrics)(nil)

// exercise records something in every metric family.
func exercise(m *Metrics) {
	m.AuthSucceeded()
	m.AuthFailed("bad_signature")
	m.OperationFailed("task")
	m.Message("tcp", DirectionIn, 120)
	m.Message("tcp", DirectionOut, 80)
	m.SessionOpened("tcp")
	m.ReplayRefused("replayed_message")
	m.RateLimited("messages")
	m.SetPeers("blocked", 2)
	m.PluginRestarted("transport-tcp")
	m.PluginSandbox("tcp", map[string]bool{"landlock": true, "seccomp": false})
	m.ObserveKeystore("pkcs11", OpSign, 3*time.Millisecond, nil)
	m.ObserveKeystore("pkcs11", OpSign, time.Millisecond, keystore.Errorf(keystore.ErrUnavailable, "token removed"))
	m.AuditRecordsWritten(3)
	m.AuditWriteFailed(errors.New("disk full"))
	m.AuditCheckpointFailed(errors.New("token removed"))
	m.AuditAckLatency(2 * time.Millisecond)
	// ops.go
	m.TaskRefused("busy")
	m.ControlFailed("grant.install")
	m.AuditFailing(false)
	m.AuditRecordLost()
	m.IdentityRotated(ResultSuccess)
	m.IdentityKeyDestroyed()
	m.WatchKeystore(context.Background(), "pkcs11", func(context.Context) error { return nil }, 0, nil)
	m.WatchHome(os.TempDir())
	m.TaskQueue(func() int { return 1 }, func() int { return 256 })
	m.IdentityKeyAge(func() time.Time { return time.Unix(1, 0) }, func() time.Duration { return 0 }, time.Now)
}

func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body
}

// wantFamilies are the custos_ metric families the agent must expose.
var wantFamilies = []string{
	"custos_auth_attempts_total", "custos_operations_failed_total", "custos_messages_total",
	"custos_message_bytes_total", "custos_sessions_active", "custos_keystore_operation_duration_seconds",
	"custos_keystore_errors_total", "custos_replays_refused_total", "custos_rate_limited_total", "custos_peers",
	"custos_plugin_restarts_total", "custos_plugin_sandbox", "custos_audit_records_total", "custos_audit_write_failures_total",
	"custos_audit_checkpoint_failures_total", "custos_audit_ack_duration_seconds",
	"custos_keystore_up", "custos_tasks_refused_total", "custos_audit_failing", "custos_audit_records_lost_total",
	"custos_identity_rotations_total", "custos_identity_keys_destroyed_total", "custos_home_free_bytes",
	"custos_home_size_bytes", "custos_tasks_queued", "custos_tasks_queue_limit", "custos_identity_key_age_seconds",
	"custos_identity_rotation_interval_seconds",
}

func TestScrapePassesPromtool(t *testing.T) {
	promtool := testenv.LookTool(t, "promtool", "prometheus")
	m := New()
	exercise(m)
	srv, err := Serve(context.Background(), m, ServeOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	body := scrape(t, srv.URL())

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}

	// Every family is there; ours are custos_*, the rest are the Go and process collectors.
	fams := families(body)
	for _, f := range wantFamilies {
		if !fams[f] {
			t.Errorf("family %s missing from /metrics", f)
		}
	}
	for f := range fams {
		if !strings.HasPrefix(f, "custos_") && !strings.HasPrefix(f, "go_") && !strings.HasPrefix(f, "process_") {
			t.Errorf("unexpected family %s", f)
		}
	}
	if !fams["go_goroutines"] || !fams["process_cpu_seconds_total"] {
		t.Error("Go or process collector missing")
	}
	for _, want := range []string{
		`custos_auth_attempts_total{reason="bad_signature",result="failure"} 1`,
		`custos_auth_attempts_total{reason="",result="success"} 1`,
		`custos_auth_attempts_total{reason="timeout",result="failure"} 0`, // pre-registered
		`custos_keystore_errors_total{backend="pkcs11",kind="unavailable",operation="sign"} 1`,
		`custos_keystore_operation_duration_seconds_count{backend="pkcs11",operation="sign"} 2`,
		`custos_message_bytes_total{direction="in",transport="tcp"} 120`,
		`custos_peers{trust_level="blocked"} 2`,
		`custos_peers{trust_level="trusted"} 0`,
		`custos_audit_records_total 3`,
	} {
		if !bytes.Contains(body, []byte(want+"\n")) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Only /metrics is served.
	resp, err := http.Get(strings.TrimSuffix(srv.URL(), "/metrics") + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/debug/pprof/: %s", resp.Status)
	}
}

var familyLine = regexp.MustCompile(`(?m)^# TYPE (\S+) `)

func families(body []byte) map[string]bool {
	out := map[string]bool{}
	for _, m := range familyLine.FindAllSubmatch(body, -1) {
		out[string(m[1])] = true
	}
	return out
}

func TestOwnRegistry(t *testing.T) {
	a, b := New(), New() // two agents in one process must not collide
	a.AuthFailed("bad_signature")
	if v := testutil.ToFloat64(b.authAttempts.WithLabelValues(ResultFailure, "bad_signature")); v != 0 {
		t.Fatalf("metrics leak between registries: %v", v)
	}
	def, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range def {
		if strings.HasPrefix(f.GetName(), "custos_") {
			t.Fatalf("%s is in the default registry", f.GetName())
		}
	}
	var nilM *Metrics // optional instrumentation: a nil *Metrics records nothing
	exercise(nilM)
}

func TestLabelValuesBounded(t *testing.T) {
	m := New()
	for _, r := range []string{"bad_signature", "Bad Signature", strings.Repeat("a", 49), "", "x\ny", "ümlaut"} {
		m.AuthFailed(r)
	}
	got := testutil.ToFloat64(m.authAttempts.WithLabelValues(ResultFailure, Other))
	if got != 5 {
		t.Fatalf("%v attempts counted as %q, want 5", got, Other)
	}
	if got := testutil.ToFloat64(m.authAttempts.WithLabelValues(ResultFailure, "bad_signature")); got != 1 {
		t.Fatalf("bad_signature: %v", got)
	}
}

func TestServeRefusesNonLoopback(t *testing.T) {
	tests := []struct {
		addr  string
		allow bool
		want  string // "" for success
	}{
		{"127.0.0.1:0", false, ""},
		{"localhost:0", false, ""},
		{":0", false, "listens on every interface"},
		{"0.0.0.0:0", false, "0.0.0.0 is not a loopback address"},
		{"[::]:0", false, ":: is not a loopback address"},
		{"192.0.2.10:9464", false, "192.0.2.10 is not a loopback address"},
		{"metrics.example.com:9464", false, "names a host, not a loopback IP address"},
		{"0.0.0.0:0", true, ""},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s allow=%v", tc.addr, tc.allow), func(t *testing.T) {
			srv, err := Serve(context.Background(), New(), ServeOptions{Addr: tc.addr, AllowNonLoopback: tc.allow, Logger: quiet()})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				scrape(t, srv.URL())
				srv.Close()
				return
			}
			if !errors.Is(err, ErrNotLoopback) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve(%q): %v; want ErrNotLoopback saying %q", tc.addr, err, tc.want)
			}
		})
	}
	if err := CheckAddr("127.0.0.1", false); err == nil || !strings.Contains(err.Error(), "use host:port") {
		t.Fatalf("CheckAddr without port: %v", err)
	}
	// The server stops with its context.
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Serve(ctx, New(), ServeOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-srv.done
	if _, err := http.Get(srv.URL()); err == nil {
		t.Fatal("server still answers after its context ended")
	}
}

func TestInstrumentKeystore(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ks, err := software.Open(ctx, "file:"+filepath.Join(dir, "keys")+"?passphrase-source=file:"+pass+"&work-factor=10", keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := New()
	iks := InstrumentKeystore(ks, m)
	defer iks.Close()
	if iks.(interface{ Unwrap() keystore.Keystore }).Unwrap() != ks {
		t.Fatal("Unwrap does not return the keystore")
	}
	key, err := iks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "id"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := iks.Signer(ctx, key.URI)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		sig, err := s.Sign(ctx, []byte("message"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Public().Verify([]byte("message"), sig); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := iks.List(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = iks.Signer(ctx, "file:"+filepath.Join(dir, "keys", "missing.key"))
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Signer of a missing key: %v", err)
	}
	_, err = iks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.Ed25519, Label: "id"})
	if !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("Generate twice: %v", err)
	}
	count := func(op string) int { return int(histCount(t, m, "software", op)) }
	for op, want := range map[string]int{OpGenerate: 2, OpSigner: 2, OpSign: 3, OpList: 1} {
		if got := count(op); got != want {
			t.Errorf("%s observed %d times, want %d", op, got, want)
		}
	}
	for _, c := range []struct{ op, kind string }{{OpSigner, "not_found"}, {OpGenerate, "exists"}} {
		if v := testutil.ToFloat64(m.ksErrors.WithLabelValues("software", c.op, c.kind)); v != 1 {
			t.Errorf("errors{%s,%s} = %v, want 1", c.op, c.kind, v)
		}
	}
	if v := testutil.ToFloat64(m.ksErrors.WithLabelValues("software", OpSign, "other")); v != 0 {
		t.Errorf("sign errors %v", v)
	}
	if err := iks.Destroy(ctx, key.URI); err != nil {
		t.Fatal(err)
	}
	if got := count(OpDestroy); got != 1 {
		t.Errorf("destroy observed %d times", got)
	}
	if InstrumentKeystore(ks, nil) != ks {
		t.Error("a nil *Metrics must not wrap")
	}
}

// pingKeystore adds the optional Pinger capability to a real keystore, to test that the wrapper keeps it.
type pingKeystore struct {
	keystore.Keystore
	pings int
}

func (p *pingKeystore) Ping(context.Context) error { p.pings++; return keystore.ErrUnavailable }

func TestInstrumentKeepsPinger(t *testing.T) {
	dir := t.TempDir()
	ks, err := software.Open(context.Background(), "file:"+filepath.Join(dir, "keys"), keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := New()
	if _, ok := InstrumentKeystore(ks, m).(keystore.Pinger); ok {
		t.Fatal("the wrapper claims Pinger for a keystore without it")
	}
	pk := &pingKeystore{Keystore: ks}
	w, ok := InstrumentKeystore(pk, m).(keystore.Pinger)
	if !ok {
		t.Fatal("the wrapper dropped Pinger")
	}
	if err := w.Ping(context.Background()); !errors.Is(err, keystore.ErrUnavailable) || pk.pings != 1 {
		t.Fatalf("Ping: %v, %d pings", err, pk.pings)
	}
	if v := testutil.ToFloat64(m.ksErrors.WithLabelValues("software", OpPing, "unavailable")); v != 1 {
		t.Fatalf("ping errors %v", v)
	}
}

func histCount(t *testing.T, m *Metrics, backend, op string) uint64 {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "custos_keystore_operation_duration_seconds" {
			continue
		}
		for _, mt := range f.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["backend"] == backend && l["operation"] == op {
				return mt.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

func TestAuditObserverCounts(t *testing.T) {
	ctx := context.Background()
	signer, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	m := New()
	l, err := audit.Open(ctx, t.TempDir(), audit.Options{Signer: signer, AgentID: "ed25519:test", Observer: m, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := l.Append(ctx, audit.Record{Type: audit.AccessDenied, Outcome: audit.OutcomeDenied}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// 5 records, plus audit.created, its checkpoint and the closing seal (at least).
	if v := testutil.ToFloat64(m.auditRecords); v < 8 {
		t.Fatalf("custos_audit_records_total = %v, want at least 8", v)
	}
	if n := histSamples(t, m, "custos_audit_ack_duration_seconds"); n != 5 {
		t.Fatalf("%d ack latencies observed, want 5", n)
	}
	if v := testutil.ToFloat64(m.auditFailures); v != 0 {
		t.Fatalf("write failures %v", v)
	}
}

func histSamples(t *testing.T, m *Metrics, name string) uint64 {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// TestAlertRules runs promtool on configs/alerts.yml and its unit tests, and checks that every metric the
// rules use is one this package exposes.
func TestAlertRules(t *testing.T) {
	promtool := testenv.LookTool(t, "promtool", "prometheus")
	rules := filepath.Join("..", "..", "configs", "alerts.yml")
	tests := filepath.Join("..", "..", "configs", "alerts_test.yml")
	for _, args := range [][]string{{"check", "rules", rules}, {"test", "rules", tests}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	text, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	have := exportedNames(t) // grafana_test.go
	used := map[string]bool{}
	for _, name := range regexp.MustCompile(`custos_[a-z_]+`).FindAllString(string(text), -1) {
		used[name] = true
	}
	if len(used) < 6 {
		t.Fatalf("the rules use only %d custos metrics", len(used))
	}
	var missing []string
	for name := range used {
		if !have[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("alerts.yml uses metrics the agent does not expose: %v", missing)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestLabelsFromRegistry: denial and authentication-failure labels are codes of the failure-code registry
// (reason): a string the registry does not know is counted as "other", and every denial code of the
// rbac, policy and admission domains has its series from the start, at zero.
func TestLabelsFromRegistry(t *testing.T) {
	m := New()
	m.AccessDenied("no_grant", true)
	m.AccessDenied("made_up", true)
	m.AuthFailed("made_up")
	if got := testutil.ToFloat64(m.accessDenied.WithLabelValues("no_grant", "enforced")); got != 1 {
		t.Fatalf("no_grant: %v", got)
	}
	if got := testutil.ToFloat64(m.accessDenied.WithLabelValues(Other, "enforced")); got != 1 {
		t.Fatalf("an unregistered denial code counted %v times as %q, want 1", got, Other)
	}
	if got := testutil.ToFloat64(m.authAttempts.WithLabelValues(ResultFailure, Other)); got != 1 {
		t.Fatalf("an unregistered auth failure code counted %v times as %q, want 1", got, Other)
	}
	want := 0
	for _, d := range []reason.Domain{reason.DomainRBAC, reason.DomainPolicy, reason.DomainAdmission} {
		want += len(reason.InDomain(d))
	}
	// +1 for the "other" series counted above.
	if got := testutil.CollectAndCount(m.accessDenied); got != want+1 {
		t.Fatalf("%d access-denied series, want %d (every denial code pre-registered, plus other)", got, want+1)
	}
}
