package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
)

// maxGrantFile bounds a grant, revocation or stake table file.
const maxGrantFile = 1 << 20

func grantCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "grant",
		Usage:        "sign a role grant for an agent (as a system administrator), or install, list and remove the grants this agent holds",
		UsageText: "agentctl grant --to AGENT_ID --role ROLE [--expires DURATION] [--out FILE] [--json]\n" +
			"   agentctl grant install FILE\n   agentctl grant list [--json]\n   agentctl grant remove GRANT_ID\n" +
			"   agentctl grant stake --stake AGENT_ID=AMOUNT ... | agentctl grant stake install FILE",
		Description: "A grant gives ROLE (system_admin, agent_operator, task_submitter, peer_node, gateway_service) to\n" +
			"AGENT_ID until it expires. The running agent signs it with its identity key; it counts only on agents\n" +
			"whose configuration lists this agent under authorization.admins. The encoded grant (one line; after\n" +
			"it, once this agent has rotated, its key event log, one event per line) goes to stdout or --out FILE\n" +
			"(0600); give it to the grantee, who installs it with 'agentctl grant install FILE': its agent then\n" +
			"presents it (with the log) in every handshake it starts, and at once to its connected peers. A\n" +
			"rotation of this agent's key revokes nothing; a recovery voids what the lost key signed.\n" +
			"See docs/authorization.md.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Usage: "the grantee's agent `ID`"},
			&cli.StringFlag{Name: "role", Usage: "the `ROLE` to give"},
			&cli.DurationFlag{Name: "expires", Usage: "lifetime `DURATION` of the grant", Value: api.DefaultGrantTTL},
			&cli.StringFlag{Name: "out", Usage: "write the grant to `FILE` (mode 0600) instead of stdout", TakesFile: true},
			jsonFlag(),
		},
		Action: runGrantIssue,
		Subcommands: []*cli.Command{
			{
				OnUsageError: onUsageError,
				Name:         "install",
				Usage:        "install a grant this agent holds (FILE, - for stdin) and present it to the connected peers",
				UsageText:    "agentctl grant install FILE [--json]",
				Flags:        []cli.Flag{jsonFlag()},
				Action:       runGrantInstall,
			},
			{
				OnUsageError: onUsageError,
				Name:         "list",
				Usage:        "list the grants this agent holds and those its peers presented to it",
				UsageText:    "agentctl grant list [--json]",
				Flags:        []cli.Flag{jsonFlag()},
				Action:       runGrantList,
			},
			grantStakeCommand(),
			{
				OnUsageError: onUsageError,
				Name:         "remove",
				Usage:        "stop holding (and presenting) a grant",
				UsageText:    "agentctl grant remove GRANT_ID",
				Action:       runGrantRemove,
			},
		},
	}
}

func revokeCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "revoke",
		Usage:        "sign the revocation of a grant (as a system administrator), or install one on this agent",
		UsageText:    "agentctl revoke (GRANT_ID | --grant FILE) [--out FILE] [--json]\n   agentctl revoke install FILE",
		Description: "The running agent signs a revocation of the grant with its identity key and, when it is one of\n" +
			"its own administrators, applies it at once. A revocation is permanent. Agents that stored the grant\n" +
			"apply it with 'agentctl revoke install FILE' (only revocations signed by one of their configured\n" +
			"administrators are accepted); from then on the grant gives nothing there and a peer presenting it\n" +
			"is refused at the handshake.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "grant", Usage: "read the grant to revoke from `FILE`", TakesFile: true},
			&cli.StringFlag{Name: "out", Usage: "write the revocation to `FILE` (mode 0600) instead of stdout", TakesFile: true},
			jsonFlag(),
		},
		Action: runRevoke,
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "install",
			Usage:        "apply an administrator-signed revocation (FILE, - for stdin) on this agent",
			UsageText:    "agentctl revoke install FILE [--json]",
			Flags:        []cli.Flag{jsonFlag()},
			Action:       runRevocationInstall,
		}},
	}
}

