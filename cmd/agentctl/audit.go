package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/urfave/cli/v2"
	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/audit/subjectkeys"
	"github.com/custos-agent/custos/identity"
)

// auditCommand is "agentctl audit": verify, query and tail the audit log in <home>/audit.
func auditCommand() *cli.Command {
	home := func() cli.Flag {
		return &cli.StringFlag{Name: "home", Usage: "agent state directory (default: the global --home)"}
	}
	filterFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringSliceFlag{Name: "type", Usage: "only records of event `TYPE` (repeat for several; \"auth.*\" selects a family)"},
			&cli.StringFlag{Name: "actor", Usage: "only records whose actor is exactly `ACTOR`"},
			&cli.BoolFlag{Name: "json", Usage: "print each record as stored (one JSON object per line)"},
		}
	}
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "audit",
		Usage:        "verify, query and follow the tamper-evident audit log (<home>/audit)",
		Description: "The audit log is append-only JSON lines, hash-chained, with checkpoints signed by the identity key.\n" +
			"These commands only read it; the agent writes it.",
		Subcommands: []*cli.Command{
			{
				OnUsageError: onUsageError,
				Name:         "verify",
				Usage:        "check the whole log: every record, the hash chain, every checkpoint signature (exit 0 only when it all verifies)",
				Description: "Checkpoint signatures are checked with the key of the generation that made them, from the verified\n" +
					"key event log <home>/kel.jsonl. On failure the message names the first bad record: segment file, line\n" +
					"and seq, and why. While the agent runs, the daemon reports its head (control operation audit.head) and the log\n" +
					"must hold it; otherwise the log must end with the closing checkpoint (holding audit/LOCK changes nothing).\n" +
					"A stopped log whose only fault is an unsealed tail (records after the last checkpoint, no closing seal: the agent\n" +
					"was killed, or the tail was cut) is a warning with exit 0; anything else is an error (exit 1). --strict makes the\n" +
					"unsealed tail an error too.",
				Flags: []cli.Flag{home(), jsonFlag(),
					&cli.BoolFlag{Name: "strict", Usage: "an unsealed tail (the agent was killed, or the tail was cut) is an error, not a warning"}},
				Action: runAuditVerify,
			},
			{
				OnUsageError: onUsageError,
				Name:         "query",
				Usage:        "print the records that match (it reads, it does not verify: run audit verify for that)",
				Flags: append([]cli.Flag{home(),
					&cli.StringFlag{Name: "since", Usage: "records at or after `TIME` (RFC 3339, or an age like 90m, 24h, 7d)"},
					&cli.StringFlag{Name: "until", Usage: "records before `TIME` (RFC 3339, or an age like 1h)"},
				}, filterFlags()...),
				Action: runAuditQuery,
			},
			{
				OnUsageError: onUsageError,
				Name:         "tail",
				Usage:        "print the last records, and with -f follow new ones until interrupted",
				Flags: append([]cli.Flag{home(),
					&cli.IntFlag{Name: "n", Value: 10, Usage: "how many of the last matching records to print first"},
					&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new records until Ctrl-C"},
				}, filterFlags()...),
				Action: runAuditTail,
			},
		},
	}
}

// auditHome is the local --home of an audit subcommand when given, else the global one.
func auditHome(c *cli.Context) (string, error) {
	h := ""
	if c.IsSet("home") {
		h = c.String("home")
	} else {
		// The global flag: ask the parent contexts (the local flag shadows it here).
		for _, p := range c.Lineage()[1:] {
			if h = p.String("home"); h != "" {
				break
			}
		}
	}
	if h == "" {
		return "", usagef("no agent home: give --home DIR or set CUSTOS_HOME")
	}
	abs, err := filepath.Abs(h)
	if err != nil {
		return "", usagef("--home %q: %v", h, err)
	}
	return abs, nil
}

