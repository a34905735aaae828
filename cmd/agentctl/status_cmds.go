package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
)

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON (the control API's answer) instead of text"}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "status",
		Usage:        "show the running agent: ID, generation, keystore and audit-log health, configuration waiting for a restart, transports and their listen addresses, plugins, sessions, tasks",
		UsageText:    "agentctl status [--json]",
		Flags:        []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("status takes no arguments (got %q)", c.Args().First())
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			st, err := cl.Status(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			printStatus(c.App.Writer, &st)
			return nil
		},
	}
}

func printStatus(out io.Writer, st *api.Status) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "agent\t%s\n", st.AgentID)
	fmt.Fprintf(w, "generation\t%d (keystore %s; %s operational key, delegation valid until %s)\n", st.Generation, st.Keystore,
		st.DelegationMode, st.DelegationExpires.Format(time.RFC3339))
	fmt.Fprintf(w, "daemon\tpid %d, version %s, up %s\n", st.PID, st.Version, time.Since(st.Started).Truncate(time.Second))
	fmt.Fprintf(w, "config\t%s (sha256 %s)\n", st.Config, st.ConfigDigest)
	if len(st.ConfigPendingRestart) > 0 {
		fmt.Fprintf(w, "\twaiting for a restart: %s (they run as at the start until then)\n", strings.Join(st.ConfigPendingRestart, ", "))
	}
	if st.ConfigFileDigest != "" {
		fmt.Fprintf(w, "\tthe file has changed since (sha256 %s): 'kill -HUP %d' applies it\n", st.ConfigFileDigest, st.PID)
	}
	if st.ConfigFileError != "" {
		fmt.Fprintf(w, "\tthe file as it is now would not load: %s\n", st.ConfigFileError)
	}
	fmt.Fprintf(w, "keystore\t%s\n", partHealth(st.Health.Keystore, "answers", "NOT ANSWERING"))
	fmt.Fprintf(w, "control\t%s\n", st.Control)
	if st.Metrics != "" {
		fmt.Fprintf(w, "metrics\t%s\n", st.Metrics)
	}
	fmt.Fprintf(w, "handlers\t%s\n", strings.Join(st.Handlers, ", "))
	fmt.Fprintf(w, "tasks\tsubmitted %s; executing %s; %d running now\n", counts(st.Tasks.Outbound), counts(st.Tasks.Inbound), st.Tasks.Running)
	fmt.Fprintf(w, "audit log\t%s\n", st.AuditWriting.Line())
	w.Flush()
	fmt.Fprintln(out, "\ntransports")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  NAME\tSTATE\tPID\tRESTARTS\tLISTEN\tSANDBOX")
	for _, t := range st.Transports {
		state := "running"
		if !t.Running {
			state = "restarting"
		}
		listen := strings.Join(t.Listen, " ")
		if listen == "" {
			listen = "(dial only)"
		}
		fmt.Fprintf(w, "  %s\t%s\t%d\t%d\t%s\t%s\n", t.Name, state, t.PID, t.Restarts, listen, t.Sandbox)
	}
	w.Flush()
	fmt.Fprintf(out, "\nsessions (%d)\n", len(st.Sessions))
	if len(st.Sessions) > 0 {
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  PEER\tTRANSPORT\tREMOTE\tROLE\tSINCE\tEXPIRES")
		for _, s := range st.Sessions {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Peer, s.Transport, s.Remote, s.Role, s.Established.Local().Format(time.TimeOnly), s.Expires.Local().Format(time.TimeOnly))
		}
		w.Flush()
	}
}