// readSmallFile reads FILE (- for stdin) of at most maxGrantFile bytes.
func readSmallFile(c *cli.Context, what, name string) ([]byte, error) {
	var r io.Reader = c.App.Reader
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxGrantFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, name, err)
	}
	if len(b) > maxGrantFile {
		return nil, fmt.Errorf("%s %s is larger than %d bytes: it is not a grant, revocation or stake table", what, name, maxGrantFile)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}

// splitRecord splits a grant or revocation file: the record on its first line, then (optionally) the
// issuer's key event log, one event per line (what agentctl grant and revoke write when the record names an
// issuer generation above 0).
func splitRecord(b []byte) (record, issuerLog string) {
	first, rest, _ := strings.Cut(string(b), "\n")
	rest = strings.TrimSpace(rest)
	if rest != "" {
		rest += "\n"
	}
	return strings.TrimSpace(first), rest
}

// writeRecordOut writes one encoded record, then the issuer's key event log when there is one, to --out
// (0600, refusing to replace an existing file) or stdout.
func writeRecordOut(c *cli.Context, encoded, issuerLog string) error {
	encoded += "\n" + strings.TrimSpace(issuerLog)
	encoded = strings.TrimSpace(encoded)
	out := c.String("out")
	if out == "" {
		fmt.Fprintln(c.App.Writer, encoded)
		return nil
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--out: %w (choose a new file name)", err)
	}
	if _, err := f.WriteString(encoded + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("--out: %w", err)
	}
	return f.Close()
}

func runGrantIssue(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("unknown grant subcommand %q (see agentctl grant --help)", c.Args().First())
	}
	if err := requireFlags(c, "to", "role"); err != nil {
		return err
	}
	if _, err := identity.ParseID(c.String("to")); err != nil {
		return usagef("--to %q: %v", c.String("to"), err)
	}
	if _, err := rbac.ParseRole(c.String("role")); err != nil {
		return usagef("--role: %v", err)
	}
	ttl := c.Duration("expires")
	if ttl < time.Second || ttl > api.MaxGrantTTL {
		return usagef("--expires %v: give a duration from 1s to %v", ttl, api.MaxGrantTTL)
	}
	args := api.GrantIssueArgs{Subject: c.String("to"), Role: c.String("role"), TTLSeconds: int64(ttl / time.Second)}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	res, err := cl.GrantIssue(c.Context, args)
	if err != nil {
		return err
	}
	if res.Warning != "" {
		fmt.Fprintln(c.App.ErrWriter, "agentctl: warning:", res.Warning)
	}
	if c.Bool("json") {
		if c.String("out") != "" {
			if err := writeRecordOut(c, res.Grant, res.IssuerLog); err != nil {
				return err
			}
		}
		return printJSON(c.App.Writer, res)
	}
	if err := writeRecordOut(c, res.Grant, res.IssuerLog); err != nil {
		return err
	}
	fmt.Fprintf(c.App.ErrWriter, "granted %s to %s until %s (grant %s); install it on that agent with: agentctl grant install FILE\n",
		res.Role, res.Subject, res.Expires.Format(time.RFC3339), res.ID)
	return nil
}

func oneArg(c *cli.Context, what string) (string, bool, error) {
	pos := c.Args().Slice()
	if len(pos) != 1 {
		return "", false, usagef("%s takes one %s (got %d arguments)", c.Command.FullName(), what, len(pos))
	}
	return pos[0], c.Bool("json"), nil
}