func runAuditVerify(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("audit verify takes no arguments")
	}
	home, err := auditHome(c)
	if err != nil {
		return err
	}
	kelPath := filepath.Join(home, "kel.jsonl")
	b, err := os.ReadFile(kelPath)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no key event log at %s: checkpoints cannot be checked without it (is --home right? run agentctl init first)", kelPath)
	}
	if err != nil {
		return err
	}
	kel, err := identity.DecodeLog(b)
	if err != nil {
		return fmt.Errorf("%s: %w", kelPath, err)
	}
	dir := filepath.Join(home, "audit")
	// A running daemon vouches for its head; without one the log must be closed and sealed (whoever
	// holds audit/LOCK).
	var rep audit.Report
	head, herr := api.ForHome(home).AuditHead(c.Context)
	switch {
	case herr == nil:
		rep, err = audit.VerifyRunning(dir, kel, head)
	case errors.Is(herr, control.ErrNoDaemon):
		rep, err = audit.Verify(dir, kel)
		if err != nil && rep.WriterActive {
			err = fmt.Errorf("%w (audit/LOCK is held, but no agent daemon answers on its control socket to vouch for "+
				"the log's head: a held lock alone does not make an unsealed log acceptable)", err)
		}
	default:
		return fmt.Errorf("the agent daemon of %s did not report its audit head, which verifying a log it writes needs: %w", home, herr)
	}
	if err != nil && rep.Unsealed && herr != nil && !rep.WriterActive && !c.Bool("strict") {
		// The only fault is the unsealed tail: everything before it verified. A killed agent leaves exactly
		// this; so does a cut tail, which the noted head detects.
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the log is not sealed: %v. Either the agent was killed (SIGKILL, power loss) "+
			"before it closed the log (starting it again repairs and signs it), or the tail was cut: compare the head below with one "+
			"you kept (--strict makes this an error)", err))
		err = nil
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", w)
	}
	if err != nil {
		var ve *audit.VerifyError
		if errors.As(err, &ve) {
			err = fmt.Errorf("audit log %s does not verify: %w", dir, err)
		} else {
			err = fmt.Errorf("audit log %s: %w", dir, err)
		}
		if c.Bool("json") {
			v := auditVerifyJSON{Verifies: false, Dir: dir, Error: err.Error(), Warnings: rep.Warnings}
			if ve != nil {
				v.BadSegment, v.BadLine, v.BadSeq = ve.Segment, ve.Line, ve.Seq
			}
			if perr := printJSON(c.App.Writer, v); perr != nil {
				return perr
			}
		}
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, auditVerifyJSON{
			Verifies: true, Dir: dir, Records: rep.Records, Segments: rep.Segments, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq,
			Head: rep.Head, Checkpoints: rep.Checkpoints, Generations: rep.Generations, Anchored: rep.Anchored, Live: rep.Live,
			Pending: rep.Pending, Unsealed: rep.Unsealed, Warnings: rep.Warnings,
		})
	}
	out := c.App.Writer
	if rep.Unsealed {
		fmt.Fprintf(out, "audit log verifies up to its unsealed tail (see the warning): ")
	} else {
		fmt.Fprintf(out, "audit log verifies: ")
	}
	fmt.Fprintf(out, "%d records in %d segments, seq %d-%d, %d checkpoints signed by key generation %s\n",
		rep.Records, rep.Segments, rep.FirstSeq, rep.LastSeq, rep.Checkpoints, gens(rep.Generations))
	if rep.Anchored {
		fmt.Fprintf(out, "records before seq %d were removed by retention (vouched for by a signed audit.pruned record)\n", rep.FirstSeq)
	}
	if rep.Live {
		fmt.Fprintf(out, "the agent is writing the log (its head seq %d is in the log): %d records are not yet covered by a checkpoint\n", head.Seq, rep.Pending)
	}
	fmt.Fprintf(out, "head: seq %d hash %s (keep it elsewhere to detect a later rollback)\n", rep.LastSeq, rep.Head)
	return nil
}

