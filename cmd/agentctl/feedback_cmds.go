package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/tasks"
)

// feedbackCommand is agentctl feedback: rate the executor of a task this agent submitted.
func feedbackCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "feedback",
		Usage:        "rate the peer that ran a task this agent submitted (signed feedback, counted here and sent to the connected peers)",
		UsageText:    "agentctl feedback --task TASK_ID --score S [--comment TEXT] [--json]",
		Description: "The running agent signs feedback (-100 worst .. 100 best) about the executor of TASK_ID with its\n" +
			"identity key, carrying the executor's signed result as proof that the task was this agent's. It counts\n" +
			"here with full weight in the executor's peer_feedback factor (once per task), and goes to every other\n" +
			"connected peer, which counts it weighted by this agent's reputation there (a peer needs this agent to\n" +
			"hold share_results, e.g. the peer_node role). The comment stays in this agent's audit record\n" +
			"(feedback.given); it is not sent. A task that timed out or failed needs no feedback: it already\n" +
			"counts against its executor. Replicated tasks (task submit --redundancy) give feedback on their own:\n" +
			"+100 to the peers that agreed, -100 to those that dissented.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "task", Usage: "the `TASK_ID` of a finished task this agent submitted"},
			&cli.IntFlag{Name: "score", Usage: "the rating `S`, -100 (worst) to 100 (best)"},
			&cli.StringFlag{Name: "comment", Usage: fmt.Sprintf("a `TEXT` for this agent's audit log (at most %d bytes; not sent)", api.MaxFeedbackComment)},
			jsonFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("feedback takes no arguments (got %q): use --task and --score", c.Args().First())
			}
			if err := requireFlags(c, "task"); err != nil {
				return err
			}
			if !c.IsSet("score") {
				return usagef("feedback: --score is required (-100 worst .. 100 best; see agentctl feedback --help)")
			}
			if err := tasks.CheckTaskID(c.String("task")); err != nil {
				return usagef("--task: %v", err)
			}
			if s := c.Int("score"); s < -100 || s > 100 {
				return usagef("--score %d is outside -100..100", s)
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			res, err := cl.TaskFeedback(c.Context, api.FeedbackArgs{TaskID: c.String("task"), Score: c.Int("score"), Comment: c.String("comment")})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, res)
			}
			w := c.App.Writer
			writeOut(w, "feedback %+d about %s for task %s\n", res.Rating, res.Subject, res.TaskID)
			writeOut(w, "  reputation here: %s, score %.3f\n", res.Reputation.Level, res.Reputation.Score)
			if len(res.SentTo) == 0 {
				writeOut(w, "  sent to: nobody (no other peer connected)\n")
			} else {
				writeOut(w, "  sent to: %s\n", strings.Join(res.SentTo, ", "))
			}
			for p, why := range res.NotSent {
				writeOut(w, "  not sent to %s: %s\n", p, why)
			}
			return nil
		},
	}
}

// taskCancelCommand is agentctl task cancel.
func taskCancelCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "cancel",
		Usage:        "give up a task this agent submitted: it fails with code cancelled and is no longer sent",
		UsageText:    "agentctl task cancel TASK_ID [--json]",
		Description: "The executor is not told (the protocol has no cancel message) and not charged; a result it sends\n" +
			"later is acknowledged and dropped. A task without a result for tasks.timeout (default 10m) fails on\n" +
			"its own with code timeout, and that counts as a failure of its executor.",
		Flags: []cli.Flag{jsonFlag()},
		Action: func(c *cli.Context) error {
			pos := c.Args().Slice()
			if len(pos) != 1 {
				return usagef("task cancel takes one TASK_ID (got %d arguments)", len(pos))
			}
			if err := tasks.CheckTaskID(pos[0]); err != nil {
				return usagef("%v", err)
			}
			cl, err := daemonClient(c)
			if err != nil {
				return err
			}
			v, err := cl.TaskCancel(c.Context, api.CancelArgs{TaskID: pos[0]})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, v)
			}
			writeOut(c.App.Writer, "task %s cancelled (it was sent to %s)\n", v.TaskID, v.To)
			return nil
		},
	}
}
