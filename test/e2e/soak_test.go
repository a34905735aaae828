//go:build soak

package e2e

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/audit"
)

// soakSettings are `make soak`'s knobs (environment variables, defaults in brackets).
type soakSettings struct {
	agents   int           // CUSTOS_SOAK_AGENTS [10]
	duration time.Duration // CUSTOS_SOAK_DURATION [10m]: how long the load and the chaos run
	rate     float64       // CUSTOS_SOAK_RATE [2]: tasks submitted per second by each agent
	// The resident memory bounds (CUSTOS_SOAK_DAEMON_RSS_MIB [96], CUSTOS_SOAK_PLUGIN_RSS_MIB [64]): the test
	// fails when any sample of any process of the kind exceeds it (docs/benchmarks.md says why these).
	daemonRSSMiB, pluginRSSMiB int
	// drain bounds the wait, after the load stops, for every accepted task to become final.
	drain time.Duration
}

func readSoakSettings(t *testing.T) soakSettings {
	t.Helper()
	s := soakSettings{agents: 10, duration: 10 * time.Minute, rate: 2, daemonRSSMiB: 96, pluginRSSMiB: 64, drain: 3 * time.Minute}
	if v := os.Getenv("CUSTOS_SOAK_AGENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 3 || n > 50 {
			t.Fatalf("CUSTOS_SOAK_AGENTS=%q: want 3..50", v)
		}
		s.agents = n
	}
	if v := os.Getenv("CUSTOS_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 20*time.Second {
			t.Fatalf("CUSTOS_SOAK_DURATION=%q: want a duration of at least 20s", v)
		}
		s.duration = d
	}
	if v := os.Getenv("CUSTOS_SOAK_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 || r > 50 {
			t.Fatalf("CUSTOS_SOAK_RATE=%q: want tasks per second per agent, in (0, 50]", v)
		}
		s.rate = r
	}
	for env, p := range map[string]*int{"CUSTOS_SOAK_DAEMON_RSS_MIB": &s.daemonRSSMiB, "CUSTOS_SOAK_PLUGIN_RSS_MIB": &s.pluginRSSMiB} {
		if v := os.Getenv(env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want MiB", env, v)
			}
			*p = n
		}
	}
	return s
}

// The resource policy every agent applies to each peer's messages: low enough that a burst of a peer's
// task traffic (requests, acknowledgements, results, progress) is refused now and then. A New peer gets
// half (reputation.Effects.RateMultiplier): 2 messages/s, burst 3, against an average of about 1.1
// messages/s between two agents at 2 tasks/s per agent over 10 agents.
const soakPolicy = "policy: {default: {rate: 4, burst: 6}}\n"

// soakJob is one piece of work the load asks for: a handler run by agent to on input for agent from. A
// job whose task is refused (rate_limited, quota_exceeded) is submitted again as a new task.
type soakJob struct {
	from, to int
	handler  string
	input    []byte
	want     string
}

// soakTask is one accepted submission (the control API returned its task ID) and what became of it.
type soakTask struct {
	id       string
	job      *soakJob
	outcome  string // completed, refused, wrong, lost (and why, in detail)
	detail   string
	final    api.TaskView
	accepted time.Time
}

// soakLoad is the state the load's goroutines share.
type soakLoad struct {
	mu         sync.Mutex
	tasks      []*soakTask
	submitErrs map[string]int // submissions the control API did not accept, by reason
	jobs       int
	retries    int // jobs submitted again after a refusal
}

func (l *soakLoad) add(task *soakTask) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tasks = append(l.tasks, task)
}

func (l *soakLoad) submitFailed(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.submitErrs[why]++
}

func (l *soakLoad) set(task *soakTask, outcome, detail string, v api.TaskView) {
	l.mu.Lock()
	defer l.mu.Unlock()
	task.outcome, task.detail, task.final = outcome, detail, v
}

