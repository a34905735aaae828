package config

import (
	"slices"
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
