package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/cli.md and docs/agentctl.1 from the command definitions")

// TestCLIDoc: docs/cli.md and the man page docs/agentctl.1 are generated from the command definitions
// (urfave/cli's ToMarkdown and ToMan); a command or flag changed without regenerating them fails here.
// Regenerate with: go test ./cmd/agentctl -run TestCLIDoc -update
func TestCLIDoc(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	app.Version = "" // the build's version is not part of the reference
	md, err := app.ToMarkdown()
	if err != nil {
		t.Fatal(err)
	}
	man, err := app.ToMan()
	if err != nil {
		t.Fatal(err)
	}
	header := "<!-- Generated from cmd/agentctl's command definitions by: go test ./cmd/agentctl -run TestCLIDoc -update. Do not edit. -->\n\n"
	for _, d := range []struct{ path, want string }{
		{filepath.Join("..", "..", "docs", "cli.md"), header + md},
		{filepath.Join("..", "..", "docs", "agentctl.1"), man},
	} {
		want := neutralHome(d.want)
		if *update {
			if err := os.WriteFile(d.path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(d.path)
		if err != nil {
			t.Fatalf("%v: generate it with: go test ./cmd/agentctl -run TestCLIDoc -update", err)
		}
		if string(got) != want {
			t.Errorf("%s is not what the command definitions give: regenerate it with: go test ./cmd/agentctl -run TestCLIDoc -update", d.path)
		}
	}
}

// neutralHome replaces the default --home (the test user's home) with ~/.custos.
func neutralHome(s string) string {
	return strings.ReplaceAll(s, defaultHome(), "~/.custos")
}
