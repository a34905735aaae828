package main

import (
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestFlagsFirst: flags after the arguments are moved before them, at the level they belong to; values
// of value flags travel with them; "--" keeps what follows as arguments; run's arguments are untouched.
func TestFlagsFirst(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	for _, tc := range []struct{ in, want string }{
		{"agentctl revoke G1 --out f --json", "agentctl revoke --out f --json G1"},
		{"agentctl revoke G1 --json", "agentctl revoke --json G1"},
		{"agentctl --home h revoke G1 --out=f", "agentctl --home h revoke --out=f G1"},
		{"agentctl revoke install F --json", "agentctl revoke install --json F"},
		{"agentctl peers connect 127.0.0.1:1 --id X --transport tcp", "agentctl peers connect --id X --transport tcp 127.0.0.1:1"},
		{"agentctl task result T --wait --timeout 5s --json", "agentctl task result --wait --timeout 5s --json T"},
		{"agentctl grant install - --json", "agentctl grant install --json -"},
		{"agentctl task verify -- -odd-name", "agentctl task verify -- -odd-name"},
		{"agentctl task verify f -- -odd-name --json", "agentctl task verify -- f -odd-name --json"},
		{"agentctl run --config a.yaml x", "agentctl run --config a.yaml x"},
		{"agentctl --home h run x --config a.yaml", "agentctl --home h run x --config a.yaml"},
		{"agentctl status --json", "agentctl status --json"},
		{"agentctl peers", "agentctl peers"},
	} {
		got := flagsFirst(app, strings.Fields(tc.in))
		if want := strings.Fields(tc.want); !reflect.DeepEqual(got, want) {
			t.Errorf("%s\n got %q\nwant %q", tc.in, got, want)
		}
	}
}

// TestEveryCommandTakesFlagsAfterArguments: for every command that parses its own flags, a value flag
// given after an argument reaches the command (the one rule of ADR 0079, checked on the real command
// table, so a command added later is covered without listing it).
func TestEveryCommandTakesFlagsAfterArguments(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	var walk func(path []string, cmds []*cli.Command)
	n := 0
	walk = func(path []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(append([]string(nil), path...), c.Name)
			walk(p, c.Subcommands)
			if c.SkipFlagParsing {
				continue
			}
			for _, f := range c.Flags {
				df, ok := f.(cli.DocGenerationFlag)
				if !ok {
					continue
				}
				name := f.Names()[0]
				in := append(append([]string{"agentctl"}, p...), "ARG", "--"+name)
				want := append(append([]string{"agentctl"}, p...), "--"+name)
				if df.TakesValue() {
					in = append(in, "V")
					want = append(want, "V")
				}
				want = append(want, "ARG")
				if got := flagsFirst(app, in); !reflect.DeepEqual(got, want) {
					t.Errorf("%q: got %q, want %q", in, got, want)
				}
				n++
			}
		}
	}
	walk(nil, app.Commands)
	if n < 20 {
		t.Fatalf("checked only %d command flags: the walk is broken", n)
	}
}
