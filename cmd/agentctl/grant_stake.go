package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/identity"
)

// grantStakeCommand is agentctl grant stake: the administrator-signed stake table that stake-weighted and
// hybrid votes of replicated tasks (task submit --redundancy K --vote stake|hybrid) use.
func grantStakeCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "stake",
		Usage:        "sign a stake table (as a system administrator) for stake-weighted votes, or install one",
		UsageText:    "agentctl grant stake --stake AGENT_ID=AMOUNT [--stake ...] [--expires DURATION] [--out FILE] [--json]\n   agentctl grant stake install FILE [--json]",
		Description: "A stake table gives each listed agent a positive amount (in a unit the administrators agree on); a\n" +
			"stake-weighted vote weighs each selected peer by its amount, a hybrid vote by amount x reputation\n" +
			"weight. The running agent signs it with its identity key and, when it is one of its own administrators,\n" +
			"puts it in force at once. Other agents install it with 'agentctl grant stake install FILE': only a table\n" +
			"signed by one of their configured administrators and not expired is accepted; it replaces the previous one.",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "stake", Usage: "`AGENT_ID=AMOUNT` (repeat for each agent)"},
			&cli.DurationFlag{Name: "expires", Usage: "lifetime `DURATION` of the table", Value: api.DefaultGrantTTL},
			&cli.StringFlag{Name: "out", Usage: "write the table to `FILE` (mode 0600) instead of stdout", TakesFile: true},
			jsonFlag(),
		},
		Action: runStakeSign,
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "install",
			Usage:        "put an administrator-signed stake table (FILE, - for stdin) in force on this agent",
			UsageText:    "agentctl grant stake install FILE [--force] [--json]",
			Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "force",
				Usage: "install a table older than the one in force (a rollback; audited as such)"}},
			Action: runStakeInstall,
		}},
	}
}

func runStakeSign(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("unknown grant stake subcommand %q (see agentctl grant stake --help)", c.Args().First())
	}
	entries := c.StringSlice("stake")
	if len(entries) == 0 {
		return usagef("grant stake: give at least one --stake AGENT_ID=AMOUNT")
	}
	var stakes []consensus.Stake
	for _, e := range entries {
		id, amount, ok := strings.Cut(e, "=")
		if !ok {
			return usagef("--stake %q: write AGENT_ID=AMOUNT", e)
		}
		if _, err := identity.ParseID(id); err != nil {
			return usagef("--stake %q: %v", e, err)
		}
		n, err := strconv.ParseUint(amount, 10, 64)
		if err != nil || n == 0 {
			return usagef("--stake %q: the amount must be a positive integer", e)
		}
		stakes = append(stakes, consensus.Stake{Agent: id, Amount: n})
	}
	ttl := c.Duration("expires")
	if ttl < time.Second || ttl > api.MaxGrantTTL {
		return usagef("--expires %v: give a duration from 1s to %v", ttl, api.MaxGrantTTL)
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.StakeSign(c.Context, api.StakeSignArgs{Stakes: stakes, TTLSeconds: int64(ttl / time.Second)})
	if err != nil {
		return err
	}
	if v.Warning != "" {
		fmt.Fprintln(c.App.ErrWriter, "agentctl: warning:", v.Warning)
	}
	if c.Bool("json") {
		if c.String("out") != "" {
			if err := writeRecordOut(c, v.Table, v.IssuerLog); err != nil {
				return err
			}
		}
		return printJSON(c.App.Writer, v)
	}
	if err := writeRecordOut(c, v.Table, v.IssuerLog); err != nil {
		return err
	}
	where := "not in force here"
	if v.InForce {
		where = "in force here"
	}
	fmt.Fprintf(c.App.ErrWriter, "stake table of %d agents until %s (%s); install it on the other agents with: agentctl grant stake install FILE\n",
		len(v.Stakes), v.Expires.Format(time.RFC3339), where)
	return nil
}

func runStakeInstall(c *cli.Context) error {
	file, asJSON, err := oneArg(c, "FILE")
	if err != nil {
		return err
	}
	b, err := readSmallFile(c, "stake table", file)
	if err != nil {
		return err
	}
	rec, issuerLog := splitRecord(b)
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.StakeSet(c.Context, api.StakeSetArgs{Table: rec, IssuerLog: issuerLog, Force: c.Bool("force")})
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.App.Writer, v)
	}
	fmt.Fprintf(c.App.Writer, "stake table of %d agents from %s is in force until %s\n", len(v.Stakes), v.Issuer, v.Expires.Format(time.RFC3339))
	return nil
}
