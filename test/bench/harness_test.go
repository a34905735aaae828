// Package bench holds the agent-level benchmarks (docs/benchmarks.md, "Transports"): two agents in this
// process, each with its identity, delegation manager, peer cache, replay cache, task store and engine on
// bbolt, talking through real transport plugin subprocesses (built once in TestMain), beside raw TLS 1.3
// and raw libp2p streams measured in the same run.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/bindauth"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/session"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

var bins struct {
	plugins map[string]string // transport -> binary
	sums    map[string]string // transport -> sha256 hex
	// With CUSTOS_BENCH_PROFILE_PLUGINS=DIR, every agent runs test/bench/profplugin instead, which writes
	// DIR/<agent>-<transport>-<pid>.prof (go tool pprof -top).
	profDir, prof, profSum string
}

// transportNames are the transports every agent-level benchmark covers.
var transportNames = []string{"tcp", "ws", "libp2p"}

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		os.Exit(m.Run()) // no benchmark asked for (go test ./...): nothing to build
	}
	dir, err := os.MkdirTemp("", "custos-bench-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench: build:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// build compiles the three transport plugins in one go invocation.
func build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	goTool := "go"
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	var pkgs []string
	for _, t := range transportNames {
		pkgs = append(pkgs, "./cmd/transport-"+t)
	}
	if bins.profDir = os.Getenv("CUSTOS_BENCH_PROFILE_PLUGINS"); bins.profDir != "" {
		pkgs = append(pkgs, "./test/bench/profplugin")
	}
	cmd := exec.Command(goTool, append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", pkgs, err, stderr.String())
	}
	bins.plugins, bins.sums = map[string]string{}, map[string]string{}
	for _, t := range transportNames {
		p := filepath.Join(dir, "transport-"+t)
		sum, err := host.FileSHA256(p)
		if err != nil {
			return err
		}
		bins.plugins[t], bins.sums[t] = p, sum
	}
	if bins.profDir != "" {
		bins.prof = filepath.Join(dir, "profplugin")
		if bins.profSum, err = host.FileSHA256(bins.prof); err != nil {
			return err
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the test directory")
		}
		dir = parent
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// agent is one agent's state, wired as agent/daemon wires it: identity, delegation manager, peer cache,
// task store and engine on one bbolt file, a replay cache, the operational-key binding authority and one
// transport plugin.
type agent struct {
	name   string
	id     identity.ID
	log    identity.Log
	dm     *delegation.Manager
	db     *bbolt.DB
	peers  *peers.Cache
	replay *replay.Cache
	store  *tasks.Store
	engine *tasks.Engine
	tr     *host.Transport
	// signEnvelopes: this agent signs the session envelopes it sends (session.Config.SignEnvelopes).
	signEnvelopes bool

	mu       sync.Mutex
	sessions map[string]*session.Session
	sink     func(peer string, m *session.Message) // messages benchmarks: where received messages go
	wg       sync.WaitGroup
}

// sandboxModes are the plugin sandbox settings BenchmarkMessages and BenchmarkConnect compare (ADR 0040):
// "on" is the default (sandbox required), "off" runs the plugins unconfined.
var sandboxModes = []struct {
	name string
	mode sandbox.Mode
}{{"sandbox=on", sandbox.Required}, {"sandbox=off", sandbox.Off}}

func newAgent(tb testing.TB, name, transport string) *agent {
	return newAgentSandbox(tb, name, transport, sandbox.Required)
}

// newIdentity is a fresh software identity: its key event log (inception, committing a next key),
// the log's state, and a delegation manager that signs with its key.
func newIdentity(ctx context.Context) (log identity.Log, st identity.State, dm *delegation.Manager, err error) {
	cur, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		return
	}
	next, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		return
	}
	ev, err := identity.Incept(ctx, cur, next.Public(), keystore.PublicKey{}, time.Now())
	if err != nil {
		return
	}
	log = identity.Log{Events: []identity.Event{ev}}
	if st, err = log.Verify(); err != nil {
		return
	}
	dm, err = delegation.NewManager(ctx, delegation.Config{Identity: cur, State: st, Logger: quiet()})
	return
}

