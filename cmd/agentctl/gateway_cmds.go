package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
)

// gatewayCommand is agentctl gateway key create|list|revoke: the API keys of the running agent's HTTP
// gateway (agent/gateway, docs/openapi.yaml).
func gatewayCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "gateway",
		Usage:        "the HTTP gateway's API keys (programs that are not agents call the agent with one)",
		UsageText: "agentctl gateway key create --name NAME --role ROLE [--role ROLE...] [--expires DURATION] [--rate R] [--json]\n" +
			"   agentctl gateway key list [--json]\n   agentctl gateway key revoke --name NAME",
		Subcommands: []*cli.Command{{
			Name:  "key",
			Usage: "create, list or revoke API keys",
			Subcommands: []*cli.Command{
				{
					Name: "create", OnUsageError: onUsageError,
					Usage: "make a key and print its token ONCE (the agent keeps only a hash). A key needs a role with api_access (gateway_service) and, for each endpoint, its permission: submit_tasks and view_results (task_submitter), view_status (agent_operator)",
					Flags: []cli.Flag{
						&cli.StringFlag{Name: "name", Required: true, Usage: "the key's name (audit records and metrics name it)"},
						&cli.StringSliceFlag{Name: "role", Required: true, Usage: "a role of the key (repeat, or comma-separated)"},
						&cli.DurationFlag{Name: "expires", Usage: "lifetime, e.g. 720h (default: none)"},
						&cli.Float64Flag{Name: "rate", Usage: "requests per second (default: gateway.key_rate)"},
						jsonFlag(),
					},
					Action: func(c *cli.Context) error {
						var roles []string
						for _, r := range c.StringSlice("role") {
							roles = append(roles, strings.Split(r, ",")...)
						}
						if c.Duration("expires") < 0 {
							return usagef("--expires must not be negative")
						}
						cl, err := daemonClient(c)
						if err != nil {
							return err
						}
						k, err := cl.GatewayKeyCreate(c.Context, api.GatewayKeyCreateArgs{Name: c.String("name"), Roles: roles,
							ExpiresSeconds: int64(c.Duration("expires") / time.Second), Rate: c.Float64("rate")})
						if err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(c.App.Writer, k)
						}
						fmt.Fprintf(c.App.Writer, "%s\n", k.Token)
						fmt.Fprintf(c.App.ErrWriter, "key %s (roles %s): the token above is shown only now; send it as Authorization: Bearer <token>\n", k.Key.Name, strings.Join(k.Key.Roles, ","))
						return nil
					},
				},
				{
					Name: "list", Usage: "list the keys (never their tokens)", Flags: []cli.Flag{jsonFlag()}, OnUsageError: onUsageError,
					Action: func(c *cli.Context) error {
						cl, err := daemonClient(c)
						if err != nil {
							return err
						}
						ks, err := cl.GatewayKeyList(c.Context)
						if err != nil {
							return err
						}
						if c.Bool("json") {
							return printJSON(c.App.Writer, ks)
						}
						w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
						fmt.Fprintln(w, "NAME\tID\tROLES\tSTATE\tCREATED\tEXPIRES\tRATE")
						for _, k := range ks {
							exp := "-"
							if k.Expires != nil {
								exp = k.Expires.Format(time.RFC3339)
							}
							fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", k.Name, k.ID, strings.Join(k.Roles, ","), k.State, k.Created.Format(time.RFC3339), exp, k.Rate)
						}
						return w.Flush()
					},
				},
				{
					Name: "revoke", Usage: "refuse a key's token from now on", OnUsageError: onUsageError,
					Flags: []cli.Flag{&cli.StringFlag{Name: "name", Required: true}},
					Action: func(c *cli.Context) error {
						cl, err := daemonClient(c)
						if err != nil {
							return err
						}
						k, err := cl.GatewayKeyRevoke(c.Context, api.GatewayKeyArgs{Name: c.String("name")})
						if err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "key %s revoked\n", k.Name)
						return nil
					},
				},
			},
		}},
	}
}