// partHealth is a part's health in the status text: "DETAIL (GOOD)" or "BAD: ERROR".
func partHealth(h api.PartHealth, good, bad string) string {
	switch {
	case h.OK && h.Detail != "" && good == "ok":
		return "ok (" + h.Detail + ")"
	case h.OK && h.Detail != "":
		return h.Detail + " (" + good + ")"
	case h.OK:
		return good
	}
	return bad + ": " + h.Error
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func peersCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "peers",
		Usage:        "list known peers (sessions, cached key event logs, trust and its factors, roles), connect to one, block or unblock one",
		UsageText: "agentctl peers [--json]\n   agentctl peers connect ADDRESS --id AGENT_ID [--transport NAME] [--json]\n" +
			"   agentctl peers block AGENT_ID\n   agentctl peers unblock AGENT_ID",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("unknown peers subcommand %q (see agentctl peers --help)", c.Args().First())
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			ps, err := cl.PeersList(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, ps)
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PEER\tSESSION\tGENERATION\tTRUST\tSCORE\tFACTORS\tROLES\tDIAL")
			for _, p := range ps {
				sess := "-"
				if p.Session != nil {
					sess = p.Session.Transport + " " + p.Session.Remote
				}
				gen := "-"
				if p.Generation != nil {
					gen = fmt.Sprint(*p.Generation)
				}
				trust := p.Trust
				if p.Compromised {
					trust = "COMPROMISED"
				}
				dial := "-"
				if p.Target != nil {
					var as []string
					for _, a := range p.Target.Addresses {
						as = append(as, a.Transport+" "+a.Address)
					}
					dial = p.Target.Source + ": " + strings.Join(as, ", ")
					if p.Target.LastError != "" && p.Session == nil {
						dial += " (last error: " + p.Target.LastError + ")"
					}
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n", p.ID, sess, gen, trust, p.Score, factors(p), roles(p), dial)
			}
			return w.Flush()
		},
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "connect",
			Usage:        "connect to a peer at ADDRESS, pinned to its agent ID, and keep the session up",
			UsageText: "agentctl peers connect [ADDRESS] --id AGENT_ID [--transport NAME] [--json]\n\n" +
				"ADDRESS is host:port (tcp), wss://host:port/custos/v1 (ws) or a multiaddr (libp2p); the transport is\n" +
				"inferred from it unless --transport is given. Without ADDRESS the agent is looked up by ID in the\n" +
				"libp2p DHT (as peers find) and its verified addresses are tried in turn. The peer must prove it is\n" +
				"AGENT_ID (transport binding and agent handshake); otherwise the connection is refused and the reason printed.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "id", Usage: "the peer's agent `ID` (required)"},
				&cli.StringFlag{Name: "transport", Usage: "transport `NAME` (tcp, ws, libp2p)"},
				jsonFlag(),
			},
			Action: runConnect,
		}, peersBlockCommand("block"), peersBlockCommand("unblock"), peersFindCommand()},
	}
}

func runConnect(c *cli.Context) error {
	pos := c.Args().Slice()
	id, transport, asJSON := c.String("id"), c.String("transport"), c.Bool("json")
	if len(pos) > 1 {
		return usagef("peers connect takes at most one ADDRESS (got %d arguments)", len(pos))
	}
	if id == "" {
		return usagef("peers connect: --id is required (the agent ID the peer must prove)")
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	var s api.SessionStatus
	addr := "the address found in its record"
	if len(pos) == 0 {
		s, err = connectByID(c.Context, cl, id, transport)
	} else {
		addr = pos[0]
		s, err = cl.PeersConnect(c.Context, api.ConnectArgs{Address: pos[0], ID: id, Transport: transport})
	}
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(c.App.Writer, s)
	}
	if s.Existing {
		fmt.Fprintf(c.App.Writer, "already connected to %s over %s (%s, %s): %s was not dialled (not checked); it is stored as the address to re-dial %s at when this session ends\n",
			s.Peer, s.Transport, s.Remote, s.Role, addr, s.Peer)
		return nil
	}
	fmt.Fprintf(c.App.Writer, "connected to %s over %s (%s, %s); session expires %s\n", s.Peer, s.Transport, s.Remote, s.Role, s.Expires.Local().Format(time.RFC3339))
	return nil
}

