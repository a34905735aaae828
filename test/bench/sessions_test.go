//go:build sessions

// Sessions per agent (issue 19; docs/benchmarks.md, "Sessions per agent"). Build tag sessions: not part of
// `make test` nor `make bench`; run it with `make sessions`.
//
// One agent runs in a child process (this test binary re-executed, TestSessionsAgent): its identity,
// delegation manager, peer cache on bbolt, replay cache, the operational-key binding authority, one real
// TCP transport plugin subprocess (sandboxed by default) and the session manager (agent/sessions) serving
// the plugin's listener, as agent/daemon wires them. This process holds the initiators: N lightweight
// agents, each with its own software identity (inception, delegation, operational key), its own transport
// key bound by that operational key, dialling the agent's plugin over TLS 1.3 with the TCP transport's own
// code (transports/tcp, in this process), verifying the agent's binding, then running the agent
// handshake (agent/session). The agent and its plugin therefore see exactly what N remote agents with
// their own plugins would send; only the initiators' side is folded into one process.
//
// For each N of CUSTOS_SESSIONS_N (default "100 1000 5000", cumulative: the agent keeps the sessions of the
// previous step) it reports the connect rate, the agent's and the plugin's resident memory (VmRSS) and its
// growth per session, the agent's Go heap and goroutines per session, and the CPU of both processes over
// an idle window (CUSTOS_SESSIONS_IDLE, default 30s).
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/custos-agent/custos/agent/bindauth"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/sessions"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tcp"
)

// Environment of the child agent.
const (
	envAgent     = "CUSTOS_SESSIONS_AGENT"      // "1" in the child
	envPlugin    = "CUSTOS_SESSIONS_PLUGIN"     // plugin binary
	envPluginSum = "CUSTOS_SESSIONS_PLUGIN_SUM" // its SHA-256
	envSandbox   = "CUSTOS_SESSIONS_SANDBOX"    // "off" runs the plugin unconfined
	envProf      = "CUSTOS_SESSIONS_PROFPLUGIN" // the profiling plugin (with CUSTOS_BENCH_PROFILE_PLUGINS)
	envProfSum   = "CUSTOS_SESSIONS_PROFPLUGIN_SUM"
)

// agentStats is what the child reports on "stats".
type agentStats struct {
	Live       int    `json:"live"`
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	Reauths    int    `json:"reauths"`     // re-authentications completed (responder side)
	ReauthMax  int    `json:"reauth_max"`  // the most in any one second
	ReauthSecs int    `json:"reauth_secs"` // seconds with at least one
}

// TestSessionsAgent is the child: it runs only when the parent starts it.
func TestSessionsAgent(t *testing.T) {
	if os.Getenv(envAgent) != "1" {
		t.Skip("the agent of BenchmarkSessions (started by it)")
	}
	if os.Getenv("CUSTOS_SESSIONS_PROFILE") != "" {
		runtime.MemProfileRate = 1024 // the default (512 KiB) samples too coarsely for per-session objects
	}
	if err := runSessionsAgent(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sessions agent:", err)
		os.Exit(1)
	}
}

