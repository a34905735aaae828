package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/identity"
)

// peersFindCommand is peers find: an agent's verified record from the libp2p DHT (ADR 0070).
func peersFindCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "find",
		Usage:        "look an agent up by ID in the libp2p DHT and print the addresses its signed record gives",
		UsageText: "agentctl peers find AGENT_ID [--timeout DURATION] [--json]\n\n" +
			"The daemon asks its libp2p transport's DHT for the agent's record and prints it only if it verifies\n" +
			"(the agent's key event log, its delegation, the operational key's signature, the expiry). Needs the\n" +
			"discover_peers permission. peers connect --id AGENT_ID without an address uses the same lookup.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "how long the lookup may take (at most 1m)"},
			jsonFlag(),
		},
		Action: func(c *cli.Context) error {
			pos := c.Args().Slice()
			if len(pos) != 1 {
				return usagef("peers find takes one AGENT_ID (got %d arguments)", len(pos))
			}
			id, asJSON := pos[0], c.Bool("json")
			if _, err := identity.ParseID(id); err != nil {
				return usagef("peers find %q: %v", id, err)
			}
			to := c.Duration("timeout")
			if to <= 0 || to > api.MaxFindTimeout {
				return usagef("peers find: --timeout %s: want a duration in (0, %s]", to, api.MaxFindTimeout)
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			r, err := cl.PeersFind(c.Context, api.FindArgs{ID: id, TimeoutMS: int(to / time.Millisecond)})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c.App.Writer, r)
			}
			fmt.Fprintf(c.App.Writer, "%s (key log generation %d, record %d, expires %s)\n", r.AgentID, r.Generation, r.Seq,
				r.Expires.Local().Format(time.RFC3339))
			if r.PeerID != "" {
				fmt.Fprintf(c.App.Writer, "libp2p peer ID: %s\n", r.PeerID)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TRANSPORT\tADDRESS")
			for _, a := range r.Addrs {
				fmt.Fprintf(w, "%s\t%s\n", a.Transport, a.Address)
			}
			return w.Flush()
		},
	}
}

// connectByID looks id up (peers find) and connects to the first of its verified addresses that works,
// on transport when given.
func connectByID(ctx context.Context, cl *api.Client, id, transport string) (api.SessionStatus, error) {
	r, err := cl.PeersFind(ctx, api.FindArgs{ID: id})
	if err != nil {
		return api.SessionStatus{}, fmt.Errorf("no address given and the lookup failed: %w", err)
	}
	var errs []error
	for _, a := range r.Addrs {
		if transport != "" && a.Transport != transport {
			continue
		}
		s, err := cl.PeersConnect(ctx, api.ConnectArgs{Address: a.Address, ID: id, Transport: a.Transport})
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return api.SessionStatus{}, fmt.Errorf("the record of %s has no address on transport %q", id, transport)
	}
	return api.SessionStatus{}, errors.Join(errs...)
}
