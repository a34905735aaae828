package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/daemon"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/tpm"
)

// Environment variables read by the identity commands.
const (
	envPassphrase = "CUSTOS_PASSPHRASE"
	envTPMDevice  = "CUSTOS_TPM_DEVICE"
	envWorkFactor = "CUSTOS_SOFTWARE_WORK_FACTOR"
)

// backends maps a keystore URI scheme to the backend that opens it. Adding a backend is one line here.
func backends() map[string]keystore.OpenFunc {
	return map[string]keystore.OpenFunc{
		software.Scheme: software.Open,
		"pkcs11":        pkcs11.Open,
		"tpm":           tpm.Open,
	}
}

// passphraseFileFlag is on every command that may need a software keystore's passphrase.
func passphraseFileFlag() cli.Flag {
	return &cli.StringFlag{
		Name:      "passphrase-file",
		Usage:     "read the software keystore's passphrase from `FILE` (0600; one trailing newline is ignored). Otherwise: the source recorded at init, else $" + envPassphrase + ", else a prompt when stdin is a terminal",
		TakesFile: true,
	}
}

// session is what one command invocation needs to reach keystores: openers, where secrets come from,
// a prompt when there is a terminal, and a logger on stderr.
type session struct {
	c         *cli.Context
	home      string
	log       *slog.Logger
	passFile  string // --passphrase-file, made absolute
	confirm   bool   // ask for a new passphrase twice (init)
	warnedSW  bool
	passCache map[string][]byte // passphrases confirmed at a prompt, by what they are for (init)
}

func newSession(c *cli.Context) (*session, error) {
	home, err := filepath.Abs(c.String("home"))
	if err != nil {
		return nil, fmt.Errorf("--home %q: %w", c.String("home"), err)
	}
	s := &session{c: c, home: home, log: newLogger(c)}
	if c.IsSet("passphrase-file") {
		p, err := filepath.Abs(c.String("passphrase-file"))
		if err != nil {
			return nil, usagef("--passphrase-file %q: %v", c.String("passphrase-file"), err)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, usagef("--passphrase-file: %v", err)
		}
		s.passFile = p
	}
	return s, nil
}

func newLogger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))
}

// passSource is the passphrase source this invocation gives a software keystore whose URI names none
// (or, for --passphrase-file, in place of the one it names).
func (s *session) explicitPassSource() string {
	if s.passFile != "" {
		return "file:" + s.passFile
	}
	return ""
}

func (s *session) envPassSource() string {
	if v, ok := os.LookupEnv(envPassphrase); ok && v != "" {
		return "env:" + envPassphrase
	}
	return ""
}

// openers wraps the software backend so that --passphrase-file and $CUSTOS_PASSPHRASE apply.
func (s *session) openers() map[string]keystore.OpenFunc {
	m := backends()
	m[software.Scheme] = func(ctx context.Context, uri string, opts keystore.OpenOptions) (keystore.Keystore, error) {
		src, err := software.PassphraseSource(uri)
		if err != nil {
			return nil, err
		}
		switch {
		case s.explicitPassSource() != "":
			uri, err = software.WithPassphraseSource(uri, s.explicitPassSource())
		case src == "" && s.envPassSource() != "":
			uri, err = software.WithPassphraseSource(uri, s.envPassSource())
		}
		if err != nil {
			return nil, err
		}
		return software.Open(ctx, uri, opts)
	}
	return m
}

// warnSoftware says, once per command, that the key is not hardware-backed.
func (s *session) warnSoftware() {
	if s.warnedSW {
		return
	}
	s.warnedSW = true
	fmt.Fprintln(s.c.App.ErrWriter, "agentctl: warning: this identity's keys are in passphrase-encrypted files (software backend), not in hardware; use --tpm or --pkcs11 for a real agent")
}

// options are the custody options of this invocation.
func (s *session) options() custody.Options {
	return custody.Options{
		Openers:     s.openers(),
		OpenOptions: keystore.OpenOptions{Logger: s.log, Prompt: s.prompt()},
		Logger:      s.log,
	}
}

// prompt returns a function that asks for a secret on the terminal without echo, or nil when stdin is
// not a terminal.
func (s *session) prompt() func(string) ([]byte, error) {
	f, ok := s.c.App.Reader.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return func(what string) ([]byte, error) {
		if p, ok := s.passCache[what]; ok {
			return append([]byte(nil), p...), nil
		}
		ask := func(label string) ([]byte, error) {
			fmt.Fprintf(s.c.App.ErrWriter, "%s: ", label)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(s.c.App.ErrWriter)
			return b, err
		}
		label := "Enter " + what
		if s.confirm && strings.Contains(what, "software keystore") {
			label = "New " + what
		}
		p, err := ask(label)
		if err != nil {
			return nil, err
		}
		if s.confirm && strings.Contains(what, "software keystore") {
			again, err := ask("Repeat the passphrase")
			if err != nil {
				keystore.Wipe(p)
				return nil, err
			}
			same := string(again) == string(p)
			keystore.Wipe(again)
			if !same {
				keystore.Wipe(p)
				return nil, fmt.Errorf("the two passphrases differ; nothing was created")
			}
			if s.passCache == nil {
				s.passCache = map[string][]byte{}
			}
			s.passCache[what] = append([]byte(nil), p...)
		}
		return p, nil
	}
}

