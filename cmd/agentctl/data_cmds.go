package main

import (
	"sort"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/identity"
)

// dataCommand is agentctl data: subject access and erasure on request (docs/privacy.md, ADR 0092).
func dataCommand() *cli.Command {
	subject := func(c *cli.Context) (string, error) {
		if c.NArg() > 0 {
			return "", usagef("%s takes no arguments (got %q): use --subject AGENT_ID", c.Command.Name, c.Args().First())
		}
		if err := requireFlags(c, "subject"); err != nil {
			return "", err
		}
		if _, err := identity.ParseID(c.String("subject")); err != nil {
			return "", usagef("--subject %q: %v (give the agent ID, as agentctl peers shows it)", c.String("subject"), err)
		}
		return c.String("subject"), nil
	}
	flags := func() []cli.Flag {
		return []cli.Flag{&cli.StringFlag{Name: "subject", Usage: "the `AGENT_ID` of the agent the data is about"}, jsonFlag()}
	}
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "data",
		Usage:        "what the running agent holds about another agent, and its erasure on request (needs manage_security)",
		UsageText:    "agentctl data export|erase --subject AGENT_ID [--json]",
		Description: "The subject-access copy and the erasure of docs/privacy.md (ADR 0092). export prints, as JSON, what\n" +
			"every store of the agent holds about the subject: \"held\" (what erase removes: its cached key event\n" +
			"log and delegations, reputation record, grants about it, consensus evidence, tasks with it and their\n" +
			"inputs) and \"kept\" (what erase keeps, each with the reason: a compromise mark, an operator's block,\n" +
			"grants it issued to this agent, audit records written before per-subject sealing that name it).\n" +
			"Audit records whose personal fields are sealed under the subject's key (ADR 0099) are held, opened.\n" +
			"erase removes the held data in one go, last destroys the subject's audit key (crypto-shredding: the\n" +
			"sealed fields read \"[erased]\" from then on; the chain and checkpoints still verify), and writes a\n" +
			"signed data.erased audit record with the counts per store, naming the destroyed key's reference rather\n" +
			"than the subject; an erasure that fails part-way (erasure_incomplete) says what it removed and\n" +
			"finishes when run again. Erased values stay in free pages of state.db until agentctl compact\n" +
			"(agent stopped).",
		Subcommands: []*cli.Command{
			{
				OnUsageError: onUsageError,
				Name:         "export",
				Usage:        "print (JSON) everything the agent holds about an agent, and what an erasure would keep and why",
				UsageText:    "agentctl data export --subject AGENT_ID",
				Flags:        flags(),
				Action: func(c *cli.Context) error {
					s, err := subject(c)
					if err != nil {
						return err
					}
					cl, err := daemonClient(c)
					if err != nil {
						return err
					}
					res, err := cl.DataExport(c.Context, api.DataSubjectArgs{Subject: s})
					if err != nil {
						return err
					}
					return printJSON(c.App.Writer, res)
				},
			},
			{
				OnUsageError: onUsageError,
				Name:         "erase",
				Usage:        "remove everything the agent holds about an agent, except what is kept as security evidence (audited: data.erased)",
				UsageText:    "agentctl data erase --subject AGENT_ID [--json]",
				Flags:        flags(),
				Action: func(c *cli.Context) error {
					s, err := subject(c)
					if err != nil {
						return err
					}
					cl, err := daemonClient(c)
					if err != nil {
						return err
					}
					res, err := cl.DataErase(c.Context, api.DataSubjectArgs{Subject: s})
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					w := c.App.Writer
					writeOut(w, "erased %s (audit record %d: data.erased)\n", res.Subject, res.AuditSeq)
					stores := make([]string, 0, len(res.Removed))
					for st := range res.Removed {
						stores = append(stores, st)
					}
					sort.Strings(stores)
					if len(stores) == 0 {
						writeOut(w, "  removed: nothing (the agent held nothing erasable about it)\n")
					}
					for _, st := range stores {
						writeOut(w, "  removed %d from %s\n", res.Removed[st], st)
					}
					for _, k := range res.Kept {
						writeOut(w, "  kept %d in %s: %s\n", k.Count, k.Store, k.Reason)
					}
					if res.SubjectRef != "" {
						writeOut(w, "  shredded %d audit records: their personal fields were sealed under the subject's key %s, now destroyed\n", res.Shredded, res.SubjectRef)
					}
					writeOut(w, "  the erased values may remain in free pages of state.db until an offline compaction: stop the agent, run agentctl compact, start it\n")
					return nil
				},
			},
		},
	}
}
