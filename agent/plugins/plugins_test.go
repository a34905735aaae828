package plugins

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

func TestBindPorts(t *testing.T) {
	cases := []struct {
		name   string
		tc     config.TransportConfig
		expect []uint16
	}{
		{"tcp listens", config.TransportConfig{Name: "tcp", Listen: []string{"0.0.0.0:7400", "[::1]:7401"}}, []uint16{7400, 7401}},
		{"tcp only dials", config.TransportConfig{Name: "tcp"}, []uint16{}},
		{"ws URL", config.TransportConfig{Name: "ws", Listen: []string{"ws://0.0.0.0:8443/custos/v1"}}, []uint16{8443}},
		{"ephemeral port", config.TransportConfig{Name: "tcp", Listen: []string{"127.0.0.1:0"}}, []uint16{0}},
		{"no numeric port: no rule", config.TransportConfig{Name: "tcp", Listen: []string{"127.0.0.1:http"}}, nil},
		{"no port: no rule", config.TransportConfig{Name: "tcp", Listen: []string{"127.0.0.1"}}, nil},
		{"port out of range: no rule", config.TransportConfig{Name: "tcp", Listen: []string{"127.0.0.1:70000"}}, nil},
		{"libp2p: no rule", config.TransportConfig{Name: "libp2p", Listen: []string{"/ip4/0.0.0.0/tcp/4001"}}, nil},
	}
	for _, c := range cases {
		got := BindPorts(c.tc)
		if !slices.Equal(got, c.expect) || (got == nil) != (c.expect == nil) {
			t.Errorf("%s: BindPorts = %#v, want %#v", c.name, got, c.expect)
		}
	}
}

func TestVerifyChecksums(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "transport-tcp")
	if err := os.WriteFile(plugin, []byte("#!/bin/false\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("#!/bin/false\n"))
	good := hex.EncodeToString(sum[:])
	other := strings.Repeat("0", 64)
	cases := []struct {
		name string
		ts   []config.TransportConfig
		is   error
		says []string
	}{
		{"none", nil, nil, nil},
		{"matching", []config.TransportConfig{{Name: "tcp", Plugin: plugin, SHA256: good}}, nil, nil},
		{"mismatch names the file, both sums and the fix", []config.TransportConfig{{Name: "tcp", Plugin: plugin, SHA256: good}, {Name: "ws", Plugin: plugin, SHA256: other}},
			host.ErrChecksum, []string{"transport ws: plugin " + plugin, "the file's SHA-256 is " + good, "the configuration says " + other, "reinstall the plugin or update transports[].sha256"}},
		{"missing file", []config.TransportConfig{{Name: "tcp", Plugin: filepath.Join(dir, "gone"), SHA256: good}}, os.ErrNotExist, []string{"transport tcp: plugin " + filepath.Join(dir, "gone")}},
	}
	for _, c := range cases {
		err := VerifyChecksums(c.ts)
		if c.is == nil && err != nil || c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %v", c.name, err, c.is)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not say %q", c.name, err, s)
			}
		}
	}
}

func TestSandboxGauges(t *testing.T) {
	all := sandbox.All()
	g := SandboxGauges(sandbox.Protections{})
	if len(g) != len(all) {
		t.Fatalf("%d gauges for %d protections", len(g), len(all))
	}
	for _, p := range all {
		if on, ok := g[p]; !ok || on {
			t.Errorf("protection %s: gauge %v (present %v) with none applied", p, on, ok)
		}
	}
}

// fakeEvents records what the set reports.
type fakeEvents struct {
	mu       sync.Mutex
	crashes  []string
	restarts []string
	plugin   []*events.Plugin
	refused  []string
	records  []audit.EventType
}

func (f *fakeEvents) Record(typ audit.EventType, _, _ string, _ audit.Outcome, _ map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = append(f.records, typ)
}

func (f *fakeEvents) PluginCrashed(ev host.CrashEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashes = append(f.crashes, ev.Transport)
}

func (f *fakeEvents) PluginStartFailed(host.StartFailure) {}

func (f *fakeEvents) PluginRestarted(ev host.RestartEvent, plugin func() *events.Plugin) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restarts = append(f.restarts, ev.Transport)
	f.plugin = append(f.plugin, plugin())
}

func (f *fakeEvents) PeerRefused(transport, remote string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refused = append(f.refused, transport+" "+remote+" "+err.Error())
}

type fakeMetrics struct{}

func (fakeMetrics) PluginSandbox(string, map[string]bool) {}

// An empty set (no transport configured) answers every room without a plugin; its observer reports
// restarts (re-dialling every target) and refused peers.
func TestEmptySetAndObserver(t *testing.T) {
	ev := &fakeEvents{}
	woken := 0
	s := New(Config{Events: ev, Metrics: fakeMetrics{}, OnRestart: func() { woken++ }})
	if s.Names() != nil || s.PIDs() != nil || s.Statuses() != nil || s.Networks() != nil || s.Has("tcp") || s.Get("tcp") != nil {
		t.Fatal("an empty set reports transports")
	}
	if err := s.Close(); err != nil || len(ev.records) != 0 {
		t.Fatalf("Close of an empty set: %v, records %v", err, ev.records)
	}
	var o host.Observer = observer{s}
	o.PluginCrashed(host.CrashEvent{Transport: "tcp", PID: 7})
	if !slices.Equal(ev.crashes, []string{"tcp"}) || woken != 0 {
		t.Fatalf("crash: %v (woken %d: nothing to re-dial before the restart)", ev.crashes, woken)
	}
	o.PluginRestarted(host.RestartEvent{Transport: "tcp", Restarts: 1})
	o.PeerRefused("tcp", "192.0.2.1:7400", errors.New("bad binding"))
	if woken != 1 || !slices.Equal(ev.restarts, []string{"tcp"}) || ev.plugin[0] != nil {
		t.Fatalf("restart: woken %d, restarts %v, plugin %v", woken, ev.restarts, ev.plugin)
	}
	if !slices.Equal(ev.refused, []string{"tcp 192.0.2.1:7400 bad binding"}) {
		t.Fatalf("refused: %v", ev.refused)
	}
}
