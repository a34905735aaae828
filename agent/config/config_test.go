package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const validSum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte("transports:\n  - {name: tcp, plugin: /opt/custos/transport-tcp, sha256: " + validSum + ", listen: [\"0.0.0.0:7400\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Session.ReauthInterval != 15*time.Minute || c.Delegation.Mode != "delegated" || c.Limits.DrainTimeout != 30*time.Second ||
		c.Metrics.Address != "127.0.0.1:9464" || len(c.Handlers) != 2 || c.Redial.Max != 30*time.Second || c.Log.Level != "info" ||
		c.Audit.OnFailure != AuditRefuse || c.Discovery.RepublishInterval != DefaultRepublishInterval || c.Discovery.RecordLifetime() != time.Hour {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseConfigRefusals(t *testing.T) {
	tr := "transports:\n  - {name: tcp, plugin: /opt/t, sha256: " + validSum + "}\n"
	cases := []struct{ name, in, want string }{
		{"unknown key", "transport: []\n", "line 1: transport: unknown key"},
		{"unknown nested key", "session: {reauth: 1m}\n", "line 1: session.reauth: unknown key (the keys there are: handshake_timeout, hybrid, reauth_interval"},
		{"duration without unit", "session: {reauth_interval: 60}\n", "line 1: session.reauth_interval: 60 is not a duration; write it with a unit, like 30s"},
		{"two documents", "log: {level: info}\n---\nlog: {level: info}\n", "more than one YAML document"},
		{"relative plugin", "transports:\n  - {name: tcp, plugin: bin/t, sha256: " + validSum + "}\n", "transports[0].plugin"},
		{"bad digest", "transports:\n  - {name: tcp, plugin: /opt/t, sha256: ABC}\n", "transports[0].sha256"},
		{"sandbox mode", "transports:\n  - {name: tcp, plugin: /opt/t, sha256: " + validSum + ", sandbox: maybe}\n", "transports[0].sandbox"},
		{"duplicate transport", tr + "  - {name: tcp, plugin: /opt/u, sha256: " + validSum + "}\n", "configured twice"},
		{"transport named gateway", "transports:\n  - {name: gateway, plugin: /opt/t, sha256: " + validSum + "}\n", "\"gateway\" is reserved"},
		{"bootstrap bad id", tr + "bootstrap: [{id: alice, address: \"h:1\"}]\n", "bootstrap[0].id"},
		{"bootstrap unknown transport", tr + "bootstrap: [{id: ed25519:tTPYrZ_Pvd4LSBwbM03cPFNBL9YUVk5-Wv0CA2jTgsM, address: \"wss://h:1/custos/v1\"}]\n", "transport ws"},
		{"handler both", "handlers: {x: {builtin: echo, exec: {command: /bin/cat}}}\n", "not both"},
		{"handler relative command", "handlers: {x: {exec: {command: cat}}}\n", "handlers.x.exec"},
		{"handler sandbox mode", "handlers: {x: {exec: {command: /bin/cat, sandbox: none}}}\n", "sandbox mode \"none\""},
		{"handler relative read path", "handlers: {x: {exec: {command: /bin/cat, read_paths: [data]}}}\n", "read path \"data\" must be a clean absolute path"},
		{"handler negative limit", "handlers: {x: {exec: {command: /bin/cat, limits: {memory: -1}}}}\n", "negative limit"},
		{"handler bad name", "handlers: {X: {builtin: echo}}\n", "handlers.X"},
		{"mode", "delegation: {mode: lax}\n", "delegation.mode"},
		{"metrics not loopback", "metrics: {address: \"0.0.0.0:9464\"}\n", "metrics.address"},
		{"metrics advice", "metrics: {address: \"10.0.0.1:9464\"}\n", "put a reverse proxy with authentication"},
		{"log level", "log: {level: loud}\n", "log.level"},
		{"redial order", "redial: {min: 5s, max: 1s}\n", "redial.max"},
		{"republish too often", "discovery: {republish_interval: 500ms}\n", "discovery.republish_interval: 500ms is outside 1s..12h"},
		{"republish too rarely", "discovery: {republish_interval: 13h}\n", "discovery.republish_interval"},
		{"audit on_failure", "audit: {on_failure: ignore}\n", "audit.on_failure: \"ignore\": want refuse"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.in))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want ErrConfig mentioning %q", err, c.want)
			}
		})
	}
}