func runSessionsAgent(in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log, st, dm, err := newIdentity(ctx)
	if err != nil {
		return err
	}
	defer dm.Close()
	dir, err := os.MkdirTemp("", "custos-sessions-agent")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := bbolt.Open(filepath.Join(dir, "state.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	pc, err := peers.New(db)
	if err != nil {
		return err
	}
	keyLog := func() *identity.Log { l := log; return &l }
	mode := sandbox.Required
	if os.Getenv(envSandbox) == "off" {
		mode = sandbox.Off
	}
	hc := host.Config{Name: tcp.Name, Path: os.Getenv(envPlugin), SHA256: os.Getenv(envPluginSum),
		Authority: bindauth.NewAuthority(st.ID, dm, pc, keyLog, time.Hour), Logger: quiet(), Sandbox: mode}
	if v := os.Getenv("CUSTOS_SESSIONS_PLUGIN_ENV"); v != "" {
		hc.Env = strings.Fields(v) // e.g. GODEBUG=... (the plugin inherits nothing of this environment)
	}
	if dir := os.Getenv("CUSTOS_BENCH_PROFILE_PLUGINS"); dir != "" {
		// test/bench/profplugin, unconfined (it writes into dir): a heap profile on SIGUSR1.
		hc.Path, hc.SHA256, hc.Sandbox = os.Getenv(envProf), os.Getenv(envProfSum), sandbox.Off
		hc.Env = []string{"CUSTOS_PROFPLUGIN_TRANSPORT=tcp", "CUSTOS_PROFPLUGIN_OUT=" + filepath.Join(dir, "plugin"), "CUSTOS_PROFPLUGIN_HEAP=1"}
	}
	tr, err := host.Start(ctx, hc)
	if err != nil {
		return err
	}
	defer tr.Close()
	l, err := tr.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()

	var rmu sync.Mutex
	reauths := map[int64]int{} // unix second -> re-authentications completed
	cfg := &session.Config{Delegations: dm, KeyLog: keyLog, Peers: pc, Replay: replay.New(replay.Config{}), Logger: quiet(),
		OnEvent: func(e session.Event) {
			if e.Kind == "reauth" {
				rmu.Lock()
				reauths[time.Now().Unix()]++
				rmu.Unlock()
			}
		}}
	mgr, err := sessions.New(ctx, sessions.Config{
		Local: st.ID.String(), MaxHandshakes: 64,
		Transport:     func(string) sessions.Dialer { return nil },
		SessionConfig: func(string, string, string) *session.Config { return cfg },
		Dispatch:      func(context.Context, *session.Peer, *session.Message) error { return nil },
		Redial:        func() backoff.Policy { return backoff.Policy{Min: time.Second, Max: time.Minute} },
		Logger:        quiet(),
	})
	if err != nil {
		return err
	}
	mgr.Serve(ctx, tcp.Name, sessions.ListenerOf[*host.Conn](l))
	defer func() {
		mgr.CloseAll()
		cancel()
		_ = l.Close()
		mgr.Wait()
	}()
	fmt.Fprintf(out, "READY %s %s %d\n", l.Addrs()[0], st.ID, tr.PID())

	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "stats":
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			s := agentStats{Live: mgr.Live(), Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Sys: ms.Sys}
			rmu.Lock()
			for _, n := range reauths {
				s.Reauths += n
				s.ReauthMax = max(s.ReauthMax, n)
				s.ReauthSecs++
			}
			rmu.Unlock()
			b, _ := json.Marshal(s)
			fmt.Fprintf(out, "%s\n", b)
		case "heap": // heap PATH: the heap profile at PATH, the goroutines (text) at PATH.goroutines
			err := writeHeapProfile(f[1])
			if err == nil {
				err = writeGoroutines(f[1] + ".goroutines")
			}
			fmt.Fprintf(out, "heap %v\n", err)
		case "quit":
			return nil
		}
	}
	return sc.Err()
}