// peersBlockCommand is peers block (refused at every handshake until unblocked; its session is closed and
// no longer re-dialled) or peers unblock (a fresh start at trust level New, its evidence forgotten).
func peersBlockCommand(verb string) *cli.Command {
	op, usage := (*api.Client).PeersBlock, "block a peer: close its session, stop dialling it, refuse its handshakes until unblocked"
	if verb == "unblock" {
		op, usage = (*api.Client).PeersUnblock, "unblock a peer: trust level New again, its past evidence forgotten (connect it again with peers connect)"
	}
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         verb,
		Usage:        usage,
		UsageText:    "agentctl peers " + verb + " AGENT_ID [--network [--until RFC3339] [--reason R]] [--json]",
		Flags: []cli.Flag{jsonFlag(),
			&cli.BoolFlag{Name: "network", Usage: "sign an administrator's " + verb + " notice and publish it on gossip: every agent that lists this agent as an administrator applies it (ADR 0101; needs manage_security)"},
			&cli.TimestampFlag{Name: "until", Layout: time.RFC3339, Usage: "with --network: when the block ends (RFC 3339, at most 90 days ahead; required to block)"},
			&cli.StringFlag{Name: "reason", Usage: "with --network: why (printable ASCII, at most 200 bytes)"}},
		Action: func(c *cli.Context) error {
			id, asJSON, err := oneArg(c, "AGENT_ID")
			if err != nil {
				return err
			}
			if _, err := identity.ParseID(id); err != nil {
				return usagef("peers %s %q: %v", verb, id, err)
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			if c.Bool("network") {
				a := api.BlockNoticeArgs{ID: id, Unblock: verb == "unblock", Reason: c.String("reason")}
				if u := c.Timestamp("until"); u != nil {
					a.Until = *u
				} else if verb == "block" {
					return usagef("peers block --network needs --until (RFC 3339)")
				}
				r, err := cl.PeersBlockNetwork(c.Context, a)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(c.App.Writer, r)
				}
				fmt.Fprintf(c.App.Writer, "%s notice for %s until %s signed (applied here: %v, published: %v)\n", r.Action, r.Agent, r.Until.Format(time.RFC3339), r.AppliedHere, r.Published)
				if r.Warning != "" {
					fmt.Fprintln(c.App.ErrWriter, "warning:", r.Warning)
				}
				return nil
			}
			r, err := op(cl, c.Context, api.PeerArgs{ID: id})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c.App.Writer, r)
			}
			fmt.Fprintf(c.App.Writer, "%s is now %s (score %.3f)\n", r.Peer, r.Level, r.Score)
			return nil
		},
	}
}

// factorNames shortens reputation factor names for the peers table.
var factorNames = map[string]string{
	reputation.FactorCompletion: "completion", reputation.FactorResponseTime: "response", reputation.FactorContribution: "contribution",
	reputation.FactorErrorRate: "errors", reputation.FactorFeedback: "feedback",
}

// factors summarises the factors behind a peer's score: each factor with evidence, as name=value(evidence).
func factors(p api.PeerStatus) string {
	if p.Reputation == nil {
		return "-"
	}
	var parts []string
	for _, f := range p.Reputation.Factors {
		if f.Evidence <= 0 {
			continue
		}
		name := factorNames[f.Name]
		if name == "" {
			name = f.Name
		}
		parts = append(parts, fmt.Sprintf("%s=%.2f(%.0f)", name, f.Value, f.Evidence))
	}
	if p.Evidence > 0 {
		parts = append(parts, fmt.Sprintf("lost-votes=%d", p.Evidence))
	}
	if len(parts) == 0 {
		return "no evidence yet"
	}
	return strings.Join(parts, " ")
}

func roles(p api.PeerStatus) string {
	if len(p.Roles) == 0 {
		return "-"
	}
	return strings.Join(p.Roles, ",")
}
