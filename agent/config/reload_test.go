package config

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		changed              []string
		applied, needRestart []string
	}{
		{nil, nil, nil},
		{[]string{"handlers.echo", "handlers.x"}, []string{"handlers.echo", "handlers.x"}, nil},
		{[]string{"authorization", "bootstrap", "log", "policy", "redial", "rotation", "session"}, []string{"authorization", "bootstrap", "log", "policy", "redial", "rotation", "session"}, nil},
		{[]string{"audit", "delegation", "gateway", "limits", "metrics", "privacy", "puzzles", "reputation", "tasks", "transports.tcp"},
			nil, []string{"audit", "delegation", "gateway", "limits", "metrics", "privacy", "puzzles", "reputation", "tasks", "transports.tcp"}},
		{[]string{"handlers.echo", "limits", "session", "transports.ws"}, []string{"handlers.echo", "session"}, []string{"limits", "transports.ws"}},
		{[]string{"handlers"}, nil, []string{"handlers"}}, // only a named handler is a change a reload applies
		{[]string{"transports.tcp.plugin", "transports.ws"}, []string{"transports.tcp.plugin"}, []string{"transports.ws"}},
	}
	for _, c := range cases {
		a, r := Classify(c.changed)
		if !slices.Equal(a, c.applied) || !slices.Equal(r, c.needRestart) {
			t.Errorf("Classify(%v) = %v, %v; want %v, %v", c.changed, a, r, c.applied, c.needRestart)
		}
	}
}

func TestInForceKeepsRestartSettings(t *testing.T) {
	old, err := ParseConfig([]byte("log: {level: info}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cur, err := ParseConfig([]byte("log: {level: debug}\nlimits: {max_concurrent_tasks: 3}\nsession: {reauth_interval: 1m}\nredial: {max: 5s}\ntasks: {retry_interval: 7s}\npolicy: {geo: {database: /nonexistent/geo.mmdb}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := InForce(old, cur)
	// Applied at once: the new values.
	if got.Log.Level != "debug" || got.Session.ReauthInterval != time.Minute || got.Redial.Max != 5*time.Second {
		t.Fatalf("applied sections not taken from the new configuration: log %q, session %v, redial %v", got.Log.Level, got.Session.ReauthInterval, got.Redial.Max)
	}
	// Need a restart: the running values.
	if got.Limits.MaxConcurrentTasks != old.Limits.MaxConcurrentTasks || got.Tasks.RetryInterval != old.Tasks.RetryInterval || got.Policy.Geo.Database != old.Policy.Geo.Database {
		t.Fatalf("restart-only settings changed while running: limits %d, tasks %v, geo %q", got.Limits.MaxConcurrentTasks, got.Tasks.RetryInterval, got.Policy.Geo.Database)
	}
	if cur.Limits.MaxConcurrentTasks != 3 || got == cur {
		t.Fatal("InForce changed its argument or returned it")
	}
}

// TestPluginUpdateDiff: a transport whose entry changed only in plugin and sha256 is a reloadable
// "transports.NAME.plugin" change (PluginUpdates lists it, InForce takes the new binary and checksum);
// any other change to the entry, with or without a new binary, needs a restart.
func TestPluginUpdateDiff(t *testing.T) {
	const base = "transports:\n  - {name: tcp, plugin: /usr/lib/custos/transport-tcp, sha256: %s, listen: [\"127.0.0.1:7400\"]}\n  - {name: ws, plugin: /usr/lib/custos/transport-ws, sha256: %s}\n"
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	parse := func(body string) *Config {
		t.Helper()
		cfg, err := ParseConfig([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	old := parse(fmt.Sprintf(base, a, a))
	upd := parse(strings.Replace(fmt.Sprintf(base, b, a), "/usr/lib/custos/transport-tcp", "/opt/custos/transport-tcp-2", 1))
	if d := Diff(old, upd); !slices.Equal(d, []string{"transports.tcp.plugin"}) {
		t.Fatalf("Diff of a plugin update: %v", d)
	}
	if u := PluginUpdates(old, upd); len(u) != 1 || u[0].Name != "tcp" || u[0].SHA256 != b || u[0].Plugin != "/opt/custos/transport-tcp-2" {
		t.Fatalf("PluginUpdates: %+v", u)
	}
	got := InForce(old, upd)
	if got.Transports[0].SHA256 != b || got.Transports[0].Plugin != "/opt/custos/transport-tcp-2" || got.Transports[1].SHA256 != a {
		t.Fatalf("InForce of a plugin update: %+v", got.Transports)
	}
	// A new checksum together with a new listen address: a restart.
	both := parse(strings.Replace(fmt.Sprintf(base, c, a), "127.0.0.1:7400", "127.0.0.1:7401", 1))
	if d := Diff(old, both); !slices.Equal(d, []string{"transports.tcp"}) || PluginUpdates(old, both) != nil || InForce(old, both).Transports[0].SHA256 != a {
		t.Fatalf("a plugin update with another change: Diff %v", d)
	}
}
