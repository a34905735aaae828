package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/atomicfile"
)

func taskCommand() *cli.Command {
	waitFlags := []cli.Flag{
		&cli.BoolFlag{Name: "wait", Usage: "wait for the result"},
		&cli.DurationFlag{Name: "timeout", Usage: "how long --wait waits", Value: 2 * time.Minute},
		&cli.StringFlag{Name: "out", Usage: "write the result's output to `FILE` (mode 0600; - for stdout, raw bytes) instead of showing it", TakesFile: true},
		jsonFlag(),
	}
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "task",
		Usage:        "submit a task to a peer through the running agent, follow it, and check signed results",
		Subcommands: []*cli.Command{
			{
				OnUsageError: onUsageError,
				Name:         "submit",
				Usage:        "submit a task to the peer AGENT_ID; with --wait, print its verified, signed result",
				UsageText: "agentctl task submit --to AGENT_ID --handler NAME (--input FILE | --data STRING) [--wait [--timeout D]] [--json]\n" +
					"   agentctl task submit --redundancy K [--vote reputation|stake|hybrid] --handler NAME (--input FILE | --data STRING) [--timeout D] [--json]",
				Description: "The local agent records the task (fsync) and delivers it over its session with the peer, again\n" +
					"after every reconnect until the peer acknowledges it; the peer records it before acknowledging, so a\n" +
					"restart of either side loses no task. The result is signed by the executing agent; the output shows\n" +
					"its signature and the result's SHA-256, and --json includes the evidence (envelope, delegation, key\n" +
					"event log) with which anyone can check it: agentctl task verify FILE.\n\n" +
					"With --redundancy K (instead of --to), the task runs on K connected peers chosen by reputation\n" +
					"(Restricted and Blocked peers never; at most one New peer unless too few established ones), and a\n" +
					"result is accepted when peers holding at least 2/3 of the selected peers' vote weight (--vote:\n" +
					"reputation, stake or hybrid) agree on its digest. The accepted digest, every vote, and the dissenting\n" +
					"signed results (kept as evidence in the agent's state) are printed; no quorum exits 1.",
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "to", Usage: "the executing peer's agent `ID`"},
					&cli.StringFlag{Name: "handler", Usage: "handler `NAME` on the peer (echo, sha256, or a configured command)"},
					&cli.StringFlag{Name: "input", Usage: "read the input from `FILE` (- for stdin)", TakesFile: true},
					&cli.StringFlag{Name: "data", Usage: "the input as a `STRING`"},
					&cli.IntFlag{Name: "redundancy", Usage: "run on `K` peers chosen by reputation and vote on the result (waits; see below)"},
					&cli.StringFlag{Name: "vote", Usage: "vote weights with --redundancy: `MODE` reputation, stake or hybrid", Value: "reputation"},
				}, waitFlags...),
				Action: runTaskSubmit,
			},
			{
				OnUsageError: onUsageError,
				Name:         "result",
				Usage:        "show a submitted task and, when it is finished, its verified, signed result",
				UsageText:    "agentctl task result TASK_ID [--wait [--timeout D]] [--json]",
				Flags:        waitFlags,
				Action:       runTaskResult,
			},
			{
				OnUsageError: onUsageError,
				Name:         "list",
				Usage:        "list the tasks submitted through this agent",
				UsageText:    "agentctl task list [--json]",
				Flags:        []cli.Flag{jsonFlag()},
				Action:       runTaskList,
			},
			taskCancelCommand(),
			{
				OnUsageError: onUsageError,
				Name:         "verify",
				Usage:        "check a task result offline, as a third party (no daemon, no keys needed)",
				UsageText: "agentctl task verify FILE\n\n" +
					"FILE (- for stdin) holds the --json output of 'task submit --wait' or 'task result', or just its\n" +
					"result.evidence object. The key event log is verified from inception, the delegation against it, the\n" +
					"signature under the delegated operational key, and the output against its digest. Every other field\n" +
					"of FILE that the evidence determines (task_id, to, handler, input_sha256 and result.status, output,\n" +
					"output_sha256, error, executor, started, finished, signature, signed_at, operational key and\n" +
					"delegation) must be the evidence's: a file whose fields were changed is refused, naming them.",
				Action: runTaskVerify,
			},
		},
	}
}

