package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst is the one flag rule of agentctl (ADR 0079): flags may come before or after the arguments
// of every command. urfave/cli v2 stops parsing flags at the first argument, so run() rewrites argv once,
// before the app sees it: at each level (the app, a command, a subcommand) the flags of that level are
// kept in front, and the arguments of the command that runs (the leaf) are moved behind its flags.
// Whether a flag takes a value comes from the command's own flag definitions, so nothing is listed twice.
// "--" ends the flags: what follows it stays an argument, and is passed on after a "--". A command with
// SkipFlagParsing (run: the daemon parses them) gets its arguments unchanged.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) == 0 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	flags := app.Flags
	cmds := app.Commands
	for {
		// Scan this level: its flags, then the first argument.
		i := 0
		var levelFlags []string
		for i < len(rest) {
			a := rest[i]
			if a == "--" || !isFlag(a) {
				break
			}
			levelFlags = append(levelFlags, a)
			if takesValue(flags, a) && !strings.Contains(a, "=") && i+1 < len(rest) {
				levelFlags = append(levelFlags, rest[i+1])
				i++
			}
			i++
		}
		if i < len(rest) && rest[i] != "--" {
			if sub := findCommand(cmds, rest[i]); sub != nil {
				out = append(out, levelFlags...)
				out = append(out, rest[i])
				rest = rest[i+1:]
				if sub.SkipFlagParsing {
					return append(out, rest...)
				}
				flags, cmds = sub.Flags, sub.Subcommands
				continue
			}
		}
		// The leaf: this level's flags wherever they are, then its arguments.
		var positional []string
		dash := false
		for j := i; j < len(rest); j++ {
			a := rest[j]
			if a == "--" {
				positional = append(positional, rest[j+1:]...)
				dash = true
				break
			}
			if !isFlag(a) {
				positional = append(positional, a)
				continue
			}
			levelFlags = append(levelFlags, a)
			if takesValue(flags, a) && !strings.Contains(a, "=") && j+1 < len(rest) {
				levelFlags = append(levelFlags, rest[j+1])
				j++
			}
		}
		out = append(out, levelFlags...)
		if len(positional) > 0 {
			for _, p := range positional {
				if isFlag(p) {
					dash = true
				}
			}
			if dash {
				out = append(out, "--")
			}
			out = append(out, positional...)
		}
		return out
	}
}

// isFlag: "-x", "--x", "--x=v"; "-" alone (stdin) is an argument.
func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' }

// takesValue reports whether the flag token a (with one or two dashes, no "=") names a flag of flags that
// takes a value. An unknown flag is taken as a switch: urfave/cli then reports it.
func takesValue(flags []cli.Flag, a string) bool {
	name := strings.TrimLeft(a, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if df, ok := f.(cli.DocGenerationFlag); ok {
				return df.TakesValue()
			}
			return true
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
