package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// docCommandLines are the agentctl command lines of a Markdown document: inline code spans and lines of
// fenced blocks that start with "agentctl ".
var docCommandSpan = regexp.MustCompile("`(agentctl [^`]+)`")

var commandWord = regexp.MustCompile(`^[a-z]+$`)

func docCommandLines(doc string) []string {
	var out []string
	fenced := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			if l := strings.TrimSpace(line); strings.HasPrefix(l, "agentctl ") {
				out = append(out, l)
			}
			continue
		}
		for _, m := range docCommandSpan.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// checkCommandLine resolves a documented command line against the CLI definition: every word before the
// first argument must be a (sub)command, and every --flag must be one of the resolved command's or a global
// flag. It returns what does not exist, or "".
func checkCommandLine(app *cli.App, line string) string {
	words := strings.Fields(line)[1:]
	flagsOf := func(fs []cli.Flag) map[string]bool {
		m := map[string]bool{"help": true, "h": true}
		for _, f := range fs {
			for _, n := range f.Names() {
				m[n] = true
			}
		}
		return m
	}
	global := flagsOf(app.Flags)
	var cmd *cli.Command
	subs := app.Commands
	path := "agentctl"
	argsStarted := false
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == ">" || w == "|" || w == "&&" || w == ";" {
			break // a shell redirection or the next command
		}
		if strings.HasPrefix(w, "-") {
			name, _, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
			local := map[string]bool{}
			if cmd != nil {
				local = flagsOf(cmd.Flags)
			}
			if !local[name] && !global[name] {
				return path + ": no flag " + w
			}
			if cmd == nil && global[name] && !hasValue && name != "help" {
				i++ // a global flag's value (--home DIR)
			}
			continue
		}
		if argsStarted {
			continue
		}
		var next *cli.Command
		for _, c := range subs {
			if c.HasName(w) {
				next = c
			}
		}
		switch {
		case next != nil:
			cmd, subs, path = next, next.Subcommands, path+" "+w
		case cmd == nil:
			return "no command " + w
		case len(subs) > 0 && (cmd.Action == nil || commandWord.MatchString(w)):
			// A command with subcommands takes no bare lower-case word as an argument (arguments in the
			// documents are placeholders such as AGENT_ID, IDs, file names).
			return path + ": no subcommand " + w
		default:
			argsStarted = true // an argument (AGENT_ID, FILE, ...)
		}
	}
	if cmd == nil {
		return "no command"
	}
	return ""
}

// TestIncidentResponseCommands: every agentctl command line in the operator documents exists in the CLI
// (command path and flags), so the documents cannot name a command that was renamed or never written.
func TestIncidentResponseCommands(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	for _, doc := range []string{"../../docs/incident-response.md", "../../docs/backup.md", "../../SECURITY.md", "../../docs/operations.md", "../../docs/updating.md"} {
		b, err := os.ReadFile(doc)
		if os.IsNotExist(err) && doc != "../../docs/incident-response.md" {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		lines := docCommandLines(string(b))
		if doc == "../../docs/incident-response.md" && len(lines) < 30 {
			t.Fatalf("%s: only %d agentctl command lines found; the extraction is broken", doc, len(lines))
		}
		for _, l := range lines {
			if why := checkCommandLine(app, l); why != "" {
				t.Errorf("%s: `%s`: %s", doc, l, why)
			}
		}
	}
}

// TestCheckCommandLine: the checker itself refuses what does not exist (so the test above can fail).
func TestCheckCommandLine(t *testing.T) {
	app := newApp(strings.NewReader(""), io.Discard, io.Discard)
	tests := []struct{ line, want string }{
		{"agentctl peers block AGENT_ID", ""},
		{"agentctl --home NEW_HOME restore --in FILE", ""},
		{"agentctl audit query --json --since 30d > evidence.jsonl", ""},
		{"agentctl revoke GRANT_ID --out revoke.json", ""},
		{"agentctl plugins update", "no command plugins"},
		{"agentctl peers ban AGENT_ID", "agentctl peers: no subcommand ban"},
		{"agentctl audit query --grep x", "agentctl audit query: no flag --grep"},
		{"agentctl rotate --force", "agentctl rotate: no flag --force"},
		{"agentctl --homedir X id", "agentctl: no flag --homedir"},
	}
	for _, tc := range tests {
		if got := checkCommandLine(app, tc.line); got != tc.want {
			t.Errorf("checkCommandLine(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}