func readInput(c *cli.Context, file, data string, fileSet, dataSet bool) ([]byte, error) {
	switch {
	case fileSet && dataSet:
		return nil, usagef("give --input FILE or --data STRING, not both")
	case dataSet:
		return []byte(data), nil
	case fileSet:
		var r io.Reader
		if file == "-" {
			r = c.App.Reader
		} else {
			f, err := os.Open(file)
			if err != nil {
				return nil, fmt.Errorf("--input: %w", err)
			}
			defer f.Close()
			r = f
		}
		b, err := io.ReadAll(io.LimitReader(r, tasks.MaxInput+1))
		if err != nil {
			return nil, fmt.Errorf("--input: %w", err)
		}
		if len(b) > tasks.MaxInput {
			return nil, fmt.Errorf("--input %s is larger than the task input limit of %d bytes", file, tasks.MaxInput)
		}
		return b, nil
	}
	return nil, usagef("task submit: give the input with --input FILE or --data STRING")
}

func runTaskSubmit(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("task submit takes no arguments (got %q); give the input with --input or --data", c.Args().First())
	}
	if h := c.String("handler"); h != "" && !tasks.ValidHandlerName(h) {
		return usagef("--handler %q: a handler name is 1-32 of a-z 0-9 _ -, starting with a letter", h)
	}
	if c.IsSet("redundancy") {
		return runTaskReplicate(c)
	}
	if c.IsSet("vote") {
		return usagef("task submit: --vote goes with --redundancy")
	}
	for _, f := range []string{"to", "handler"} {
		if c.String(f) == "" {
			return usagef("task submit: --%s is required (see agentctl task submit --help)", f)
		}
	}
	if _, err := identity.ParseID(c.String("to")); err != nil {
		return usagef("--to %q: %v", c.String("to"), err)
	}
	input, err := readInput(c, c.String("input"), c.String("data"), c.IsSet("input"), c.IsSet("data"))
	if err != nil {
		return err
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.TaskSubmit(c.Context, api.SubmitArgs{To: c.String("to"), Handler: c.String("handler"), Input: input})
	if err != nil {
		return err
	}
	if !c.Bool("wait") {
		if c.Bool("json") {
			return printJSON(c.App.Writer, v)
		}
		fmt.Fprintf(c.App.Writer, "task %s submitted to %s (%s); fetch the result with: agentctl task result %s --wait\n", v.TaskID, v.To, v.State, v.TaskID)
		return nil
	}
	return waitAndPrint(c, v.TaskID, c.Duration("timeout"), c.Bool("json"))
}

func waitAndPrint(c *cli.Context, id string, timeout time.Duration, asJSON bool) error {
	if timeout <= 0 || timeout > api.MaxWait {
		return usagef("--timeout %v: use a duration up to %v", timeout, api.MaxWait)
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout+10*time.Second)
	defer cancel()
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.TaskGet(ctx, api.GetArgs{TaskID: id, WaitMS: timeout.Milliseconds()})
	if err != nil {
		return err
	}
	if err := showTask(c, &v, asJSON); err != nil {
		return err
	}
	switch {
	case v.State == tasks.OutFailed:
		return fmt.Errorf("task %s failed: %s: %s", v.TaskID, v.ErrorCode, v.Error)
	case v.State != tasks.OutDone:
		return fmt.Errorf("task %s is not finished after %v (state %s); fetch it later with: agentctl task result %s --wait", v.TaskID, timeout, v.State, v.TaskID)
	case v.Result.Status != tasks.ResultOK:
		return fmt.Errorf("task %s: the executor reports failure: %s", v.TaskID, v.Result.Error)
	}
	return nil
}