// newAgentSandbox is newAgent with the plugin sandbox set to mode.
func newAgentSandbox(tb testing.TB, name, transport string, mode sandbox.Mode) *agent {
	tb.Helper()
	ctx := context.Background()
	log, st, dm, err := newIdentity(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	a := &agent{name: name, log: log, id: st.ID, dm: dm, sessions: map[string]*session.Session{}}
	dir := tb.TempDir()
	if a.db, err = bbolt.Open(filepath.Join(dir, "state.db"), 0o600, &bbolt.Options{Timeout: time.Second}); err != nil {
		tb.Fatal(err)
	}
	if a.peers, err = peers.New(a.db); err != nil {
		tb.Fatal(err)
	}
	if a.store, err = tasks.NewStore(a.db); err != nil {
		tb.Fatal(err)
	}
	// The default replay cache admits 10,000 live message IDs per sender (ADR 0009: sized for the default
	// rate limit of 100 msg/s); the benchmarks send tens of thousands per second, so give it room.
	a.replay = replay.New(replay.Config{Capacity: 1 << 24, PerSender: 1 << 24})
	a.engine, err = tasks.New(tasks.Config{
		LocalID: a.id.String(), Store: a.store, Handlers: tasks.Registry{"sha256": tasks.SHA256(), "echo": tasks.Echo()},
		Keys: a.dm, Peers: a.peers, Sender: a, MaxConcurrent: 4, MaxQueued: 1 << 16, RetryInterval: time.Minute, Logger: quiet(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := a.engine.Start(); err != nil {
		tb.Fatal(err)
	}
	auth := bindauth.NewAuthority(a.id, a.dm, a.peers, a.keyLog, time.Hour)
	hc := host.Config{Name: transport, Path: bins.plugins[transport], SHA256: bins.sums[transport], Authority: auth, Logger: quiet(), Sandbox: mode}
	if bins.profDir != "" {
		// The profiling plugin writes its profile into a host directory: it runs unconfined.
		hc.Path, hc.SHA256, hc.Sandbox = bins.prof, bins.profSum, sandbox.Off
		hc.Env = []string{"CUSTOS_PROFPLUGIN_TRANSPORT=" + transport, "CUSTOS_PROFPLUGIN_OUT=" + filepath.Join(bins.profDir, name+"-"+transport)}
	}
	a.tr, err = host.Start(ctx, hc)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.close)
	return a
}

func (a *agent) keyLog() *identity.Log { l := a.log; return &l }

func (a *agent) sessionConfig() *session.Config {
	return &session.Config{Delegations: a.dm, KeyLog: a.keyLog, Peers: a.peers, Replay: a.replay, Logger: quiet(),
		HandshakeTimeout: 20 * time.Second, SignEnvelopes: a.signEnvelopes}
}

func (a *agent) close() {
	a.mu.Lock()
	ss := a.sessions
	a.sessions = map[string]*session.Session{}
	a.mu.Unlock()
	for _, s := range ss {
		_ = s.Close()
	}
	a.wg.Wait()
	a.engine.Close()
	_ = a.tr.Close()
	a.dm.Close()
	_ = a.db.Close()
}

// Send implements tasks.Sender over the session with peer.
func (a *agent) Send(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error {
	a.mu.Lock()
	s := a.sessions[peer]
	a.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%w %s", tasks.ErrNoSession, peer)
	}
	_, err := s.Send(ctx, t, payload)
	return err
}

// register makes s the session with its peer and runs its receive loop (like the daemon's manager).
func (a *agent) register(s *session.Session) {
	peer := s.Peer().ID.String()
	a.mu.Lock()
	old := a.sessions[peer]
	a.sessions[peer] = s
	a.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			m, err := s.Receive(context.Background())
			if err != nil {
				return
			}
			a.mu.Lock()
			sink := a.sink
			a.mu.Unlock()
			if sink != nil {
				sink(peer, m)
				continue
			}
			_ = a.engine.Handle(context.Background(), peer, m.Envelope.Header.MessageType, m.Payload)
		}
	}()
	a.engine.PeerUp(peer)
}

// connect makes a listen on the loopback with its transport; b dials it: transport handshake through
// both plugins, binding verification, the agent handshake. Both sessions are registered.
func connect(tb testing.TB, a, b *agent, transport string) (*session.Session, *session.Session) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := "127.0.0.1:0"
	if transport == "libp2p" {
		addr = "/ip4/127.0.0.1/tcp/0"
	}
	l, err := a.tr.Listen(ctx, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	sa, sb := handshake(tb, ctx, a, b, l)
	a.register(sa)
	b.register(sb)
	return sa, sb
}

// handshake runs one full connect: b dials a's listener l, a accepts; both run the agent handshake.
func handshake(tb testing.TB, ctx context.Context, a, b *agent, l *host.Listener) (*session.Session, *session.Session) {
	type res struct {
		s   *session.Session
		err error
	}
	rc := make(chan res, 1)
	go func() {
		c, err := l.Accept(ctx)
		if err != nil {
			rc <- res{nil, err}
			return
		}
		s, err := session.Accept(ctx, c, a.sessionConfig())
		rc <- res{s, err}
	}()
	c, err := b.tr.Dial(ctx, l.Addrs()[0], a.id.String())
	if err != nil {
		tb.Fatal(err)
	}
	sb, err := session.Initiate(ctx, c, b.sessionConfig(), a.id)
	if err != nil {
		tb.Fatal(err)
	}
	r := <-rc
	if r.err != nil {
		tb.Fatal(r.err)
	}
	return r.s, sb
}

// cpuTicks returns the user+system CPU time of process pid (clock ticks of 10 ms, USER_HZ 100).
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

// cpuMeter reports the CPU time the benchmark process and the plugin processes used per operation.
type cpuMeter struct {
	pids  map[string]int
	start map[string]int64
}

func newCPUMeter(pids map[string]int) *cpuMeter {
	m := &cpuMeter{pids: pids, start: map[string]int64{}}
	for n, p := range pids {
		m.start[n] = cpuTicks(p)
	}
	return m
}

// report adds "<name>-cpu-µs/op" metrics (10 ms resolution: meaningful over runs of a second or more).
func (m *cpuMeter) report(b *testing.B, ops int) {
	if ops == 0 {
		return
	}
	for n, p := range m.pids {
		d := cpuTicks(p) - m.start[n]
		b.ReportMetric(float64(d)*10_000/float64(ops), n+"-cpu-µs/op")
	}
}

// frame I/O of the raw baselines: the same framing as the plugins' (4-byte big-endian length, bytes),
// buffered like transports/internal/netframe.
type framer struct {
	r  *bufio.Reader
	w  *bufio.Writer
	mu sync.Mutex
}

func newFramer(rw io.ReadWriter) *framer {
	return &framer{r: bufio.NewReaderSize(rw, 64<<10), w: bufio.NewWriterSize(rw, 64<<10)}
}

func (f *framer) WriteFrame(_ context.Context, b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var h [4]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(b)))
	if _, err := f.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := f.w.Write(b); err != nil {
		return err
	}
	return f.w.Flush()
}

func (f *framer) ReadFrame(context.Context) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(h[:]))
	_, err := io.ReadFull(f.r, b)
	return b, err
}