// auditVerifyJSON is audit verify --json: the report, or (verifies false, exit 1) the first bad record.
type auditVerifyJSON struct {
	Verifies    bool     `json:"verifies"`
	Dir         string   `json:"dir"`
	Records     uint64   `json:"records,omitempty"`
	Segments    int      `json:"segments,omitempty"`
	FirstSeq    uint64   `json:"first_seq,omitempty"`
	LastSeq     uint64   `json:"last_seq,omitempty"`
	Head        string   `json:"head,omitempty"`
	Checkpoints int      `json:"checkpoints,omitempty"`
	Generations []uint64 `json:"generations,omitempty"`
	Anchored    bool     `json:"anchored,omitempty"`
	Live        bool     `json:"live,omitempty"`
	Pending     uint64   `json:"pending,omitempty"`
	Unsealed    bool     `json:"unsealed,omitempty"`
	Error       string   `json:"error,omitempty"`
	BadSegment  string   `json:"bad_segment,omitempty"`
	BadLine     int      `json:"bad_line,omitempty"`
	BadSeq      uint64   `json:"bad_seq,omitempty"`
	Warnings    []string `json:"warnings,omitempty"`
}

func gens(g []uint64) string {
	s := make([]string, len(g))
	for i, v := range g {
		s[i] = strconv.FormatUint(v, 10)
	}
	return strings.Join(s, ", ")
}

func filterFrom(c *cli.Context) audit.Filter {
	return audit.Filter{Types: c.StringSlice("type"), Actor: c.String("actor")}
}

func runAuditQuery(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("audit query takes no arguments (use --type, --actor, --since, --until)")
	}
	home, err := auditHome(c)
	if err != nil {
		return err
	}
	f := filterFrom(c)
	now := time.Now()
	if f.Since, err = parseWhen(c.String("since"), now); err != nil {
		return usagef("--since: %v", err)
	}
	if f.Until, err = parseWhen(c.String("until"), now); err != nil {
		return usagef("--until: %v", err)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return usagef("--until %s is not after --since %s", f.Until.Format(time.RFC3339), f.Since.Format(time.RFC3339))
	}
	for _, t := range f.Types {
		if err := audit.EventType(strings.TrimSuffix(strings.TrimSuffix(t, "*"), ".")).Validate(); err != nil {
			return usagef("--type: %v", err)
		}
	}
	dir := filepath.Join(home, "audit")
	keys, done := subjectKeys(c, home)
	defer done()
	f.Keys = keys
	show, n := printer(c), 0
	if err := audit.Query(c.Context, dir, f, func(e audit.Entry) error { n++; return show(e) }); err != nil {
		return err
	}
	if n == 0 && len(f.Types) > 0 {
		warnAbsentTypes(c, dir, f.Types)
	}
	return nil
}

// warnAbsentTypes says, on stderr, which --type values match no record in the log at all (a misspelt
// type returns nothing, like a type with no records yet), with the types the log holds.
func warnAbsentTypes(c *cli.Context, dir string, types []string) {
	present := map[string]bool{}
	if audit.Query(c.Context, dir, audit.Filter{}, func(e audit.Entry) error { present[string(e.Type)] = true; return nil }) != nil {
		return
	}
	var have []string
	for t := range present {
		have = append(have, t)
	}
	sort.Strings(have)
	for _, t := range types {
		probe := audit.Filter{Types: []string{t}}
		hit := false
		for _, h := range have {
			hit = hit || probe.Match(&audit.Record{Type: audit.EventType(h)})
		}
		if !hit {
			fmt.Fprintf(c.App.ErrWriter, "agentctl: no record in this log has type %q; the types it holds: %s\n", t, strings.Join(have, ", "))
		}
	}
}

func runAuditTail(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("audit tail takes no arguments (use -n, -f, --type, --actor)")
	}
	if c.Int("n") < 0 {
		return usagef("-n must not be negative")
	}
	home, err := auditHome(c)
	if err != nil {
		return err
	}
	ctx := c.Context
	if c.Bool("follow") {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}
	f := filterFrom(c)
	keys, done := subjectKeys(c, home)
	defer done()
	f.Keys = keys
	return audit.Tail(ctx, filepath.Join(home, "audit"), audit.TailOptions{
		N: c.Int("n"), Follow: c.Bool("follow"), Filter: f,
	}, printer(c))
}

