package metrics

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
)

// TestOperationsFailedKinds: every operation kind custos_operations_failed_total's help names has its
// series from the start, and control failures are split into grant and control by the operation name.
func TestOperationsFailedKinds(t *testing.T) {
	m := New()
	for _, op := range FailedOperations {
		if !strings.Contains(gatherHelp(t, m, "custos_operations_failed_total"), op+" (") {
			t.Errorf("the help of custos_operations_failed_total does not explain %q", op)
		}
		if got := testutil.ToFloat64(m.failedOps.WithLabelValues(op)); got != 0 {
			t.Fatalf("%s starts at %v", op, got)
		}
	}
	m.ControlFailed("grant.install")
	m.ControlFailed("grant.revoke")
	m.ControlFailed("task.submit")
	m.OperationFailed(OpEnvelope)
	for op, want := range map[string]float64{OpGrant: 2, OpControl: 1, OpEnvelope: 1, OpTask: 0} {
		if got := testutil.ToFloat64(m.failedOps.WithLabelValues(op)); got != want {
			t.Errorf("operation %s counted %v, want %v", op, got, want)
		}
	}
}

func gatherHelp(t *testing.T, m *Metrics, name string) string {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetHelp()
		}
	}
	t.Fatalf("no family %s", name)
	return ""
}

// TestScrapeTimeGauges: the home's free space, the task queue and the key age are read when scraped,
// and absent until attached.
func TestScrapeTimeGauges(t *testing.T) {
	m := New()
	if n := testutil.CollectAndCount(&m.ops.fn); n != 0 {
		t.Fatalf("%d scrape-time gauges before any is attached", n)
	}
	queued := 3
	m.TaskQueue(func() int { return queued }, func() int { return 256 })
	m.WatchHome(t.TempDir())
	made := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := made.Add(48 * time.Hour)
	m.IdentityKeyAge(func() time.Time { return made }, func() time.Duration { return 90 * 24 * time.Hour }, func() time.Time { return now })
	queued = 7
	text := gatherText(t, m)
	for _, want := range []string{"custos_tasks_queued 7\n", "custos_tasks_queue_limit 256\n",
		"custos_identity_key_age_seconds 172800\n", "custos_identity_rotation_interval_seconds 7.776e+06\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	free, size := gaugeValue(t, text, "custos_home_free_bytes"), gaugeValue(t, text, "custos_home_size_bytes")
	if free <= 0 || size <= 0 || free > size {
		t.Fatalf("home free %v of %v bytes", free, size)
	}
}

// TestWatchKeystore: a keystore whose health check fails sets custos_keystore_up to 0 and, checked through
// InstrumentKeystore, counts the error; when it answers again the gauge returns to 1.
func TestWatchKeystore(t *testing.T) {
	m := New()
	base, err := software.Open(context.Background(), "file:"+filepath.Join(t.TempDir(), "keys"), keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pk := &pingKeystore{Keystore: base}
	ks := InstrumentKeystore(pk, m).(keystore.Pinger)
	fail := true
	ping := func(ctx context.Context) error {
		if fail {
			return ks.Ping(ctx)
		}
		return nil
	}
	m.WatchKeystore(context.Background(), "software", ping, 0, quiet())
	if got := testutil.ToFloat64(m.ops.keystoreUp.WithLabelValues("software")); got != 0 {
		t.Fatalf("keystore_up = %v after a failed check", got)
	}
	if got := testutil.ToFloat64(m.ksErrors.WithLabelValues("software", OpPing, "unavailable")); got != 1 {
		t.Fatalf("ping errors counted %v, want 1", got)
	}
	fail = false
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.WatchKeystore(ctx, "software", ping, time.Millisecond, quiet()); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.ops.keystoreUp.WithLabelValues("software")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("keystore_up did not return to 1")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if pk.pings != 1 {
		t.Fatalf("%d pings reached the keystore, want 1", pk.pings)
	}
}

func gatherText(t *testing.T, m *Metrics) string {
	t.Helper()
	srv, err := Serve(context.Background(), m, ServeOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	return string(scrape(t, srv.URL()))
}

func gaugeValue(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the scrape", name)
	return 0
}