func writeHeapProfile(path string) error {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

func writeGoroutines(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("goroutine").WriteTo(f, 1)
}

// child is the parent's handle on the agent process.
type child struct {
	cmd       *exec.Cmd
	in        io.WriteCloser
	out       *bufio.Scanner
	addr, id  string
	pid, plug int
}

func startChild(tb testing.TB) *child {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSessionsAgent$", "-test.count=1")
	mode := "on"
	if os.Getenv(envSandbox) == "off" {
		mode = "off"
	}
	cmd.Env = append(os.Environ(), envAgent+"=1", envPlugin+"="+bins.plugins["tcp"], envPluginSum+"="+bins.sums["tcp"], envSandbox+"="+mode, envProf+"="+bins.prof, envProfSum+"="+bins.profSum)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(outp), pid: cmd.Process.Pid}
	tb.Cleanup(func() {
		_, _ = io.WriteString(c.in, "quit\n")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	for c.out.Scan() {
		f := strings.Fields(c.out.Text())
		if len(f) == 4 && f[0] == "READY" {
			c.addr, c.id = f[1], f[2]
			c.plug, _ = strconv.Atoi(f[3])
			return c
		}
	}
	tb.Fatalf("the agent process ended before it was ready: %v", c.out.Err())
	return nil
}

func (c *child) ask(tb testing.TB, cmd string) string {
	tb.Helper()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		tb.Fatal(err)
	}
	for c.out.Scan() {
		line := c.out.Text()
		if strings.HasPrefix(line, "{") || strings.HasPrefix(line, "heap ") {
			return line
		}
	}
	tb.Fatalf("the agent process ended: %v", c.out.Err())
	return ""
}

func (c *child) stats(tb testing.TB) agentStats {
	var s agentStats
	if err := json.Unmarshal([]byte(c.ask(tb, "stats")), &s); err != nil {
		tb.Fatal(err)
	}
	return s
}

// rssKiB is VmRSS of pid in KiB.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// initiator is one lightweight remote agent.
type initiator struct {
	id   identity.ID
	dm   *delegation.Manager
	auth *bindauth.Authority
	net  *tcp.Network
	cfg  *session.Config
	s    *session.Session
}

// initiators holds what the initiators share: their peer cache (of the agent's log and delegation) and
// replay cache. Each has its own identity, delegation and transport key.
type initiators struct {
	pc     *peers.Cache
	rc     *replay.Cache
	reauth time.Duration
	all    []*initiator
}

func newInitiators(tb testing.TB) *initiators {
	db, err := bbolt.Open(filepath.Join(tb.TempDir(), "initiators.db"), 0o600, &bbolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	pc, err := peers.New(db)
	if err != nil {
		tb.Fatal(err)
	}
	in := &initiators{pc: pc, rc: replay.New(replay.Config{})}
	if v := os.Getenv("CUSTOS_SESSIONS_REAUTH"); v != "" {
		if in.reauth, err = time.ParseDuration(v); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Cleanup(func() {
		var wg sync.WaitGroup
		for _, i := range in.all {
			if i.s != nil {
				wg.Add(1)
				go func() { defer wg.Done(); _ = i.s.Close() }()
			}
		}
		wg.Wait()
		for _, i := range in.all {
			i.dm.Close()
		}
		_ = db.Close()
	})
	return in
}

func (in *initiators) add(tb testing.TB) *initiator {
	ctx := context.Background()
	log, st, dm, err := newIdentity(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	keyLog := func() *identity.Log { l := log; return &l }
	i := &initiator{id: st.ID, dm: dm, auth: bindauth.NewAuthority(st.ID, dm, in.pc, keyLog, time.Hour)}
	in.all = append(in.all, i)
	tid, err := plugin.NewIdentity(tcp.Name)
	if err != nil {
		tb.Fatal(err)
	}
	b, _, err := i.auth.Bind(ctx, tcp.Name, tid.PublicKey())
	if err != nil {
		tb.Fatal(err)
	}
	if err := tid.SetBinding(b); err != nil {
		tb.Fatal(err)
	}
	i.net = tcp.New(quiet())
	if err := i.net.Configure(ctx, tid, nil); err != nil {
		tb.Fatal(err)
	}
	i.cfg = &session.Config{Delegations: dm, KeyLog: keyLog, Peers: in.pc, Replay: in.rc, Logger: quiet(),
		HandshakeTimeout: 20 * time.Second, ReauthInterval: in.reauth}
	return i
}

// connect is one full connect: TLS 1.3 to the agent's plugin with this initiator's bound transport key,
// the agent's binding verified here (the agent's plugin host verifies ours), then the agent handshake.
func (i *initiator) connect(ctx context.Context, addr string, agent identity.ID) error {
	c, err := i.net.Dial(ctx, addr)
	if err != nil {
		return err
	}
	got, err := i.auth.Verify(ctx, tcp.Name, c.PeerBinding(), c.PeerKey())
	if err != nil {
		_ = c.Close()
		return err
	}
	if got != agent.String() {
		_ = c.Close()
		return fmt.Errorf("the binding names %s, want %s", got, agent)
	}
	s, err := session.Initiate(ctx, c, i.cfg, agent)
	if err != nil {
		return err
	}
	i.s = s
	return nil
}

// BenchmarkSessions: see the file comment. Run once (-benchtime 1x); b.N is not used.
func BenchmarkSessions(b *testing.B) {
	steps := []int{100, 1000, 5000}
	if v := os.Getenv("CUSTOS_SESSIONS_N"); v != "" {
		steps = nil
		for _, f := range strings.Fields(v) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				b.Fatalf("CUSTOS_SESSIONS_N=%q", v)
			}
			steps = append(steps, n)
		}
	}
	idle := 30 * time.Second
	if v := os.Getenv("CUSTOS_SESSIONS_IDLE"); v != "" {
		var err error
		if idle, err = time.ParseDuration(v); err != nil {
			b.Fatal(err)
		}
	}
	workers := 32 // below the agent's 64 inbound handshakes and the plugin's 64 TLS handshakes in progress
	maxN := steps[len(steps)-1]
	// Descriptors: one TCP socket per session here; in the plugin a TCP and a data socket per session;
	// in the agent a data socket. All inherit this process's limit (Go raises the soft limit to the hard one).
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		b.Fatal(err)
	}
	if need := uint64(2*maxN + 1024); rl.Cur < need {
		rl.Cur = min(need, rl.Max)
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
		if rl.Cur < need {
			b.Fatalf("RLIMIT_NOFILE is %d (hard %d): %d sessions need about %d (ulimit -n)", rl.Cur, rl.Max, maxN, need)
		}
	}
	profDir := os.Getenv("CUSTOS_SESSIONS_PROFILE")

	for b.Loop() {
		c := startChild(b)
		agentID, err := identity.ParseID(c.id)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the plugin's start settles
		base := c.stats(b)
		baseRSS, basePlug := rssKiB(c.pid), rssKiB(c.plug)
		sb := map[bool]string{true: "off", false: "on"}[os.Getenv(envSandbox) == "off"]
		if bins.profDir != "" {
			sb = "off, test/bench/profplugin"
		}
		fmt.Printf("sessions: agent pid %d, plugin pid %d (sandbox %s), RLIMIT_NOFILE %d, load %s, %s\n",
			c.pid, c.plug, sb, rl.Cur, loadavg(), time.Now().UTC().Format(time.RFC3339))
		fmt.Printf("sessions: N=0 agent RSS %.1f MiB, plugin RSS %.1f MiB, agent heap %.1f MiB, goroutines %d\n",
			float64(baseRSS)/1024, float64(basePlug)/1024, float64(base.HeapInuse+base.StackInuse)/(1<<20), base.Goroutines)
		fmt.Println("| N | connects/s | agent CPU per connect | plugin CPU per connect | agent RSS | plugin RSS | agent KiB/session | plugin KiB/session | together KiB/session | agent Go heap+stacks KiB/session | goroutines/session | agent CPU idle | plugin CPU idle | load |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

		in := newInitiators(b)
		for _, n := range steps {
			first := len(in.all)
			t0 := time.Now()
			for len(in.all) < n {
				in.add(b)
			}
			prep := time.Since(t0)
			load := loadavg()
			a0, p0 := cpuTicks(c.pid), cpuTicks(c.plug)
			t0 = time.Now()
			var failed, lost atomic.Int64
			var firstErr atomic.Value
			work := make(chan *initiator)
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						var err error
						for try := 0; try < 3; try++ {
							ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
							err = i.connect(ctx, c.addr, agentID)
							cancel()
							if err == nil {
								break
							}
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err.Error())
							time.Sleep(100 * time.Millisecond)
						}
						if err != nil {
							lost.Add(1)
						}
					}
				}()
			}
			for _, i := range in.all[first:] {
				work <- i
			}
			close(work)
			wg.Wait()
			el := time.Since(t0)
			added := n - first
			aConn, pConn := cpuTicks(c.pid)-a0, cpuTicks(c.plug)-p0
			if lost.Load() > 0 {
				b.Fatalf("N=%d: %d of %d initiators could not connect in 3 attempts (first error: %v)", n, lost.Load(), added, firstErr.Load())
			}
			// Wait until the agent holds every session, then let it settle before the idle window.
			deadline := time.Now().Add(60 * time.Second)
			for c.stats(b).Live < n && time.Now().Before(deadline) {
				time.Sleep(200 * time.Millisecond)
			}
			time.Sleep(5 * time.Second)
			a1, p1, t1 := cpuTicks(c.pid), cpuTicks(c.plug), time.Now()
			var slices []string // CPU of agent/plugin in each third of the window (ticks of 10 ms)
			for k := 0; k < 3; k++ {
				sa, sp := cpuTicks(c.pid), cpuTicks(c.plug)
				time.Sleep(idle / 3)
				slices = append(slices, fmt.Sprintf("%d/%d", cpuTicks(c.pid)-sa, cpuTicks(c.plug)-sp))
			}
			aIdle, pIdle, w := cpuTicks(c.pid)-a1, cpuTicks(c.plug)-p1, time.Since(t1)
			st := c.stats(b)
			if st.Live != n {
				b.Fatalf("the agent holds %d sessions, want %d", st.Live, n)
			}
			rss, prss := rssKiB(c.pid), rssKiB(c.plug)
			perA, perP := float64(rss-baseRSS)/float64(n), float64(prss-basePlug)/float64(n)
			heap := float64(st.HeapInuse+st.StackInuse-base.HeapInuse-base.StackInuse) / 1024 / float64(n)
			pct := func(ticks int64) string { // of one core; a tick is 10 ms
				return fmt.Sprintf("%.2f %%", float64(ticks)/w.Seconds())
			}
			fmt.Printf("| %d | %.0f | %.2f ms | %.2f ms | %.1f MiB | %.1f MiB | %.1f | %.1f | %.1f | %.1f | %.2f | %s | %s | %s |\n",
				n, float64(added)/el.Seconds(), float64(aConn)*10/float64(added), float64(pConn)*10/float64(added),
				float64(rss)/1024, float64(prss)/1024, perA, perP, perA+perP, heap,
				float64(st.Goroutines-base.Goroutines)/float64(n), pct(aIdle), pct(pIdle), load)
			fmt.Printf("sessions: N=%d: %d initiators made in %s; %d sessions in %s; %d failed attempts (first: %v); re-authentications so far %d (at most %d in one second, over %d seconds); idle window %s (agent/plugin CPU ticks of 10 ms in each third: %s)\n",
				n, added, prep.Round(time.Millisecond), added, el.Round(time.Millisecond), failed.Load(), firstErr.Load(), st.Reauths, st.ReauthMax, st.ReauthSecs, w.Round(time.Millisecond), strings.Join(slices, " "))
			if profDir != "" {
				p := filepath.Join(profDir, fmt.Sprintf("agent-heap-%d.prof", n))
				if r := c.ask(b, "heap "+p); r != "heap <nil>" {
					b.Fatal(errors.New(r))
				}
				fmt.Printf("sessions: heap profile of the agent at N=%d: %s\n", n, p)
			}
			if bins.profDir != "" {
				_ = unix.Kill(c.plug, unix.SIGUSR1)
				time.Sleep(2 * time.Second)
				fmt.Printf("sessions: heap profile of the plugin at N=%d: %s/plugin-%d-heap-*.prof\n", n, bins.profDir, c.plug)
			}
		}
	}
}