// refusal reports whether a final failure is a refusal of the executor's resource policy: the task was
// never run, the submitter says why, and the load submits the job again. Anything else that is final and
// not a correct result is a lost task.
func refusal(code string) bool { return code == "rate_limited" || code == "quota_exceeded" }

// soakHead is the audit head an agent reported (acknowledged) just before it was killed.
type soakHead struct {
	agent int
	head  audit.Head
}

// TestSoak is `make soak` (issue 19; not part of make test): CUSTOS_SOAK_AGENTS agents (daemons with their
// TCP plugins, each holding an administrator's task_submitter grant, every agent a bootstrap peer of
// every other) exchange tasks for CUSTOS_SOAK_DURATION, each submitting CUSTOS_SOAK_RATE tasks a second to
// random others through its control API (echo and sha256, 16 B to 2 KiB), under a resource policy whose
// per-peer rate limits refuse some of them (rate_limited: the job is submitted again as a new task).
// Meanwhile transport plugins are killed (SIGKILL) at random every 4-20 s (the daemon restarts them), and
// a whole daemon twice (SIGKILL, restarted on the same home after a few seconds), its acknowledged audit
// head read just before. VmRSS of every daemon and plugin is sampled every 5 s.
//
// Then the load stops, every accepted task (the control API returned its ID) must become final within
// three minutes: done with the right output verified at its submitter, or refused by the executor's
// policy (a refusal: never run; but a refused task the executor's audit log shows it accepted must end
// done). Anything else is a lost task: not final, timed out, failed for another reason. The agents stop
// (SIGTERM) and `agentctl audit verify --strict` must pass on every home; the killed daemons' logs still
// hold the head they reported before the kill, and each completed task has its records: task.submitted
// and task.result at the submitter, task.accepted and task.finished at the executor. One RESULT line
// sums it up; the test fails on a lost task, a wrong result, a missing record, a log that does not
// verify or a process over its RSS bound.
func TestSoak(t *testing.T) {
	needPlugin(t, "tcp")
	set := readSoakSettings(t)
	started := time.Now()

	// An administrator (no transports: it only signs) and the agents.
	admin := newAgent(t, "admin", false)
	admin.writeConfig(agentConfig{Extra: "authorization: {admins: [" + admin.id + "]}\n"})
	admin.start()
	agents := make([]*agent, set.agents)
	authz := "authorization: {admins: [" + admin.id + "]}\n" + soakPolicy
	for i := range agents {
		agents[i] = newAgent(t, fmt.Sprintf("s%d", i), false)
		agents[i].writeConfig(agentConfig{Transports: []string{"tcp"}, Extra: authz})
	}
	// Started before any of them dials (a port chosen in advance could be taken by another agent's
	// outgoing connection), then connected pair by pair; the configuration on disk lists every other agent
	// as a bootstrap peer for the restarts after a kill (the running daemons do not read it again).
	for _, a := range agents {
		a.startProcess()
	}
	for _, a := range agents {
		waitReady(t, a, 2*time.Minute)
	}
	for i, a := range agents {
		var boot []config.PeerConfig
		for j, b := range agents {
			if j != i {
				boot = append(boot, config.PeerConfig{ID: b.id, Transport: "tcp", Address: b.listenAddr("tcp")})
			}
		}
		a.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: boot, Extra: authz})
	}
	connect(t, agents)
	// Each agent holds a task_submitter grant, presented to every connected peer at install (a fresh
	// handshake) and at every handshake it starts; every peer must have it before the load starts.
	for _, a := range agents {
		f, _ := issueGrant(t, admin, a, "task_submitter", "24h", "submitter.grant")
		if out, code := a.run("grant", "install", f); code != 0 {
			t.Fatalf("%s: grant install: exit %d\n%s", a.name, code, out)
		}
	}
	for i, a := range agents {
		for j, b := range agents {
			if i == j {
				continue
			}
			eventually(t, time.Minute, a.name+" holding "+b.name+"'s grant", func() bool {
				if !hasPeerGrant(a, b.id) {
					// Not presented yet (the session came up before the grant was installed and its
					// fresh handshake lost the race): b starts a handshake with a.
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, _ = api.ForHome(b.home).PeersConnect(ctx, api.ConnectArgs{Address: a.listenAddr("tcp"), ID: a.id, Transport: "tcp"})
					cancel()
					return hasPeerGrant(a, b.id)
				}
				return true
			})
		}
	}
	t.Logf("%d agents up, grants in place after %.1f s; load %.1f tasks/s per agent for %v", set.agents, time.Since(started).Seconds(), set.rate, set.duration)

	clients, ids := make([]*api.Client, len(agents)), make([]string, len(agents))
	for i, a := range agents {
		clients[i], ids[i] = api.ForHome(a.home), a.id
	}
	load := &soakLoad{submitErrs: map[string]int{}}
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	drainCtx, stopDrain := context.WithCancel(context.Background())
	defer stopDrain()
	var jobs, gens sync.WaitGroup
	for i := range agents {
		gens.Go(func() { generate(loadCtx, drainCtx, load, &jobs, clients, ids, i, set.rate) })
	}

	// The chaos and the RSS samples, from the test's goroutine.
	rss := newRSSStats()
	var heads []soakHead
	pluginKills, daemonKills := 0, 0
	loadStart := time.Now()
	loadEnd := loadStart.Add(set.duration)
	daemonKillAt := []time.Time{loadStart.Add(set.duration / 3), loadStart.Add(2 * set.duration / 3)}
	nextPluginKill := loadStart.Add(randDuration(4*time.Second, 20*time.Second))
	nextSample := loadStart
	for now := time.Now(); now.Before(loadEnd); now = time.Now() {
		switch {
		case !now.Before(nextSample):
			rss.sample(agents, clients)
			nextSample = now.Add(5 * time.Second)
		case len(daemonKillAt) > 0 && !now.Before(daemonKillAt[0]):
			daemonKillAt = daemonKillAt[1:]
			i := mrand.IntN(len(agents))
			heads = append(heads, soakHead{agent: i, head: killDaemon(t, agents[i], clients[i])})
			daemonKills++
			time.Sleep(randDuration(2*time.Second, 8*time.Second)) // down for a while: peers queue tasks for it
			agents[i].startProcess()
			waitReady(t, agents[i], 2*time.Minute)
			t.Logf("%s: daemon killed at audit seq %d and restarted (%v into the load)", agents[i].name, heads[len(heads)-1].head.Seq, time.Since(loadStart).Round(time.Second))
		case !now.Before(nextPluginKill):
			nextPluginKill = now.Add(randDuration(4*time.Second, 20*time.Second))
			i := mrand.IntN(len(agents))
			if killPlugin(clients[i]) {
				pluginKills++
			}
		default:
			time.Sleep(100 * time.Millisecond)
		}
	}
	stopLoad()
	gens.Wait()
	loadDur := time.Since(loadStart)
	t.Logf("load stopped after %v; waiting up to %v for every accepted task to become final", loadDur.Round(time.Second), set.drain)
	drainStart := time.Now()
	waited := make(chan struct{})
	go func() { jobs.Wait(); close(waited) }()
	for done := false; !done; {
		select {
		case <-waited:
			done = true
		case <-time.After(5 * time.Second):
			rss.sample(agents, clients)
			if time.Since(drainStart) > set.drain {
				stopDrain() // the tasks still not final are lost
				<-waited
				done = true
			}
		}
	}
	drained := time.Since(drainStart)
	rss.sample(agents, clients)

	// A task refused by the executor's policy may yet have been accepted there (a refused repeat of a
	// request the executor had recorded, TestSoakRetryRefusedAfterAcceptance): its result is then stored
	// when it comes. Look at them again until none has changed for 20 s (2 minutes at most).
	ctx := context.Background()
	lastChange, giveUp := time.Now(), time.Now().Add(2*time.Minute)
	for time.Since(lastChange) < 20*time.Second && time.Now().Before(giveUp) {
		for _, task := range load.tasks {
			if task.outcome != "refused" || task.detail == "later done" {
				continue
			}
			v, err := clients[task.job.from].TaskGet(ctx, api.GetArgs{TaskID: task.id})
			if err == nil {
				task.final = v
				if v.State == "done" {
					task.detail, lastChange = "later done", time.Now()
				}
			}
		}
		time.Sleep(2 * time.Second)
	}

	// Stop every agent cleanly (drain, seal the audit log).
	for _, a := range append([]*agent{admin}, agents...) {
		a.signal(syscall.SIGTERM)
	}
	for _, a := range append([]*agent{admin}, agents...) {
		if code := a.waitExit(time.Minute); code != 0 {
			t.Errorf("%s: exit %d after SIGTERM\n%s", a.name, code, a.logTail())
		}
	}

	// Audit: every log verifies, sealed; the killed daemons' acknowledged heads survived.
	verified := 0
	for _, a := range append([]*agent{admin}, agents...) {
		out, stderr, code := a.run2("audit", "verify", "--strict")
		if code != 0 {
			t.Errorf("%s: agentctl audit verify --strict: exit %d\n%s%s", a.name, code, out, stderr)
			continue
		}
		verified++
	}
	for _, h := range heads {
		if err := logHolds(agents[h.agent], h.head); err != nil {
			t.Errorf("%s: the audit head acknowledged before SIGKILL is lost: %v", agents[h.agent].name, err)
		}
	}
	records := make([]map[string]map[string]int, len(agents)) // agent -> type -> subject (task ID) -> count
	for i, a := range agents {
		records[i] = taskRecords(t, a)
	}

	// The tally.
	var submitted, completed, refused, refusedDone, wrong, lost, missing int
	for _, task := range load.tasks {
		submitted++
		from, to := task.job.from, task.job.to
		switch task.outcome {
		case "completed":
			completed++
			for _, need := range []struct {
				at  int
				typ string
			}{{from, string(events.TaskSubmitted)}, {from, string(events.TaskResult)}, {to, string(events.TaskAccepted)}, {to, string(events.TaskFinished)}} {
				if records[need.at][need.typ][task.id] == 0 {
					missing++
					if missing <= 20 {
						t.Errorf("task %s (%s -> %s) completed, but %s has no %s record of it", task.id, agents[from].name, agents[to].name, agents[need.at].name, need.typ)
					}
				}
			}
		case "refused":
			refused++
			if task.detail == "later done" {
				refusedDone++
			} else if records[to][string(events.TaskAccepted)][task.id] > 0 {
				lost++
				t.Errorf("task %s (%s -> %s): %s (%s: %s) at the submitter at the end although the executor accepted it: its result never came",
					task.id, agents[from].name, agents[to].name, task.final.State, task.final.ErrorCode, task.final.Error)
			}
			if records[from][string(events.TaskSubmitted)][task.id] == 0 {
				missing++
				t.Errorf("task %s accepted by %s's control API but no task.submitted record", task.id, agents[from].name)
			}
		case "wrong":
			wrong++
			t.Errorf("task %s (%s -> %s): wrong result: %s", task.id, agents[from].name, agents[to].name, task.detail)
		default:
			lost++
			if lost <= 20 {
				t.Errorf("task %s (%s -> %s, accepted %s) lost: %s (last seen %s %s %s, %d attempts)", task.id, agents[from].name, agents[to].name,
					task.accepted.Format(time.TimeOnly), task.detail, task.final.State, task.final.ErrorCode, task.final.Error, task.final.Attempts)
			}
		}
	}
	var errs []string
	for k, n := range load.submitErrs {
		errs = append(errs, fmt.Sprintf("%s:%d", k, n))
	}
	slices.Sort(errs)
	la, _ := os.ReadFile("/proc/loadavg")
	t.Logf("RESULT agents=%d duration_s=%.0f drain_s=%.1f rate_per_agent=%.1f jobs=%d submitted=%d accepted=%d refused_rate=%d refused_later_done=%d retries=%d completed=%d wrong=%d lost=%d "+
		"submit_errors=%d [%s] plugin_kills=%d daemon_kills=%d daemon_rss_max_mib=%.1f (%s) plugin_rss_max_mib=%.1f (%s) daemon_rss_first_last_mean_mib=%.1f/%.1f plugin_rss_first_last_mean_mib=%.1f/%.1f "+
		"rss_samples=%d audit_verified=%d/%d missing_records=%d loadavg=%s",
		set.agents, loadDur.Seconds(), drained.Seconds(), set.rate, load.jobs, submitted+sum(load.submitErrs), submitted, refused, refusedDone, load.retries, completed, wrong, lost,
		sum(load.submitErrs), strings.Join(errs, " "), pluginKills, daemonKills,
		mib(rss.daemonMax), rss.daemonMaxWho, mib(rss.pluginMax), rss.pluginMaxWho, rss.daemonFirst, rss.daemonLast, rss.pluginFirst, rss.pluginLast,
		rss.samples, verified, len(agents)+1, missing, strings.TrimSpace(string(la)))
	if lost > 0 || wrong > 0 {
		t.Errorf("%d tasks lost, %d wrong results, of %d accepted", lost, wrong, submitted)
	}
	if completed == 0 || submitted == 0 {
		t.Errorf("no work done: %d accepted, %d completed", submitted, completed)
	}
	if rss.daemonMax > set.daemonRSSMiB*1024 {
		t.Errorf("a daemon reached %.1f MiB RSS (%s), over the bound of %d MiB", mib(rss.daemonMax), rss.daemonMaxWho, set.daemonRSSMiB)
	}
	if rss.pluginMax > set.pluginRSSMiB*1024 {
		t.Errorf("a plugin reached %.1f MiB RSS (%s), over the bound of %d MiB", mib(rss.pluginMax), rss.pluginMaxWho, set.pluginRSSMiB)
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func mib(kib int) float64 { return float64(kib) / 1024 }

func randDuration(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(mrand.Int64N(int64(hi-lo)))
}

// waitReady waits until a's daemon answers on its control socket.
func waitReady(t *testing.T, a *agent, d time.Duration) {
	t.Helper()
	c := api.ForHome(a.home)
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Status(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-a.exited:
			t.Fatalf("%s exited during start-up (%v)\n%s", a.name, a.exitErr, a.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering after %v: %v\n%s", a.name, d, err, a.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// connect has every agent dial every other (both directions: each then re-dials the other when their
// session ends), in parallel per agent.
func connect(t *testing.T, agents []*agent) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(agents)*len(agents))
	for i, a := range agents {
		wg.Go(func() {
			c := api.ForHome(a.home)
			for j, b := range agents {
				if i == j {
					continue
				}
				var err error
				for range 5 {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					_, err = c.PeersConnect(ctx, api.ConnectArgs{Address: b.listenAddr("tcp"), ID: b.id, Transport: "tcp"})
					cancel()
					if err == nil {
						break
					}
					time.Sleep(time.Second)
				}
				if err != nil {
					errs <- fmt.Errorf("%s connects to %s: %w", a.name, b.name, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// hasPeerGrant reports whether a holds a valid grant peer presented.
func hasPeerGrant(a *agent, peer string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gl, err := api.ForHome(a.home).GrantsList(ctx)
	if err != nil {
		return false
	}
	for _, g := range gl.Peers {
		if g.Subject == peer && g.State == "valid" {
			return true
		}
	}
	return false
}

// generate submits rate jobs a second from agent from to random others until loadCtx ends; each job runs
// in its own goroutine (jobs) until its task is final or drainCtx ends.
func generate(loadCtx, drainCtx context.Context, load *soakLoad, jobs *sync.WaitGroup, clients []*api.Client, ids []string, from int, rate float64) {
	n := len(ids)
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-loadCtx.Done():
			return
		case <-tick.C:
		}
		to := mrand.IntN(n - 1)
		if to >= from {
			to++
		}
		in := make([]byte, 16+mrand.IntN(2048-16))
		_, _ = rand.Read(in)
		job := &soakJob{from: from, to: to, handler: "echo", input: in, want: string(in)}
		if mrand.IntN(2) == 0 {
			job.handler, job.want = "sha256", hexSHA256(in)
		}
		load.mu.Lock()
		load.jobs++
		load.mu.Unlock()
		jobs.Go(func() { runJob(loadCtx, drainCtx, load, clients, ids, job) })
	}
}

// runJob submits job and follows its task to a final state; a refused task is submitted again (a new
// task) while the load runs.
func runJob(loadCtx, drainCtx context.Context, load *soakLoad, clients []*api.Client, ids []string, job *soakJob) {
	c := clients[job.from]
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if loadCtx.Err() != nil {
				return // refused at the end of the load: not submitted again
			}
			load.mu.Lock()
			load.retries++
			load.mu.Unlock()
		}
		ctx, cancel := context.WithTimeout(drainCtx, 10*time.Second)
		v, err := c.TaskSubmit(ctx, api.SubmitArgs{To: ids[job.to], Handler: job.handler, Input: job.input})
		cancel()
		if err != nil {
			// Not accepted: the submitter's daemon is down (killed) or answered an error.
			why := control.CodeOf(err)
			if why == "" {
				why = "no_daemon"
				if !errors.Is(err, control.ErrNoDaemon) {
					why = "io"
				}
			}
			load.submitFailed(why)
			return
		}
		task := &soakTask{id: v.TaskID, job: job, outcome: "lost", detail: "never final", final: v, accepted: time.Now()}
		load.add(task)
		final, ok := waitFinal(drainCtx, c, v.TaskID)
		switch {
		case !ok:
			load.set(task, "lost", "not final when the wait ended", final)
			return
		case final.State == "done":
			r := final.Result
			switch {
			case r == nil || r.Status != "ok" || !r.Verified:
				load.set(task, "wrong", fmt.Sprintf("done but result %+v", r), final)
			case string(r.Output) != job.want:
				load.set(task, "wrong", fmt.Sprintf("output %q, want %q", clip(string(r.Output)), clip(job.want)), final)
			case r.OutputSHA256 != hexSHA256(r.Output) || len(r.Signature) == 0:
				load.set(task, "wrong", "result not signed or digest wrong", final)
			default:
				load.set(task, "completed", "", final)
			}
			return
		case final.State == "failed" && refusal(final.ErrorCode):
			load.set(task, "refused", final.ErrorCode, final)
			select {
			case <-loadCtx.Done():
				return
			case <-time.After(time.Duration(500+mrand.IntN(1000)) * time.Millisecond):
			}
		default:
			load.set(task, "lost", "final "+final.State+": "+final.ErrorCode+": "+final.Error, final)
			return
		}
	}
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// waitFinal waits until task id is final at its submitter, asking again whenever the daemon is away
// (killed, restarting); false when ctx ends first (with the last state seen).
func waitFinal(ctx context.Context, c *api.Client, id string) (api.TaskView, bool) {
	var last api.TaskView
	for ctx.Err() == nil {
		v, err := c.TaskGet(ctx, api.GetArgs{TaskID: id, WaitMS: 20000})
		if err == nil {
			last = v
			if v.State == "done" || v.State == "failed" {
				return v, true
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
	return last, false
}

// killPlugin kills the TCP plugin of the agent c serves (SIGKILL); false when the daemon or the plugin is
// not running.
func killPlugin(c *api.Client) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return false
	}
	for _, tr := range st.Transports {
		if tr.Running && tr.PID > 0 {
			return syscall.Kill(tr.PID, syscall.SIGKILL) == nil
		}
	}
	return false
}

// killDaemon reads a's audit head (what its log has acknowledged), then kills its daemon with SIGKILL and
// waits for it to be gone.
func killDaemon(t *testing.T, a *agent, c *api.Client) audit.Head {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	head, err := c.AuditHead(ctx)
	cancel()
	if err != nil {
		t.Fatalf("%s: audit head: %v", a.name, err)
	}
	a.signal(syscall.SIGKILL)
	if code := a.waitExit(30 * time.Second); code != -int(syscall.SIGKILL) {
		t.Fatalf("%s: exit %d after SIGKILL", a.name, code)
	}
	return head
}

// logHolds checks that a's audit log holds the record head names, with its hash.
func logHolds(a *agent, head audit.Head) error {
	found := false
	err := audit.Query(context.Background(), filepath.Join(a.home, "audit"), audit.Filter{}, func(e audit.Entry) error {
		if e.Seq == head.Seq {
			found = true
			if e.Hash != head.Hash {
				return fmt.Errorf("seq %d has hash %s, the daemon acknowledged %s", e.Seq, e.Hash, head.Hash)
			}
		}
		return nil
	})
	if err == nil && !found {
		err = fmt.Errorf("no record with seq %d", head.Seq)
	}
	return err
}

// taskRecords indexes a's task.* audit records: type -> subject (task ID) -> count.
func taskRecords(t *testing.T, a *agent) map[string]map[string]int {
	t.Helper()
	m := map[string]map[string]int{}
	err := audit.Query(context.Background(), filepath.Join(a.home, "audit"), audit.Filter{Types: []string{"task.*"}}, func(e audit.Entry) error {
		if m[string(e.Type)] == nil {
			m[string(e.Type)] = map[string]int{}
		}
		m[string(e.Type)][e.Subject]++
		return nil
	})
	if err != nil {
		t.Fatalf("%s: audit query: %v", a.name, err)
	}
	return m
}

// rssStats are the VmRSS samples of the daemons and their plugins.
type rssStats struct {
	samples                    int
	daemonMax, pluginMax       int // KiB
	daemonMaxWho, pluginMaxWho string
	// Mean over the processes of the kind at the first and the latest sample (MiB): growth shows a leak.
	daemonFirst, daemonLast, pluginFirst, pluginLast float64
}

func newRSSStats() *rssStats { return &rssStats{} }

func (r *rssStats) sample(agents []*agent, clients []*api.Client) {
	var dsum, psum, dn, pn int
	for i, a := range agents {
		a.mu.Lock()
		cmd, exited := a.cmd, a.exited
		a.mu.Unlock()
		select {
		case <-exited:
			continue // down (killed, not yet restarted)
		default:
		}
		if kib := rssKiB(cmd.Process.Pid); kib > 0 {
			dsum, dn = dsum+kib, dn+1
			if kib > r.daemonMax {
				r.daemonMax, r.daemonMaxWho = kib, fmt.Sprintf("%s at %s", a.name, time.Now().Format(time.TimeOnly))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := clients[i].Status(ctx)
		cancel()
		if err != nil {
			continue
		}
		for _, tr := range st.Transports {
			if kib := rssKiB(tr.PID); tr.PID > 0 && kib > 0 {
				psum, pn = psum+kib, pn+1
				if kib > r.pluginMax {
					r.pluginMax, r.pluginMaxWho = kib, fmt.Sprintf("%s/%s at %s", a.name, tr.Name, time.Now().Format(time.TimeOnly))
				}
			}
		}
	}
	if dn == 0 || pn == 0 {
		return
	}
	d, p := float64(dsum)/1024/float64(dn), float64(psum)/1024/float64(pn)
	if r.samples == 0 {
		r.daemonFirst, r.pluginFirst = d, p
	}
	r.daemonLast, r.pluginLast = d, p
	r.samples++
}