// subjectKeys opens the audit log's subject keys (ADR 0099) read-only from <home>/state.db, so that
// sealed fields print opened (or "[erased]" once their subject was erased). While the agent runs it
// holds state.db: sealed fields then print as "[sealed]", and a note on stderr says why. --json prints
// records as stored either way.
func subjectKeys(c *cli.Context, home string) (audit.KeyLookup, func()) {
	none := func() {}
	if c.Bool("json") {
		return nil, none
	}
	note := func(why string) {
		fmt.Fprintf(c.App.ErrWriter, "agentctl: sealed audit fields are shown as [sealed]: %s\n", why)
	}
	path := filepath.Join(home, "state.db")
	if _, err := os.Stat(path); err != nil {
		return nil, none
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: 200 * time.Millisecond})
	if err != nil {
		note("the agent holds state.db (stop it to read them)")
		return nil, none
	}
	box, err := subjectkeys.InterimBox(home)
	if err == nil {
		var keys *subjectkeys.Store
		if keys, err = subjectkeys.New(db, box); err == nil {
			return keys, func() { _ = db.Close() }
		}
	}
	_ = db.Close()
	note(err.Error())
	return nil, none
}

// parseWhen reads an RFC 3339 time, a date (2006-01-02, UTC), or an age before now ("90m", "24h", "7d").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(d); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or an age (90m, 24h, 7d)", s)
}

// printer prints entries as stored (--json) or as one readable line each.
func printer(c *cli.Context) func(audit.Entry) error {
	out := c.App.Writer
	asJSON := c.Bool("json")
	return func(e audit.Entry) error {
		if asJSON {
			_, err := fmt.Fprintf(out, "%s\n", e.Raw)
			return err
		}
		_, err := io.WriteString(out, formatEntry(e)+"\n")
		return err
	}
}

// formatEntry is one line: time, seq, type, outcome, actor, subject, details. Strings from the log may
// come from peers, so anything that is not plain printable text is quoted (no terminal escapes).
func formatEntry(e audit.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s #%d %s %s", e.Time.UTC().Format(time.RFC3339Nano), e.Seq, safe(string(e.Type)), safe(string(e.Outcome)))
	if e.Actor != "" {
		b.WriteString(" actor=" + shown(e, "actor", e.Actor))
	}
	if e.Subject != "" {
		b.WriteString(" subject=" + shown(e, "subject", e.Subject))
	}
	keys := make([]string, 0, len(e.Details))
	for k := range e.Details {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(" " + safe(k) + "=")
		if s, ok := e.Details[k].(string); ok {
			b.WriteString(shown(e, "details."+k, s))
			continue
		}
		j, _ := json.Marshal(e.Details[k])
		b.WriteString(safe(string(j)))
	}
	if cp := e.Checkpoint; cp != nil {
		fmt.Fprintf(&b, " checkpoint=gen:%d,head_seq:%d", cp.Gen, cp.HeadSeq)
	}
	return b.String()
}

// sealedPath reports whether path is a sealed field of e still sealed (no key was at hand).
func sealedPath(e audit.Entry, path string) bool {
	if !slices.Contains(e.Sealed, path) {
		return false
	}
	var v string
	switch path {
	case "actor":
		v = e.Actor
	case "subject":
		v = e.Subject
	default:
		v, _ = e.Details[strings.TrimPrefix(path, "details.")].(string)
	}
	_, _, err := audit.ParseSealed(v)
	return err == nil
}

// shown is a field's value for the text form: "[sealed]" when it is still sealed, else safe.
func shown(e audit.Entry, path, v string) string {
	if sealedPath(e, path) {
		return "[sealed]"
	}
	return safe(v)
}

// safe returns s as is when it is non-empty printable text without spaces or quotes, else quoted.
func safe(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' || r == '\\' {
			return strconv.Quote(s)
		}
	}
	return s
}
