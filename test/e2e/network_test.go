//go:build network

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
)

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// TestNetwork is `make network` (issue 14 step 5; not part of make test): N agents
// (CUSTOS_NETWORK_N, default 10) as separate daemons with libp2p plugins on loopback, each given only the
// first agent's /p2p/ address. It measures, and logs as one RESULT line: the time from the last agent
// answering on its control socket until every agent resolved every other agent's ID (peers.find through
// the control API, every pair); the latency of those lookups (p50, p99) beside the control API's own
// round trip (status) measured in the same run; the time for a revocation issued at the first agent (an
// administrator of all) to be accepted by all N-1 others (their gossip metric); and the resident memory
// of each daemon and each plugin. It asserts only that everything happens within generous timeouts.
func TestNetwork(t *testing.T) {
	needPlugin(t, "libp2p")
	n := 10
	if v := os.Getenv("CUSTOS_NETWORK_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 || n > 200 {
			t.Fatalf("CUSTOS_NETWORK_N=%q: want 2..200", v)
		}
	}
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = newAgent(t, fmt.Sprintf("n%d", i), false)
	}
	boot := agents[0]
	admins := "authorization: {admins: [" + boot.id + "]}\n"
	boot.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins})
	boot.start()
	bootAddr := boot.dialAddr("libp2p")
	for _, a := range agents[1:] {
		a.writeConfig(agentConfig{Transports: []string{"libp2p"}, Extra: admins,
			Bootstrap: []config.PeerConfig{{ID: boot.id, Transport: "libp2p", Address: bootAddr}}})
		a.startProcess()
	}
	ctx := context.Background()
	clients := make([]*api.Client, n)
	for i, a := range agents {
		clients[i] = api.ForHome(a.home)
	}
	for i, a := range agents[1:] {
		deadline := time.Now().Add(120 * time.Second)
		for {
			_, err := clients[i+1].Status(ctx)
			if err == nil {
				break
			}
			select {
			case <-a.exited:
				t.Fatalf("%s exited during start-up (%v)\n%s", a.name, a.exitErr, a.logTail())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not running after 120 s: %v\n%s", a.name, err, a.logTail())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	lastStarted := time.Now()

	// When is every ID resolvable? Three observers (the first, a middle and the last agent) look up every
	// other ID, eight lookups at a time each, in rounds until all are found. This is the goal's measure:
	// the sweep below, where every agent looks up every other one after the other, measures how fast 2 cores
	// serve N*(N-1) lookups more than when the records can be found.
	observers := []int{0, n / 2, n - 1}
	var owg sync.WaitGroup
	for _, i := range observers {
		owg.Go(func() {
			todo := map[int]bool{}
			for j := range agents {
				if j != i {
					todo[j] = true
				}
			}
			deadline := time.Now().Add(5 * time.Minute)
			for len(todo) > 0 && time.Now().Before(deadline) {
				var rmu sync.Mutex
				var rwg sync.WaitGroup
				sem := make(chan struct{}, 8)
				for j := range todo {
					rwg.Go(func() {
						sem <- struct{}{}
						defer func() { <-sem }()
						r, err := clients[i].PeersFind(ctx, api.FindArgs{ID: agents[j].id, TimeoutMS: 5000})
						if err == nil && r.AgentID == agents[j].id && len(r.Addrs) > 0 {
							rmu.Lock()
							delete(todo, j)
							rmu.Unlock()
						}
					})
				}
				rwg.Wait()
				if len(todo) > 0 {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if len(todo) > 0 {
				t.Errorf("observer %s did not resolve %d agents within 5 minutes", agents[i].name, len(todo))
			}
		})
	}
	owg.Wait()
	resolvable := time.Since(lastStarted)
	if t.Failed() {
		t.FailNow()
	}

	// Every agent resolves every other agent's ID: rounds over the unresolved pairs, in parallel per agent.
	sweepStart := time.Now()
	var mu sync.Mutex
	var lookups, baseline []time.Duration
	var wg sync.WaitGroup
	for i := range agents {
		wg.Go(func() {
			todo := map[int]bool{}
			for j := range agents {
				if j != i {
					todo[j] = true
				}
			}
			deadline := time.Now().Add(5 * time.Minute)
			for len(todo) > 0 && time.Now().Before(deadline) {
				for j := range todo {
					s := time.Now()
					r, err := clients[i].PeersFind(ctx, api.FindArgs{ID: agents[j].id, TimeoutMS: 5000})
					d := time.Since(s)
					mu.Lock()
					lookups = append(lookups, d)
					mu.Unlock()
					if err == nil && r.AgentID == agents[j].id && len(r.Addrs) > 0 {
						delete(todo, j)
					}
				}
				if len(todo) > 0 {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if len(todo) > 0 {
				t.Errorf("%s did not resolve %d agents within 5 minutes", agents[i].name, len(todo))
			}
		})
	}
	wg.Wait()
	resolved := time.Since(sweepStart)
	if t.Failed() {
		t.FailNow()
	}
	for range 200 { // the control API's own round trip, for comparison
		s := time.Now()
		if _, err := clients[1+len(baseline)%(n-1)].Status(ctx); err != nil {
			t.Fatal(err)
		}
		baseline = append(baseline, time.Since(s))
	}
	// Steady-state lookups (every record published): one of each pair, timed alone.
	var steady []time.Duration
	for i := range agents {
		for k := 1; k <= min(5, n-1); k++ {
			j := (i + k) % n
			s := time.Now()
			if _, err := clients[i].PeersFind(ctx, api.FindArgs{ID: agents[j].id, TimeoutMS: 5000}); err != nil {
				t.Fatalf("%s finds %s: %v", agents[i].name, agents[j].name, err)
			}
			steady = append(steady, time.Since(s))
		}
	}

	// A revocation at the first agent reaches all others (each counts an accepted gossip message).
	urls := make([]string, n)
	for i, a := range agents {
		urls[i] = a.status().Metrics
	}
	f, _ := issueGrant(t, boot, agents[1], "task_submitter", "1h", "g.json")
	start := time.Now()
	if _, stderr, code := boot.run2("revoke", "--grant", f, "--out", filepath.Join(boot.home, "g.revocation")); code != 0 {
		t.Fatalf("revoke: exit %d\n%s", code, stderr)
	}
	const accepted = `custos_gossip_messages_total{topic="/custos/v1/revocations",verdict="accept"}`
	pending := map[int]bool{}
	for i := 1; i < n; i++ {
		pending[i] = true
	}
	deadline := time.Now().Add(2 * time.Minute)
	for len(pending) > 0 {
		for i := range pending {
			if strings.Contains(scrape(t, urls[i]), accepted) {
				delete(pending, i)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the revocation did not reach %d of %d agents within 2 minutes", len(pending), n-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	revoked := time.Since(start)

	var daemonRSS, pluginRSS int
	for _, a := range agents {
		daemonRSS += rssKiB(a.cmd.Process.Pid)
		pluginRSS += rssKiB(a.transportStatus("libp2p").PID)
	}
	t.Logf("RESULT N=%d resolvable_s=%.1f sweep_s=%.1f lookups=%d lookup_p50_ms=%s lookup_p99_ms=%s steady_lookups=%d steady_p50_ms=%s steady_p99_ms=%s status_p50_ms=%s status_p99_ms=%s revocation_all_ms=%s daemon_rss_mib=%.1f plugin_rss_mib=%.1f",
		n, resolvable.Seconds(), resolved.Seconds(), len(lookups), ms(percentile(lookups, .5)), ms(percentile(lookups, .99)),
		len(steady), ms(percentile(steady, .5)), ms(percentile(steady, .99)),
		ms(percentile(baseline, .5)), ms(percentile(baseline, .99)), ms(revoked),
		float64(daemonRSS)/1024/float64(n), float64(pluginRSS)/1024/float64(n))
}
