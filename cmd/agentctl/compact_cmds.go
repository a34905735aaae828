package main

import (
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/state"
)

// compactCommand is agentctl compact: rewrite state.db offline so that erased values leave its free
// pages (ADR 0099).
func compactCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "compact",
		Usage:        "rewrite <home>/state.db with only its live data, so that erased values leave its free pages (agent stopped)",
		UsageText:    "agentctl compact [--keep-backup]",
		Description: "The state database (bbolt) keeps a removed value in a free page until the page is reused: after\n" +
			"agentctl data erase, the erased subject's records and its destroyed audit key may still be read from\n" +
			"the raw file. compact copies the live data into a new file (0600, fsynced) and renames it over\n" +
			"state.db. It runs only while the agent is stopped (the agent holds the file's lock: compact refuses).\n" +
			"--keep-backup keeps the old file as state.db.bak, which still holds the erased values: remove it\n" +
			"once the new file is checked. Blocks of the old file may remain on the disk itself (see docs/privacy.md).",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "keep-backup", Usage: "keep the old file as state.db.bak (it still holds the erased values)"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("compact takes no arguments")
			}
			home, err := homeDir(c)
			if err != nil {
				return err
			}
			path := filepath.Join(home, "state.db")
			before, after, err := state.Compact(path, c.Bool("keep-backup"))
			if err != nil {
				return err
			}
			writeOut(c.App.Writer, "compacted %s: %d bytes, now %d\n", path, before, after)
			if c.Bool("keep-backup") {
				writeOut(c.App.Writer, "kept %s.bak: it still holds erased values; remove it once you are satisfied\n", path)
			}
			return nil
		},
	}
}