func runGrantInstall(c *cli.Context) error {
	file, asJSON, err := oneArg(c, "FILE")
	if err != nil {
		return err
	}
	b, err := readSmallFile(c, "grant", file)
	if err != nil {
		return err
	}
	rec, issuerLog := splitRecord(b)
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	res, err := cl.GrantInstall(c.Context, api.GrantInstallArgs{Grant: rec, IssuerLog: issuerLog})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.App.Writer, res)
	}
	g := res.Grant
	fmt.Fprintf(c.App.Writer, "installed grant %s: %s from %s until %s\n", g.ID, g.Role, g.Issuer, g.Expires.Format(time.RFC3339))
	for _, p := range res.Presented {
		if p.Presented {
			fmt.Fprintf(c.App.Writer, "presented to %s (%s %s)\n", p.Peer, p.Transport, p.Address)
		} else {
			fmt.Fprintf(c.App.Writer, "not presented to %s: %s\n", p.Peer, p.Error)
		}
	}
	return nil
}

func runGrantList(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("grant list takes no arguments")
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	res, err := cl.GrantsList(c.Context)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, res)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "HELD BY THIS AGENT\tROLE\tISSUER\tEXPIRES\tSTATE")
	for _, g := range res.Held {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", g.ID, g.Role, g.Issuer, g.Expires.Local().Format(time.DateTime), g.State)
	}
	fmt.Fprintln(w, "\nPRESENTED BY PEERS\tROLE\tHOLDER\tEXPIRES\tSTATE")
	for _, g := range res.Peers {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", g.ID, g.Role, g.Subject, g.Expires.Local().Format(time.DateTime), g.State)
	}
	return w.Flush()
}

func runGrantRemove(c *cli.Context) error {
	id, _, err := oneArg(c, "GRANT_ID")
	if err != nil {
		return err
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	if _, err := cl.GrantRemove(c.Context, api.GrantRemoveArgs{GrantID: id}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "grant %s removed; it is no longer presented\n", id)
	return nil
}

func runRevoke(c *cli.Context) error {
	id := ""
	switch {
	case c.NArg() > 1:
		return usagef("revoke takes one GRANT_ID")
	case c.NArg() == 1 && c.IsSet("grant"):
		return usagef("give GRANT_ID or --grant FILE, not both")
	case c.NArg() == 1:
		id = c.Args().First()
	case c.IsSet("grant"):
		b, err := readSmallFile(c, "--grant", c.String("grant"))
		if err != nil {
			return err
		}
		rec, _ := splitRecord(b)
		g, err := rbac.DecodeGrant([]byte(rec))
		if err != nil {
			return fmt.Errorf("--grant %s: %w", c.String("grant"), err)
		}
		id = g.ID
	default:
		return usagef("revoke: give the GRANT_ID or --grant FILE (see agentctl revoke --help)")
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	res, err := cl.Revoke(c.Context, api.RevokeArgs{GrantID: id})
	if err != nil {
		return err
	}
	if res.Warning != "" {
		fmt.Fprintln(c.App.ErrWriter, "agentctl: warning:", res.Warning)
	}
	if c.Bool("json") {
		if c.String("out") != "" {
			if err := writeRecordOut(c, res.Revocation, res.IssuerLog); err != nil {
				return err
			}
		}
		return printJSON(c.App.Writer, res)
	}
	if err := writeRecordOut(c, res.Revocation, res.IssuerLog); err != nil {
		return err
	}
	where := "not applied here"
	if res.AppliedHere {
		where = "applied here"
	}
	fmt.Fprintf(c.App.ErrWriter, "revoked grant %s (%s); apply it on the other agents with: agentctl revoke install FILE\n", res.GrantID, where)
	return nil
}

func runRevocationInstall(c *cli.Context) error {
	file, asJSON, err := oneArg(c, "FILE")
	if err != nil {
		return err
	}
	b, err := readSmallFile(c, "revocation", file)
	if err != nil {
		return err
	}
	rec, issuerLog := splitRecord(b)
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	res, err := cl.RevocationInstall(c.Context, api.RevocationInstallArgs{Revocation: rec, IssuerLog: issuerLog})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.App.Writer, res)
	}
	fmt.Fprintf(c.App.Writer, "grant %s is revoked on this agent (revocation by %s)\n", res.GrantID, res.Issuer)
	if res.RemovedHeld {
		fmt.Fprintln(c.App.Writer, "this agent held it: it is no longer presented")
	}
	return nil
}