func runTaskResult(c *cli.Context) error {
	pos := c.Args().Slice()
	if len(pos) != 1 {
		return usagef("task result takes one TASK_ID (got %d arguments)", len(pos))
	}
	wait, timeout, asJSON := c.Bool("wait"), c.Duration("timeout"), c.Bool("json")
	if err := tasks.CheckTaskID(pos[0]); err != nil {
		return usagef("%v", err)
	}
	if wait {
		return waitAndPrint(c, pos[0], timeout, asJSON)
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.TaskGet(c.Context, api.GetArgs{TaskID: pos[0]})
	if err != nil {
		return err
	}
	return showTask(c, &v, asJSON)
}

// showTask prints a task view (JSON or text) and writes its output to --out when given.
func showTask(c *cli.Context, v *api.TaskView, asJSON bool) error {
	if out := c.String("out"); out != "" && v.Result != nil {
		if err := writeOutput(c, out, v.Result.Output); err != nil {
			return err
		}
		if out == "-" {
			asJSON = false
			fmt.Fprintf(c.App.ErrWriter, "task %s: %d bytes of output written to stdout (result sha256 %s)\n", v.TaskID, len(v.Result.Output), v.Result.OutputSHA256)
		}
	}
	switch {
	case asJSON:
		if err := printJSON(c.App.Writer, v); err != nil {
			return err
		}
	case c.String("out") != "-":
		printTask(c.App.Writer, v, c.String("out"))
	}
	return nil
}

func runTaskList(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("task list takes no arguments")
	}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	vs, err := cl.TaskList(c.Context)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, vs)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TASK\tTO\tHANDLER\tSTATE\tSUBMITTED")
	for _, v := range vs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", v.TaskID, v.To, v.Handler, v.State, v.Submitted.Local().Format(time.DateTime))
	}
	return w.Flush()
}

// printable reports whether b reads well as text.
func printable(b []byte) bool {
	if !utf8.Valid(b) || len(b) > 4096 {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\t' {
			return false
		}
	}
	return true
}

// writeOutput writes a result's output to FILE (0600, replacing it atomically) or, for -, to stdout.
func writeOutput(c *cli.Context, file string, b []byte) error {
	if file == "-" {
		_, err := c.App.Writer.Write(b)
		return err
	}
	if err := atomicfile.Replace(file, b, nil); err != nil {
		return fmt.Errorf("--out %s: %w", file, err)
	}
	return nil
}

// printTask prints a task view as text. An output that is not short text is summarized (its size and
// digest), never dumped: outFile, when set, is where it was written.
func printTask(out io.Writer, v *api.TaskView, outFile string) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "task\t%s\n", v.TaskID)
	fmt.Fprintf(w, "to\t%s\n", v.To)
	fmt.Fprintf(w, "handler\t%s\n", v.Handler)
	fmt.Fprintf(w, "input sha256\t%s\n", v.InputSHA256)
	fmt.Fprintf(w, "state\t%s (%d sends)\n", v.State, v.Attempts)
	if v.Error != "" {
		fmt.Fprintf(w, "error\t%s: %s\n", v.ErrorCode, v.Error)
	}
	if r := v.Result; r != nil {
		fmt.Fprintf(w, "status\t%s\n", r.Status)
		if r.Error != "" {
			fmt.Fprintf(w, "executor error\t%s\n", r.Error)
		}
		switch {
		case outFile != "":
			fmt.Fprintf(w, "output\t%d bytes, written to %s\n", len(r.Output), outFile)
		case printable(r.Output):
			fmt.Fprintf(w, "output\t%s\n", strings.TrimRight(string(r.Output), "\n"))
		default:
			fmt.Fprintf(w, "output\t%d bytes, not shown (binary or longer than 4 KiB): write it with --out FILE; --json has it in base64url\n", len(r.Output))
		}
		fmt.Fprintf(w, "result sha256\t%s\n", r.OutputSHA256)
		fmt.Fprintf(w, "signed by\t%s at %s\n", r.Executor, r.SignedAt.UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "signature\t%s\n", identity.Base64().EncodeToString(r.Signature))
		fmt.Fprintf(w, "signing key\t%s %s (delegation of generation %d, valid until %s)\n", r.OperationalAlgorithm, r.OperationalKey,
			r.DelegationGeneration, r.DelegationNotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "verified\tenvelope signature, delegation and key event log of the executor\n")
	}
	w.Flush()
}