// The documented example must stay valid.
func TestExampleConfigParses(t *testing.T) {
	path := filepath.Join("..", "..", "configs", "agent.example.yaml")
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	c, digest, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(digest) != 64 || len(c.Transports) == 0 || len(c.Bootstrap) == 0 || c.Handlers["sha256"].Builtin != "sha256" {
		t.Fatalf("example: %+v", c)
	}
	// It runs on loopback as shipped (issue 18, defect 2), with the plugins where the package puts them.
	for _, tr := range c.Transports {
		if !strings.HasPrefix(tr.Plugin, "/usr/lib/custos/") {
			t.Errorf("example transport %s: plugin %s is not where the package installs it (/usr/lib/custos/)", tr.Name, tr.Plugin)
		}
		for _, l := range tr.Listen {
			if !strings.Contains(l, "127.0.0.1") {
				t.Errorf("example transport %s listens on %s, not loopback", tr.Name, l)
			}
		}
	}
	for _, b := range c.Bootstrap {
		if !strings.Contains(b.Address, "127.0.0.1") {
			t.Errorf("example bootstrap address %s is not loopback", b.Address)
		}
	}
}

func TestDiff(t *testing.T) {
	a, _ := ParseConfig([]byte("handlers: {echo: {builtin: echo}, sha256: {builtin: sha256}}\n"))
	b, _ := ParseConfig([]byte("handlers: {echo: {builtin: sha256}, x: {builtin: echo}}\nsession: {reauth_interval: 1m}\n"))
	if got := strings.Join(Diff(a, b), ","); got != "handlers.echo,handlers.sha256,handlers.x,session" {
		t.Fatalf("diff %s", got)
	}
	if got := Diff(a, a); len(got) != 0 {
		t.Fatalf("diff of equal configs: %v", got)
	}
}

func TestInferTransport(t *testing.T) {
	for addr, want := range map[string]string{"10.0.0.1:7400": "tcp", "wss://h:7443/custos/v1": "ws", "/ip4/1.2.3.4/tcp/4001/p2p/12D3Koo": "libp2p"} {
		if got := InferTransport(addr); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}

// A value of the wrong form is one line naming the key, the value and the form expected, never the YAML
// library's Go jargon (issue 18, defect 7).
func TestParseConfigTypeErrorsNameTheKey(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"duration without unit", "limits:\n  drain_timeout: 30\n",
			"line 2: limits.drain_timeout: 30 is not a duration; write it with a unit, like 30s"},
		{"bad duration", "session: {reauth_interval: soon}\n",
			"line 1: session.reauth_interval: soon is not a duration; write it with a unit, like 30s"},
		{"number expected", "limits: {max_inbound_handshakes: many}\n",
			"line 1: limits.max_inbound_handshakes: many is not a whole number"},
		{"bool expected", "metrics: {disabled: perhaps}\n",
			"line 1: metrics.disabled: perhaps is not true or false"},
		{"list index", "transports:\n  - {name: tcp, plugin: /opt/t, sha256: " + validSum + ", listen: 7400}\n",
			"line 2: transports[0].listen: 7400 is not a list; write it as [a, b] or one \"- item\" per line"},
		{"unknown key", "limits:\n  drain_timout: 30s\n",
			"line 2: limits.drain_timout: unknown key"},
		{"mapping expected", "limits: 30s\n",
			"line 1: limits: 30s is not a mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.in))
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err %v, want ErrConfig", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) {
				t.Errorf("err %q\nwant it to contain %q", msg, c.want)
			}
			for _, jargon := range []string{"unmarshal", "!!", "time.Duration", "config.", "\n"} {
				if strings.Contains(msg, jargon) {
					t.Errorf("err %q contains %q", msg, jargon)
				}
			}
		})
	}
}

// The metrics address refusal advises only what the configuration offers (issue 18, defect 6): no
// "allow non-loopback" option exists in it.
func TestMetricsAdviceNamesRealOptions(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:9464", "10.0.0.1:9464", "metrics.example:9464"} {
		_, err := ParseConfig([]byte("metrics: {address: \"" + addr + "\"}\n"))
		if err == nil || strings.Contains(err.Error(), "allow non-loopback") || !strings.Contains(err.Error(), "metrics.disabled") {
			t.Errorf("%s: %v, want advice naming the real options (metrics.disabled), not 'allow non-loopback'", addr, err)
		}
	}
}
