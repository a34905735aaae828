// Package e2e runs Custos agents as separate processes (agentctl run, with the real transport plugins)
// and checks what an operator would: tasks over every transport, refusals, plugin and daemon crashes,
// signals. The binaries are built once in TestMain.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

var bins struct {
	dir      string
	agentctl string
	plugins  map[string]string // transport name -> binary
	sums     map[string]string // transport name -> sha256 hex
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "custos-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// goTool is the go command: `go test` puts $GOROOT/bin first on PATH.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// build compiles agentctl, the daemon custosd beside it (agentctl run executes it) and every transport
// plugin that exists in this tree (libp2p is optional) in one go invocation.
func build(dir string) error {
	bins.dir, bins.plugins, bins.sums = dir, map[string]string{}, map[string]string{}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	pkgs := []string{"./cmd/agentctl", "./cmd/custosd"}
	const commands = 2 // then the plugins
	for _, t := range []string{"tcp", "ws", "libp2p"} {
		if _, err := os.Stat(filepath.Join(root, "cmd", "transport-"+t, "main.go")); err == nil {
			pkgs = append(pkgs, "./cmd/transport-"+t)
		}
	}
	cmd := exec.Command(goTool(), append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", pkgs, err, stderr.String())
	}
	bins.agentctl = filepath.Join(dir, "agentctl")
	for _, p := range pkgs[commands:] {
		name := strings.TrimPrefix(p, "./cmd/transport-")
		path := filepath.Join(dir, "transport-"+name)
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(raw)
		bins.plugins[name], bins.sums[name] = path, fmt.Sprintf("%x", sum)
	}
	return nil
}

// needPlugin fails the test when a transport plugin this tree has was not built: it is never
// optional, so its absence is a broken build, not a reason to skip.
func needPlugin(t testing.TB, name string) {
	t.Helper()
	if bins.plugins[name] == "" {
		t.Fatalf("the %s transport plugin was not built: cmd/transport-%s is missing from the tree", name, name)
	}
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

// Listen ports come from below Linux's default ephemeral range (32768-60999): a port that
// net.Listen(":0") found free is an ephemeral port, and with dozens of agents dialling each other one of
// their outgoing connections can take it before the agent that was given it binds it (seen at N=50 in
// `make network`: "bind: address already in use"). Ports are handed out in turn from a random start, so
// two agents of one test process never get the same one, and each is checked free before it is given.
const (
	portLow  = 20000
	portHigh = 32000
)

// nextPort is the test process's port cursor (see portLow): shared by every test of the package, as the
// loopback ports are.
var nextPort atomic.Int64

func init() { nextPort.Store(int64(portLow + mrand.IntN(portHigh-portLow))) }

// freePort returns a loopback port outside the ephemeral range that was free a moment ago and that no
// other caller in this process was given.
func freePort(t testing.TB) int {
	t.Helper()
	for range portHigh - portLow {
		p := int(nextPort.Add(1)-portLow)%(portHigh-portLow) + portLow
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatalf("no free loopback port in %d-%d", portLow, portHigh)
	return 0
}

// agent is one agent home and, while it runs, its daemon process.
type agent struct {
	t       testing.TB
	name    string
	home    string
	id      string
	env     []string
	ports   map[string]int // transport -> listen port
	cfg     agentConfig
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	exitErr error
	mu      sync.Mutex
	// ownGroup starts the daemon as the leader of a process group of its own (as systemd and a terminal
	// do), so that the test can signal the group.
	ownGroup bool
}

type agentConfig struct {
	Transports []string // transports to configure and listen on
	Bootstrap  []config.PeerConfig
	Handlers   map[string]string // name -> YAML body of the handler
	Extra      string            // appended YAML
	BadSum     string            // transport whose sha256 is wrong
	// Plugin replaces a transport's plugin binary (its sha256 is computed); TransportYAML is appended
	// to every transport's entry (e.g. "    sandbox: off\n").
	Plugin        map[string]string
	TransportYAML string
	// Metrics replaces the metrics section's body (default {address: "127.0.0.1:0"}).
	Metrics string
	// Tasks replaces the tasks section's body (default {retry_interval: 500ms}).
	Tasks string
}

// newAgent makes an identity in a fresh home: software keys, or a SoftHSM token when softhsm is set.
func newAgent(t testing.TB, name string, softhsm bool) *agent {
	t.Helper()
	return newAgentWith(t, name, func(a *agent) []string {
		if softhsm {
			tok := softhsmtest.New(t)
			a.env = softhsmtest.Env(t)
			return []string{"init", "--pkcs11", tok.URI}
		}
		pass := filepath.Join(a.home, "passphrase")
		if err := os.WriteFile(pass, []byte("correct horse "+name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"init", "--software", "--passphrase-file", pass, "--work-factor", "10"}
	})
}

// newAgentWith makes an identity in a fresh home with the agentctl init arguments setup returns (setup
// may also set a.env).
func newAgentWith(t testing.TB, name string, setup func(a *agent) []string) *agent {
	t.Helper()
	home, err := os.MkdirTemp("", "cx") // the control socket path must stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, name: name, home: home, ports: map[string]int{}, logPath: filepath.Join(home, "daemon.log")}
	initArgs := setup(a)
	if out, code := a.run(initArgs...); code != 0 {
		t.Fatalf("%s: agentctl init: exit %d\n%s", name, code, out)
	}
	out, _, code := a.run2("id", "--json")
	if code != 0 {
		t.Fatalf("%s: agentctl id: %s", name, out)
	}
	var id struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &id); err != nil || id.ID == "" {
		t.Fatalf("%s: agentctl id --json: %v\n%s", name, err, out)
	}
	a.id = id.ID
	t.Cleanup(a.kill)
	return a
}

// run runs agentctl with --home and returns its output (stdout, then stderr) and exit code.
func (a *agent) run(args ...string) (string, int) {
	a.t.Helper()
	out, errOut, code := a.run2(args...)
	return out + errOut, code
}

// run2 returns stdout and stderr separately.
func (a *agent) run2(args ...string) (stdout, stderr string, code int) {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.agentctl, append([]string{"--home", a.home}, args...)...)
	cmd.Env = append(os.Environ(), a.env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			a.t.Fatalf("%s: agentctl %v: %v", a.name, args, err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

// ctlJSON runs an agentctl command with --json and decodes its stdout; it fails the test on a non-zero
// exit.
func (a *agent) ctlJSON(v any, args ...string) {
	a.t.Helper()
	out, errOut, code := a.run2(append(args, "--json")...)
	if code != 0 {
		a.t.Fatalf("%s: agentctl %v: exit %d\nstdout: %s\nstderr: %s\ndaemon log:\n%s", a.name, args, code, out, errOut, a.logTail())
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		a.t.Fatalf("%s: agentctl %v: %v\n%s", a.name, args, err, out)
	}
}

func (a *agent) configPath() string { return filepath.Join(a.home, "agent.yaml") }

// writeConfig writes the configuration (ports are chosen once and kept across restarts).
func (a *agent) writeConfig(c agentConfig) {
	a.t.Helper()
	a.cfg = c
	var b strings.Builder
	b.WriteString("transports:\n")
	for _, tn := range c.Transports {
		if a.ports[tn] == 0 {
			a.ports[tn] = freePort(a.t)
		}
		path, sum := bins.plugins[tn], bins.sums[tn]
		if p := c.Plugin[tn]; p != "" {
			raw, err := os.ReadFile(p)
			if err != nil {
				a.t.Fatal(err)
			}
			path, sum = p, fmt.Sprintf("%x", sha256.Sum256(raw))
		}
		if c.BadSum == tn {
			sum = strings.Repeat("0", 64)
		}
		fmt.Fprintf(&b, "  - name: %s\n    plugin: %s\n    sha256: %s\n    listen: [%q]\n", tn, path, sum, a.listenAddr(tn))
		b.WriteString(c.TransportYAML)
	}
	if len(c.Bootstrap) > 0 {
		b.WriteString("bootstrap:\n")
		for _, p := range c.Bootstrap {
			fmt.Fprintf(&b, "  - id: %s\n    transport: %s\n    address: %q\n", p.ID, p.Transport, p.Address)
		}
	}
	b.WriteString("handlers:\n  echo: {builtin: echo}\n  sha256: {builtin: sha256}\n")
	for n, h := range c.Handlers {
		fmt.Fprintf(&b, "  %s:\n%s\n", n, h)
	}
	if c.Metrics != "" {
		b.WriteString("metrics: " + c.Metrics + "\n")
	} else {
		b.WriteString("metrics: {address: \"127.0.0.1:0\"}\n")
	}
	tasksBody := "{retry_interval: 500ms}"
	if c.Tasks != "" {
		tasksBody = c.Tasks
	}
	b.WriteString("tasks: " + tasksBody + "\nredial: {min: 100ms, max: 2s}\nlimits: {drain_timeout: 5s}\n")
	if !strings.Contains(c.Extra, "authorization:") {
		// Tests that are not about authorization let every peer submit tasks; the default is that no peer
		// without a grant may (docs/authorization.md). authz_*_test.go configure it themselves.
		b.WriteString("authorization: {default_peer_roles: [task_submitter]}\n")
	}
	b.WriteString(c.Extra)
	if err := os.WriteFile(a.configPath(), []byte(b.String()), 0o600); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agent) listenAddr(tn string) string {
	if tn == "libp2p" {
		return fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", a.ports[tn])
	}
	return fmt.Sprintf("127.0.0.1:%d", a.ports[tn])
}

// dialAddr is the address peers dial for transport tn.
func (a *agent) dialAddr(tn string) string {
	switch tn {
	case "ws":
		return fmt.Sprintf("wss://127.0.0.1:%d/custos/v1", a.ports[tn])
	case "libp2p":
		// libp2p multiaddrs carry the host's peer ID, which changes with every plugin start: ask the agent.
		var st api.Status
		a.ctlJSON(&st, "status")
		for _, tr := range st.Transports {
			if tr.Name == tn && len(tr.Listen) > 0 {
				return tr.Listen[0]
			}
		}
		a.t.Fatalf("%s has no libp2p listen address", a.name)
	}
	return a.listenAddr(tn)
}

func (a *agent) bootstrapTo(b *agent, tn string) config.PeerConfig {
	return config.PeerConfig{ID: b.id, Transport: tn, Address: b.dialAddr(tn)}
}

// startProcess launches agentctl run without waiting for it to be ready.
func (a *agent) startProcess() {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		a.t.Fatal(err)
	}
	cmd := exec.Command(bins.agentctl, "--home", a.home, "run", "--config", a.configPath())
	cmd.Env = append(os.Environ(), a.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if a.ownGroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	logf.Close()
	a.mu.Lock()
	a.cmd, a.exited, a.exitErr = cmd, make(chan struct{}), nil
	exited := a.exited
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.exitErr = err
		a.mu.Unlock()
		close(exited)
	}()
}

// start launches the daemon and waits until its control socket answers.
func (a *agent) start() {
	a.t.Helper()
	a.startProcess()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-a.exited:
			a.t.Fatalf("%s: agentctl run exited during start-up (%v)\n%s", a.name, a.exitErr, a.logTail())
		default:
		}
		if _, _, code := a.run2("status"); code == 0 {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("%s: daemon not ready within 30s\n%s", a.name, a.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitExit waits for the daemon to exit and returns its exit code.
func (a *agent) waitExit(d time.Duration) int {
	a.t.Helper()
	select {
	case <-a.exited:
	case <-time.After(d):
		a.t.Fatalf("%s: daemon did not exit within %v\n%s", a.name, d, a.logTail())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.exitErr == nil {
		return 0
	}
	if ee, ok := a.exitErr.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -int(ws.Signal())
		}
		return ee.ExitCode()
	}
	a.t.Fatalf("%s: wait: %v", a.name, a.exitErr)
	return -1
}

func (a *agent) signal(sig syscall.Signal) {
	a.t.Helper()
	a.mu.Lock()
	cmd := a.cmd
	a.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		a.t.Fatalf("%s: signal %v: %v", a.name, sig, err)
	}
}

// kill stops a still-running daemon (test cleanup).
func (a *agent) kill() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

func (a *agent) logText() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

func (a *agent) logTail() string {
	s := a.logText()
	if len(s) > 6000 {
		s = "...\n" + s[len(s)-6000:]
	}
	return s
}

// eventually polls cond every 50 ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// status returns the agent's status.
func (a *agent) status() api.Status {
	a.t.Helper()
	var st api.Status
	a.ctlJSON(&st, "status")
	return st
}

// sessionWith returns the agent's session with peer, if any.
func (a *agent) sessionWith(peer string) *api.SessionStatus {
	a.t.Helper()
	out, _, code := a.run2("status", "--json")
	if code != 0 {
		return nil
	}
	var st api.Status
	if json.Unmarshal([]byte(out), &st) != nil {
		return nil
	}
	for _, s := range st.Sessions {
		if s.Peer == peer {
			return &s
		}
	}
	return nil
}

func (a *agent) transportStatus(name string) api.TransportStatus {
	a.t.Helper()
	for _, tr := range a.status().Transports {
		if tr.Name == name {
			return tr
		}
	}
	a.t.Fatalf("%s: no transport %s in status", a.name, name)
	return api.TransportStatus{}
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s)
}
