package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// timeScale divides every duration of configs/alerts.yml in the test copy Prometheus loads: 1m becomes
// 1s, so a rule's "for: 5m" waits 5 s and its [10m] range is [10s]. Expressions, thresholds, labels and
// annotations are the shipped ones unchanged.
const timeScale = 60

var (
	ruleDuration = regexp.MustCompile(`(for: |\[)(\d+)([smhd])(\]?)`)
	unitSeconds  = map[string]int{"s": 1, "m": 60, "h": 3600, "d": 86400}
)

// scaleRules returns the rules with every for: and range selector divided by timeScale (at least 1s).
func scaleRules(t *testing.T, text string) string {
	t.Helper()
	n := 0
	out := ruleDuration.ReplaceAllStringFunc(text, func(m string) string {
		p := ruleDuration.FindStringSubmatch(m)
		v, err := strconv.Atoi(p[2])
		if err != nil {
			t.Fatal(err)
		}
		s := max(v*unitSeconds[p[3]]/timeScale, 1)
		n++
		return fmt.Sprintf("%s%ds%s", p[1], s, p[4])
	})
	if n < 10 {
		t.Fatalf("scaled only %d durations in alerts.yml", n)
	}
	return out
}

// TestPrometheusAlertsFireAndResolve (issue 17): a real Prometheus (the Debian prometheus server) scrapes
// three agents every second with configs/alerts.yml loaded (durations scaled by timeScale). Three faults
// are caused at once and each alert is seen firing through Prometheus's HTTP API, then resolved once
// the fault ends:
//   - a keystore outage: the swtpm holding the executor's identity is killed (CustosKeystoreErrors,
//     CustosKeystoreDown), then started again;
//   - an authentication failure burst: the prober dials the executor expecting another agent's ID
//     (CustosAuthFailureSpike on the prober), until its configuration is fixed and reloaded;
//   - a rate-limit burst: the flooder sends 30 task requests to an executor limited to 1/s
//     (CustosRateLimiting on the executor), then stops.
//
// Every query of the Grafana dashboard is also run against the live server and must parse and answer.
func TestPrometheusAlertsFireAndResolve(t *testing.T) {
	prom := testenv.LookTool(t, "prometheus", "prometheus")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	sim := swtpmtest.Start(t)
	metricsPort := map[string]int{}
	metricsYAML := func(name string) string {
		if metricsPort[name] == 0 {
			metricsPort[name] = freePort(t)
		}
		return fmt.Sprintf("{address: \"127.0.0.1:%d\", keystore_check_interval: 1s}", metricsPort[name])
	}
	x := newAgentWith(t, "executor", func(a *agent) []string {
		a.env = []string{"CUSTOS_TPM_DEVICE=" + sim.Device()}
		return []string{"init", "--tpm"}
	})
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Metrics: metricsYAML("executor"),
		Extra: "authorization: {default_peer_roles: [task_submitter]}\npolicy: {default: {rate: 1, burst: 8}}\n"})
	x.start()
	flooder, prober := newAgent(t, "flooder", false), newAgent(t, "prober", false)
	flooder.writeConfig(agentConfig{Transports: []string{"tcp"}, Metrics: metricsYAML("flooder"), Bootstrap: []config.PeerConfig{flooder.bootstrapTo(x, "tcp")}})
	flooder.start()
	proberGood := agentConfig{Transports: []string{"tcp"}, Metrics: metricsYAML("prober")}
	prober.writeConfig(proberGood)
	prober.start()
	eventually(t, 20*time.Second, "the flooder's session with the executor", func() bool { return flooder.sessionWith(x.id) != nil })

	// The executor's keystore is the instrumented TPM of the running agent.
	if m := scrape(t, x.status().Metrics); !regexp.MustCompile(`custos_keystore_operation_duration_seconds_count\{backend="tpm",operation="(sign|ping)"\} [1-9]`).MatchString(m) ||
		!strings.Contains(m, `custos_keystore_up{backend="tpm"} 1`) {
		t.Fatalf("the running agent exports no tpm keystore series:\n%s", grepLines(m, "custos_keystore"))
	}

	// Prometheus, with the test copy of the rules.
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join(root, "configs", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), []byte(scaleRules(t, string(rules))), 0o600); err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, n := range []string{"executor", "flooder", "prober"} {
		targets = append(targets, fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", metricsPort[n])))
	}
	promCfg := fmt.Sprintf("global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: [alerts.yml]\n"+
		"scrape_configs:\n  - job_name: custos\n    static_configs:\n      - targets: [%s]\n", strings.Join(targets, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(promCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	promPort := freePort(t)
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1/", promPort)
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort), "--log.level=warn")
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	promLog := func() string { b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log")); return string(b) }
	eventually(t, 60*time.Second, "Prometheus scraping the three agents", func() bool {
		var r struct {
			ActiveTargets []struct{ Health string } `json:"activeTargets"`
		}
		if promGet(api+"targets", &r) != nil || len(r.ActiveTargets) != 3 {
			return false
		}
		for _, tg := range r.ActiveTargets {
			if tg.Health != "up" {
				return false
			}
		}
		return true
	})
	var rulesResp struct {
		Groups []struct {
			Rules []struct{ Name string } `json:"rules"`
		} `json:"groups"`
	}
	if err := promGet(api+"rules", &rulesResp); err != nil || len(rulesResp.Groups) != 1 || len(rulesResp.Groups[0].Rules) < 18 {
		t.Fatalf("Prometheus rules: %v %+v\n%s", err, rulesResp, promLog())
	}
	quiet := alertsOf(t, api)
	if len(quiet) != 0 {
		t.Fatalf("alerts before any fault: %v", quiet)
	}

	xi, pi := fmt.Sprintf("127.0.0.1:%d", metricsPort["executor"]), fmt.Sprintf("127.0.0.1:%d", metricsPort["prober"])
	want := []string{"CustosKeystoreErrors@" + xi, "CustosKeystoreDown@" + xi, "CustosAuthFailureSpike@" + pi, "CustosRateLimiting@" + xi}

	// The faults.
	sim.Kill()
	bad := proberGood
	bad.Bootstrap = []config.PeerConfig{{ID: flooder.id, Transport: "tcp", Address: x.dialAddr("tcp")}} // the executor is not the flooder
	prober.writeConfig(bad)
	prober.signal(syscall.SIGHUP)
	for i := 0; i < 30; i++ {
		out, code := flooder.run("task", "submit", "--to", x.id, "--handler", "echo", "--data", "flood")
		if code != 0 {
			t.Fatalf("flood submit: exit %d\n%s", code, out)
		}
	}
	firing := map[string]bool{}
	var last map[string]string
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		last = alertsOf(t, api)
		for k, v := range last {
			if v == "firing" {
				firing[k] = true
			}
		}
		missing := 0
		for _, w := range want {
			if !firing[w] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			var r struct {
				Result []json.RawMessage `json:"result"`
			}
			_ = promGet(api+"query?query="+url.QueryEscape(`{__name__=~"custos_auth_attempts_total|custos_keystore_errors_total|custos_rate_limited_total|custos_keystore_up"} > 0`), &r)
			var series []string
			for _, s := range r.Result {
				series = append(series, string(s))
			}
			t.Fatalf("alerts that fired: %v (want %v); active now: %v\nseries:\n%s\nprober log:\n%s", firing, want, last, strings.Join(series, "\n"), prober.logTail())
		}
	}
	t.Logf("fired: %v", want)

	// The faults end.
	sim.Restart()
	prober.writeConfig(proberGood)
	prober.signal(syscall.SIGHUP)
	eventually(t, 90*time.Second, "every alert resolved", func() bool {
		active := alertsOf(t, api)
		for _, w := range want {
			if _, ok := active[w]; ok {
				return false
			}
		}
		return true
	})
	if m := scrape(t, x.status().Metrics); !strings.Contains(m, `custos_keystore_up{backend="tpm"} 1`) {
		t.Fatalf("the keystore is not up again:\n%s", grepLines(m, "custos_keystore_up"))
	}

	// Every dashboard query parses and answers on the live server.
	raw, err := os.ReadFile(filepath.Join(root, "configs", "grafana", "custos.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	queries := dashboardExprs(dash)
	if len(queries) < 20 {
		t.Fatalf("%d dashboard queries", len(queries))
	}
	for _, q := range queries {
		q = strings.ReplaceAll(q, "$instance", ".*")
		var r struct {
			Result []json.RawMessage `json:"result"`
		}
		if err := promGet(api+"query?query="+url.QueryEscape(q), &r); err != nil {
			t.Errorf("dashboard query %s: %v", q, err)
		}
	}
}

// dashboardExprs returns every "expr" string of a Grafana dashboard.
func dashboardExprs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, vv := range x {
			if s, ok := vv.(string); ok && k == "expr" {
				out = append(out, s)
			} else {
				out = append(out, dashboardExprs(vv)...)
			}
		}
	case []any:
		for _, vv := range x {
			out = append(out, dashboardExprs(vv)...)
		}
	}
	return out
}

// promGet calls a Prometheus HTTP API endpoint and decodes its data.
func promGet(u string, data any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return err
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// alertsOf returns Prometheus's active alerts as "name@instance" -> state (pending, firing).
func alertsOf(t *testing.T, api string) map[string]string {
	t.Helper()
	var r struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if err := promGet(api+"alerts", &r); err != nil {
		t.Fatalf("Prometheus alerts: %v", err)
	}
	out := map[string]string{}
	for _, a := range r.Alerts {
		out[a.Labels["alertname"]+"@"+a.Labels["instance"]] = a.State
	}
	return out
}