func runTaskVerify(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("task verify takes one FILE (- for stdin)")
	}
	var r io.Reader = c.App.Reader
	if f := c.Args().First(); f != "-" {
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		defer fh.Close()
		r = fh
	}
	raw, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return err
	}
	ev, err := evidenceOf(raw)
	if err != nil {
		return err
	}
	e, doc, err := tasks.VerifyEvidence(ev)
	if err != nil {
		return err
	}
	dl, err := delegation.Decode(ev.Delegation)
	if err != nil { // VerifyEvidence decoded it already
		return err
	}
	if bad := alteredFields(raw, e, doc, dl); len(bad) > 0 {
		return fmt.Errorf("the evidence verifies, but the file's %s differ from what the executor signed: the file was altered; trust only the evidence (agentctl task verify prints from it)",
			strings.Join(bad, ", "))
	}
	fmt.Fprintf(c.App.Writer, "ok: task %s was run by %s for %s (handler %s, status %s)\nresult sha256 %s\nsignature %s\n",
		doc.TaskID, e.Header.SenderID, doc.Requester, doc.Handler, doc.Status, doc.OutputSHA256, identity.Base64().EncodeToString(e.Signature))
	return nil
}

// alteredFields compares every field of a task view file (the --json output) that the signed evidence
// determines with the evidence, and returns the names of those that differ. Fields the file leaves out are
// not compared; a bare evidence object has none.
func alteredFields(raw []byte, e *envelope.Envelope, doc *tasks.ResultDoc, dl *delegation.Delegation) []string {
	var v struct {
		TaskID      *string `json:"task_id"`
		To          *string `json:"to"`
		Handler     *string `json:"handler"`
		InputSHA256 *string `json:"input_sha256"`
		Result      *struct {
			Status               *string       `json:"status"`
			Output               *envelope.B64 `json:"output"`
			OutputSHA256         *string       `json:"output_sha256"`
			Error                *string       `json:"error"`
			Executor             *string       `json:"executor"`
			Started              *time.Time    `json:"started"`
			Finished             *time.Time    `json:"finished"`
			Signature            *envelope.B64 `json:"signature"`
			SignedAt             *time.Time    `json:"signed_at"`
			OperationalKey       *string       `json:"operational_key"`
			OperationalAlgorithm *string       `json:"operational_algorithm"`
			DelegationGeneration *uint64       `json:"delegation_generation"`
			DelegationNotAfter   *time.Time    `json:"delegation_not_after"`
		} `json:"result"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return []string{fmt.Sprintf("fields (not readable: %v)", err)}
	}
	var bad []string
	str := func(name string, got *string, want string) {
		if got != nil && *got != want {
			bad = append(bad, name)
		}
	}
	num := func(name string, got *time.Time, want int64) {
		if got != nil && (got.Unix() != want || got.Nanosecond() != 0) {
			bad = append(bad, name)
		}
	}
	byt := func(name string, got *envelope.B64, want []byte) {
		if got != nil && !bytes.Equal(*got, want) {
			bad = append(bad, name)
		}
	}
	str("task_id", v.TaskID, doc.TaskID)
	str("to", v.To, e.Header.SenderID)
	str("handler", v.Handler, doc.Handler)
	str("input_sha256", v.InputSHA256, doc.InputSHA256)
	if r := v.Result; r != nil {
		str("result.status", r.Status, doc.Status)
		byt("result.output", r.Output, doc.Output)
		str("result.output_sha256", r.OutputSHA256, doc.OutputSHA256)
		str("result.error", r.Error, doc.Error)
		str("result.executor", r.Executor, e.Header.SenderID)
		num("result.started", r.Started, doc.Started)
		num("result.finished", r.Finished, doc.Finished)
		byt("result.signature", r.Signature, e.Signature)
		num("result.signed_at", r.SignedAt, e.Header.Timestamp)
		str("result.operational_key", r.OperationalKey, identity.Base64().EncodeToString(dl.OpKey))
		str("result.operational_algorithm", r.OperationalAlgorithm, string(dl.OpAlg))
		if r.DelegationGeneration != nil && *r.DelegationGeneration != dl.Generation {
			bad = append(bad, "result.delegation_generation")
		}
		num("result.delegation_not_after", r.DelegationNotAfter, dl.NotAfter)
	}
	return bad
}

// evidenceOf accepts a TaskView (the --json output) or a bare evidence object.
func evidenceOf(raw []byte) (*tasks.Evidence, error) {
	var v struct {
		Result *struct {
			Evidence *tasks.Evidence `json:"evidence"`
		} `json:"result"`
		tasks.Evidence
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("the file is not JSON: %w", err)
	}
	switch {
	case v.Result != nil && v.Result.Evidence != nil:
		return v.Result.Evidence, nil
	case len(v.Envelope) > 0:
		return &v.Evidence, nil
	}
	return nil, errors.New("the file holds no result evidence (want the --json output of a finished task, or its result.evidence)")
}

// runTaskReplicate is task submit --redundancy K: the task runs on K peers chosen by reputation and a
// result is accepted by weighted vote. It prints the accepted digest, the votes and the evidence kept
// against dissenting peers, and fails (exit 1) without a quorum.
func runTaskReplicate(c *cli.Context) error {
	if c.IsSet("to") {
		return usagef("task submit: give --to AGENT_ID or --redundancy K, not both (the agent chooses the K peers)")
	}
	if c.Bool("wait") {
		return usagef("task submit --redundancy always waits; drop --wait")
	}
	if c.String("handler") == "" {
		return usagef("task submit: --handler is required (see agentctl task submit --help)")
	}
	k := c.Int("redundancy")
	if k < 1 || k > api.MaxRedundancy {
		return usagef("--redundancy %d: give 1 to %d", k, api.MaxRedundancy)
	}
	switch c.String("vote") {
	case "reputation", "stake", "hybrid":
	default:
		return usagef("--vote %q: use reputation, stake or hybrid", c.String("vote"))
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 || timeout > api.MaxWait {
		return usagef("--timeout %v: use a duration up to %v", timeout, api.MaxWait)
	}
	input, err := readInput(c, c.String("input"), c.String("data"), c.IsSet("input"), c.IsSet("data"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, timeout+10*time.Second)
	defer cancel()
	args := api.ReplicateArgs{Handler: c.String("handler"), Input: input, Redundancy: k, Vote: c.String("vote"), WaitMS: timeout.Milliseconds()}
	cl, err := daemonClient(c)
	if err != nil {
		return err
	}
	v, err := cl.TaskReplicate(ctx, args)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, v); err != nil {
			return err
		}
	} else {
		printReplicated(c.App.Writer, &v)
	}
	if !v.Accepted {
		return fmt.Errorf("task group %s: no quorum: %s", v.Group, v.Reason)
	}
	return nil
}

func printReplicated(out io.Writer, v *api.ReplicatedView) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "group\t%s\n", v.Group)
	fmt.Fprintf(w, "handler\t%s on %d peers, %s-weighted vote (quorum %.1f%% of the selected weight)\n", v.Handler, v.Redundancy, v.Mode, 100*v.Quorum)
	fmt.Fprintf(w, "input sha256\t%s\n", v.InputSHA256)
	if v.Accepted {
		fmt.Fprintf(w, "accepted\t%s (%.1f%% of the weight)\n", v.Digest, 100*v.Share)
		if printable(v.Output) {
			fmt.Fprintf(w, "output\t%s\n", strings.TrimRight(string(v.Output), "\n"))
		} else {
			fmt.Fprintf(w, "output\t%d bytes, sha256 %s\n", len(v.Output), v.OutputSHA256)
		}
	} else {
		fmt.Fprintf(w, "accepted\tnone: %s\n", v.Reason)
	}
	w.Flush()
	fmt.Fprintln(out, "\nvotes")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  PEER\tVOTE\tWEIGHT\tDIGEST\tTASK\tSTATE")
	for _, x := range v.Votes {
		dg := x.Digest
		if dg == "" {
			dg = "-"
		}
		state := x.State
		if x.Error != "" {
			state += " (" + x.Error + ")"
		}
		fmt.Fprintf(w, "  %s\t%s\t%.4f\t%s\t%s\t%s\n", x.Peer, x.Vote, x.Weight, dg, x.TaskID, state)
	}
	w.Flush()
	if len(v.Evidence) > 0 {
		fmt.Fprintf(out, "\nevidence kept (%d signed results in the agent's state; --json prints them for agentctl task verify)\n", len(v.Evidence))
		for _, e := range v.Evidence {
			fmt.Fprintf(out, "  %s: %s, digest %s\n", e.Peer, e.Kind, e.Digest)
		}
	}
}