func (s *session) close() {
	for what, p := range s.passCache {
		keystore.Wipe(p)
		delete(s.passCache, what)
	}
}

// openIdentity opens the identity in --home and destroys retired keys whose grace period is over (every
// command that opens the identity does this first).
func (s *session) openIdentity(ctx context.Context) (*custody.Custody, error) {
	c, err := custody.Open(ctx, s.home, s.options())
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(c.KeystoreURI(), software.Scheme+":") {
		s.warnSoftware()
	}
	before := c.Keys()
	done, err := c.DestroyExpired(ctx)
	for _, g := range done {
		fmt.Fprintf(s.c.App.ErrWriter, "agentctl: destroyed the retired key of generation %d (its grace period is over)\n", g.Generation)
	}
	if err != nil {
		fmt.Fprintf(s.c.App.ErrWriter, "agentctl: warning: %v (will try again next time)\n", err)
	}
	if len(done) > 0 {
		s.recordKeyEvents(ctx, c, before)
	}
	return c, nil
}

// recordKeyEvents writes what a custody operation changed to the audit log as key.init, key.rotate,
// key.recover and key.destroy records (before: the identity's generations as they were, nil for init).
// Without a running agent the records go to <home>/audit directly, sealed with the identity's current key;
// when a running agent holds the log (audit.ErrLocked), the agent is asked to reload its identity and
// writes them itself. A failure is a warning on stderr: the key operation itself has happened.
func (s *session) recordKeyEvents(ctx context.Context, id *custody.Custody, before []custody.Generation) {
	recs := daemon.KeyEventRecords(before, id.Keys(), id.Log(), fmt.Sprintf("uid:%d", os.Getuid()), daemon.SourceAgentctl)
	if len(recs) == 0 {
		return
	}
	var types []string
	for _, r := range recs {
		types = append(types, string(r.Type))
	}
	what := strings.Join(types, ", ")
	dir := filepath.Join(s.home, daemon.AuditDir)
	err := appendAudit(ctx, dir, id, recs, s.log)
	if err == nil {
		s.log.Info("key events recorded in the audit log", "types", what, "dir", dir)
		return
	}
	errOut := s.c.App.ErrWriter
	if !errors.Is(err, audit.ErrLocked) {
		fmt.Fprintf(errOut, "agentctl: warning: %s not written to the audit log %s: %v\n", what, dir, err)
		return
	}
	var res daemon.IdentityReloadResult
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cerr := control.Call(cctx, filepath.Join(s.home, daemon.ControlFile), daemon.OpIdentityReload, nil, &res); cerr != nil {
		fmt.Fprintf(errOut, "agentctl: warning: a running agent holds the audit log and could not be told of the change (%v): send it SIGHUP so that it records %s and uses the current key\n", cerr, what)
		return
	}
	fmt.Fprintf(errOut, "agentctl: the running agent picked up the change (generation %d) and recorded %s in its audit log\n",
		res.Generation, strings.Join(res.Recorded, ", "))
}

// appendAudit opens the audit log in dir with the identity's current key as checkpoint signer, appends
// recs and closes the log (which seals it: a checkpoint over the last record).
func appendAudit(ctx context.Context, dir string, id *custody.Custody, recs []audit.Record, log *slog.Logger) error {
	signer, err := id.Signer(ctx)
	if err != nil {
		return fmt.Errorf("the identity key, which signs the log's checkpoints: %w", err)
	}
	l, err := audit.Open(ctx, dir, audit.Options{Signer: signer, Generation: id.Current().Generation, AgentID: id.ID().String(), Logger: log})
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if _, err := l.Append(ctx, r); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if err := l.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func writeOut(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, format, args...)
}

// redactURI shows a URI without its query (module path, secret sources): for tables.
func redactURI(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

// displayURI shows a keystore URI without anything secret: a PIN or passphrase never travels in a URI
// (the backends refuse pin-value), so only sources remain; pin-value is removed all the same.
func displayURI(u string) string {
	if !strings.Contains(u, "pin-value=") {
		return u
	}
	base, q, _ := strings.Cut(u, "?")
	var keep []string
	for _, a := range strings.Split(q, "&") {
		if !strings.HasPrefix(a, "pin-value=") {
			keep = append(keep, a)
		}
	}
	if len(keep) == 0 {
		return base
	}
	return base + "?" + strings.Join(keep, "&")
}

// onUsageError makes a flag parse error of a subcommand a usage error (exit 2), printed by run() as one
// line, without the help text.
func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }

// requireFlags returns a usage error (exit 2) naming the first of names that was not given.
func requireFlags(c *cli.Context, names ...string) error {
	for _, n := range names {
		if !c.IsSet(n) || c.String(n) == "" {
			return usagef("%s: --%s is required (see agentctl %s --help)", c.Command.FullName(), n, c.Command.FullName())
		}
	}
	return nil
}

// withIdentity opens the session and the identity in --home (destroying retired keys whose grace period
// is over), runs fn, and closes both.
func withIdentity(c *cli.Context, fn func(s *session, id *custody.Custody) error) error {
	s, err := newSession(c)
	if err != nil {
		return err
	}
	defer s.close()
	id, err := s.openIdentity(c.Context)
	if err != nil {
		return err
	}
	defer id.Close()
	return fn(s, id)
}
