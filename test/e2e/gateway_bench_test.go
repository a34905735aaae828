package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/gateway"
)

// benchWorkers is how many tasks are in flight at once, on either path.
const benchWorkers = 4

// BenchmarkGatewayVsControl (docs/benchmarks.md, "Gateway"): the same echo tasks, each submitted and
// waited for (submit, then get with wait), from agent A to executor X over tcp, through A's HTTP
// gateway (one keep-alive HTTP client, an API key) beside A's control socket (agent/api's client,
// one connection per request), in the same run on the same two daemons, paired batch by batch.
// Reports each path's tasks/s and the p50 and p99 of submit-to-verified-result latency, and the ratio
// of the rates. Not a test: it runs only with -bench (a fixed count of batches: the daemons start once).
//
//	go test -run '^$' -bench GatewayVsControl -benchtime 40x ./test/e2e/
func BenchmarkGatewayVsControl(b *testing.B) {
	// Neither agent's peer limits may be what is measured: the executor admits A's requests, and A admits
	// the executor's responses and results (at the default 100 messages/s, half that for a new peer, A
	// drops some of them and the task engine resends those tasks seconds later).
	const policy = "policy: {default: {rate: 100000, max_concurrent_tasks: -1, max_bytes_per_day: -1}}\n"
	x := newAgent(b, "executor", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: policy})
	x.start()
	a, base := gatewayAgent(b, map[string]*agent{"tcp": x}, policy)
	token := gwKey(a, "bench", "gateway_service,task_submitter", "--rate", "100000")
	eventually(b, 20*time.Second, "A's session with the executor", func() bool { return a.sessionWith(x.id) != nil })
	input := bytes.Repeat([]byte("custos "), 128) // 896 bytes

	ctl := api.ForHome(a.home)
	viaControl := func(ctx context.Context) (api.TaskView, error) {
		v, err := ctl.TaskSubmit(ctx, api.SubmitArgs{To: x.id, Handler: "echo", Input: input})
		if err != nil {
			return v, err
		}
		return ctl.TaskGet(ctx, api.GetArgs{TaskID: v.TaskID, WaitMS: 30000})
	}
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: benchWorkers}}
	body, _ := json.Marshal(gateway.SubmitRequest{To: x.id, Handler: "echo", Input: input})
	httpJSON := func(ctx context.Context, method, url string, body []byte, want int, v any) error {
		req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != want {
			return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, raw)
		}
		return json.Unmarshal(raw, v)
	}
	viaGateway := func(ctx context.Context) (api.TaskView, error) {
		var v api.TaskView
		if err := httpJSON(ctx, "POST", base+"/v1/tasks", body, http.StatusAccepted, &v); err != nil {
			return v, err
		}
		id := v.TaskID
		v = api.TaskView{}
		return v, httpJSON(ctx, "GET", base+"/v1/tasks/"+id+"?wait=30", nil, http.StatusOK, &v)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("load average before: %s", strings.TrimSpace(string(load)))
	paths := []benchPath{{name: "control", task: viaControl}, {name: "gateway", task: viaGateway}}
	for _, p := range paths { // warm the connections and the executor up, outside the timing
		if v, err := p.task(context.Background()); err != nil || v.State != "done" {
			b.Fatalf("%s: warm-up task: %v %+v", p.name, err, v)
		}
	}
	// Paired: each iteration is one batch through the control socket, then the same batch through the
	// gateway, so that both paths see the same load from the other engineers' jobs on the machine.
	b.ResetTimer()
	for range b.N {
		for i := range paths {
			if err := paths[i].batch(x.id, string(input)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	for _, p := range paths {
		p.report(b)
	}
	b.ReportMetric(paths[1].rate()/paths[0].rate(), "gateway/control")
	b.ReportMetric((float64(paths[1].cleanTasks)/paths[1].cleanElapsed.Seconds())/(float64(paths[0].cleanTasks)/paths[0].cleanElapsed.Seconds()), "no-resend-gateway/control")
	load, _ = os.ReadFile("/proc/loadavg")
	b.Logf("load average after: %s", strings.TrimSpace(string(load)))
}

// benchBatch is how many tasks one batch runs (benchWorkers at a time).
const benchBatch = 2 * benchWorkers

// benchPath is one way to run a task, with what its batches measured.
type benchPath struct {
	name     string
	task     func(context.Context) (api.TaskView, error)
	elapsed  time.Duration
	lat      []time.Duration
	attempts int
	// Batches in which no task was sent twice (the task engine resends a task not finished within
	// tasks.retry_interval; such a task takes seconds, whichever path submitted it).
	cleanElapsed time.Duration
	cleanTasks   int
}

func (p *benchPath) rate() float64 { return float64(len(p.lat)) / p.elapsed.Seconds() }

func (p *benchPath) report(b *testing.B) {
	sort.Slice(p.lat, func(i, j int) bool { return p.lat[i] < p.lat[j] })
	pct := func(q float64) float64 {
		return float64(p.lat[min(len(p.lat)-1, int(q*float64(len(p.lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(p.rate(), p.name+"-tasks/s")
	b.ReportMetric(pct(0.50), p.name+"-p50-ms")
	b.ReportMetric(pct(0.99), p.name+"-p99-ms")
	b.ReportMetric(float64(p.attempts)/float64(len(p.lat)), p.name+"-attempts/task")
	b.ReportMetric(float64(p.cleanTasks)/p.cleanElapsed.Seconds(), p.name+"-no-resend-tasks/s")
}

// batch runs benchBatch tasks, benchWorkers in flight, and checks each result.
func (p *benchPath) batch(executor, want string) error {
	ctx := context.Background()
	lat := make([]time.Duration, benchBatch)
	att := make([]int, benchBatch)
	errs := make([]error, benchBatch)
	next := make(chan int, benchBatch)
	for i := range benchBatch {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	start := time.Now()
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				v, err := p.task(ctx)
				lat[i], att[i] = time.Since(t0), v.Attempts
				if err == nil && (v.State != "done" || v.Result == nil || !v.Result.Verified || v.Result.Executor != executor || string(v.Result.Output) != want) {
					err = fmt.Errorf("%s: task %s: state %s (%s %s), result %+v", p.name, v.TaskID, v.State, v.ErrorCode, v.Error, v.Result)
				}
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	p.elapsed += took
	resent := false
	for i := range benchBatch {
		if errs[i] != nil {
			return errs[i]
		}
		p.attempts += att[i]
		resent = resent || att[i] > 1
	}
	if !resent {
		p.cleanElapsed += took
		p.cleanTasks += benchBatch
	}
	p.lat = append(p.lat, lat...)
	return nil
}
