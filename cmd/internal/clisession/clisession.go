// Package clisession is what agentctl and custosd share to reach an agent's identity from the command
// line: the keystore backends, where secrets come from (--passphrase-file, $CUSTOS_PASSPHRASE, a prompt
// on a terminal), opening the identity of --home (destroying retired keys whose grace period is over)
// and recording key events in the audit log; and the usage error (exit code 2) of both commands.
package clisession

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/tpm"
)

// UsageError marks an error as a usage error (exit code 2).
type UsageError struct{ error }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error { return UsageError{fmt.Errorf(format, args...)} }

// AsUsage marks err as a usage error.
func AsUsage(err error) error { return UsageError{err} }

// Environment variables read by the identity commands.
const (
	EnvPassphrase = "CUSTOS_PASSPHRASE"
	EnvTPMDevice  = "CUSTOS_TPM_DEVICE"
	EnvWorkFactor = "CUSTOS_SOFTWARE_WORK_FACTOR"
)

// Backends maps a keystore URI scheme to the backend that opens it. Adding a backend is one line here.
func Backends() map[string]keystore.OpenFunc {
	return map[string]keystore.OpenFunc{
		software.Scheme: software.Open,
		"pkcs11":        pkcs11.Open,
		"tpm":           tpm.Open,
	}
}

// PassphraseFileFlag is on every command that may need a software keystore's passphrase.
func PassphraseFileFlag() cli.Flag {
	return &cli.StringFlag{
		Name:      "passphrase-file",
		Usage:     "read the software keystore's passphrase from `FILE` (0600; one trailing newline is ignored). Otherwise: the source recorded at init, else $" + EnvPassphrase + ", else a prompt when stdin is a terminal",
		TakesFile: true,
	}
}

// Session is what one command invocation needs to reach keystores: openers, where secrets come from,
// a prompt when there is a terminal, and a logger on stderr.
type Session struct {
	C    *cli.Context
	Home string // --home, made absolute
	Log  *slog.Logger
	// Confirm asks for a new passphrase twice (init).
	Confirm   bool
	passFile  string // --passphrase-file, made absolute
	warnedSW  bool
	passCache map[string][]byte // passphrases confirmed at a prompt, by what they are for (init)
	// WrapKeystore, when set, wraps every keystore the identity opens (custosd: metrics.InstrumentKeystore).
	WrapKeystore func(keystore.Keystore) keystore.Keystore
}

// New makes the session of the command c (its --home, --passphrase-file and --log-level).
func New(c *cli.Context) (*Session, error) {
	home, err := filepath.Abs(c.String("home"))
	if err != nil {
		return nil, fmt.Errorf("--home %q: %w", c.String("home"), err)
	}
	s := &Session{C: c, Home: home, Log: NewLogger(c)}
	if c.IsSet("passphrase-file") {
		p, err := filepath.Abs(c.String("passphrase-file"))
		if err != nil {
			return nil, Usagef("--passphrase-file %q: %v", c.String("passphrase-file"), err)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, Usagef("--passphrase-file: %v", err)
		}
		s.passFile = p
	}
	return s, nil
}

// NewLogger is a logger on the command's stderr at its --log-level (warn when unreadable) in its
// --log-format (text when unreadable).
func NewLogger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelWarn
	}
	h, err := NewHandler(c.App.ErrWriter, c.String("log-format"), level)
	if err != nil {
		h = slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level})
	}
	return slog.New(h)
}

// ExplicitPassSource is the passphrase source this invocation gives a software keystore whose URI names none
// (or, for --passphrase-file, in place of the one it names).
func (s *Session) ExplicitPassSource() string {
	if s.passFile != "" {
		return "file:" + s.passFile
	}
	return ""
}

// EnvPassSource is $CUSTOS_PASSPHRASE as a passphrase source, when it is set.
func (s *Session) EnvPassSource() string {
	if v, ok := os.LookupEnv(EnvPassphrase); ok && v != "" {
		return "env:" + EnvPassphrase
	}
	return ""
}

// Openers wraps the software backend so that --passphrase-file and $CUSTOS_PASSPHRASE apply.
func (s *Session) Openers() map[string]keystore.OpenFunc {
	m := s.openers()
	if s.WrapKeystore == nil {
		return m
	}
	for scheme, open := range m {
		m[scheme] = func(ctx context.Context, uri string, opts keystore.OpenOptions) (keystore.Keystore, error) {
			ks, err := open(ctx, uri, opts)
			if err != nil {
				return nil, err
			}
			return s.WrapKeystore(ks), nil
		}
	}
	return m
}

func (s *Session) openers() map[string]keystore.OpenFunc {
	m := Backends()
	m[software.Scheme] = func(ctx context.Context, uri string, opts keystore.OpenOptions) (keystore.Keystore, error) {
		src, err := software.PassphraseSource(uri)
		if err != nil {
			return nil, err
		}
		switch {
		case s.ExplicitPassSource() != "":
			uri, err = software.WithPassphraseSource(uri, s.ExplicitPassSource())
		case src == "" && s.EnvPassSource() != "":
			uri, err = software.WithPassphraseSource(uri, s.EnvPassSource())
		}
		if err != nil {
			return nil, err
		}
		return software.Open(ctx, uri, opts)
	}
	return m
}

// WarnSoftware says, once per command, that the key is not hardware-backed.
func (s *Session) WarnSoftware() {
	if s.warnedSW {
		return
	}
	s.warnedSW = true
	fmt.Fprintln(s.C.App.ErrWriter, "agentctl: warning: this identity's keys are in passphrase-encrypted files (software backend), not in hardware; use --tpm or --pkcs11 for a real agent")
}

// Options are the custody options of this invocation.
func (s *Session) Options() custody.Options {
	return custody.Options{
		Openers:     s.Openers(),
		OpenOptions: keystore.OpenOptions{Logger: s.Log, Prompt: s.Prompt()},
		Logger:      s.Log,
	}
}

// Prompt returns a function that asks for a secret on the terminal without echo, or nil when stdin is
// not a terminal.
func (s *Session) Prompt() func(string) ([]byte, error) {
	f, ok := s.C.App.Reader.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return func(what string) ([]byte, error) {
		if p, ok := s.passCache[what]; ok {
			return append([]byte(nil), p...), nil
		}
		ask := func(label string) ([]byte, error) {
			fmt.Fprintf(s.C.App.ErrWriter, "%s: ", label)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(s.C.App.ErrWriter)
			return b, err
		}
		label := "Enter " + what
		if s.Confirm && strings.Contains(what, "software keystore") {
			label = "New " + what
		}
		p, err := ask(label)
		if err != nil {
			return nil, err
		}
		if s.Confirm && strings.Contains(what, "software keystore") {
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

// Close wipes the passphrases kept for this invocation.
func (s *Session) Close() {
	for what, p := range s.passCache {
		keystore.Wipe(p)
		delete(s.passCache, what)
	}
}

// OpenIdentity opens the identity in --home and destroys retired keys whose grace period is over (every
// command that opens the identity does this first).
func (s *Session) OpenIdentity(ctx context.Context) (*custody.Custody, error) {
	c, err := custody.Open(ctx, s.Home, s.Options())
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(c.KeystoreURI(), software.Scheme+":") {
		s.WarnSoftware()
	}
	before := c.Keys()
	done, err := c.DestroyExpired(ctx)
	for _, g := range done {
		fmt.Fprintf(s.C.App.ErrWriter, "agentctl: destroyed the retired key of generation %d (its grace period is over)\n", g.Generation)
	}
	if err != nil {
		fmt.Fprintf(s.C.App.ErrWriter, "agentctl: warning: %v (will try again next time)\n", err)
	}
	if len(done) > 0 {
		s.RecordKeyEvents(ctx, c, before)
	}
	return c, nil
}

// RecordKeyEvents writes what a custody operation changed to the audit log as key.init, key.rotate,
// key.recover and key.destroy records (before: the identity's generations as they were, nil for init).
// Without a running agent the records go to <home>/audit directly, sealed with the identity's current key;
// when a running agent holds the log (audit.ErrLocked), the agent is asked to reload its identity and
// writes them itself. A failure is a warning on stderr: the key operation itself has happened.
func (s *Session) RecordKeyEvents(ctx context.Context, id *custody.Custody, before []custody.Generation) {
	recs := custody.KeyEventRecords(before, id.Keys(), id.Log(), fmt.Sprintf("uid:%d", os.Getuid()), custody.SourceAgentctl)
	if len(recs) == 0 {
		return
	}
	var types []string
	for _, r := range recs {
		types = append(types, string(r.Type))
	}
	what := strings.Join(types, ", ")
	dir := filepath.Join(s.Home, api.AuditDir)
	err := AppendAudit(ctx, dir, id, recs, s.Log)
	if err == nil {
		s.Log.Info("key events recorded in the audit log", "types", what, "dir", dir)
		return
	}
	errOut := s.C.App.ErrWriter
	if !errors.Is(err, audit.ErrLocked) {
		fmt.Fprintf(errOut, "agentctl: warning: %s not written to the audit log %s: %v\n", what, dir, err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, cerr := api.ForHome(s.Home).IdentityReload(cctx)
	if cerr != nil {
		fmt.Fprintf(errOut, "agentctl: warning: a running agent holds the audit log and could not be told of the change (%v): send it SIGHUP so that it records %s and uses the current key\n", cerr, what)
		return
	}
	fmt.Fprintf(errOut, "agentctl: the running agent picked up the change (generation %d) and recorded %s in its audit log\n",
		res.Generation, strings.Join(res.Recorded, ", "))
}

// AppendAudit opens the audit log in dir with the identity's current key as checkpoint signer, appends
// recs and closes the log (which seals it: a checkpoint over the last record).
func AppendAudit(ctx context.Context, dir string, id *custody.Custody, recs []audit.Record, log *slog.Logger) error {
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

// RecordKeyUse writes a key.use record: the identity key signed data (of SHA-256 digest) for its
// operator with agentctl sign. A failure is a warning on stderr: the signature itself is made.
func (s *Session) RecordKeyUse(ctx context.Context, id *custody.Custody, digest string) {
	s.recordOne(ctx, id, nil, audit.Record{Type: audit.KeyUse, Actor: fmt.Sprintf("uid:%d", os.Getuid()), Subject: id.ID().String(),
		Outcome: audit.OutcomeSuccess, Details: map[string]any{"generation": id.Current().Generation, "sha256": digest, "source": custody.SourceAgentctl}})
}

// RecordUnlockFailure writes a key.unlock_failed record when err says the keystore of the identity key
// refused its PIN or passphrase (keystore.ErrWrongSecret), and does nothing otherwise. source names the
// program (agentctl, custosd).
func (s *Session) RecordUnlockFailure(ctx context.Context, id *custody.Custody, err error, source string) {
	if id == nil || !errors.Is(err, keystore.ErrWrongSecret) {
		return
	}
	g := id.Current()
	s.recordOne(ctx, id, err, audit.Record{Type: audit.KeyUnlockFailed, Actor: fmt.Sprintf("uid:%d", os.Getuid()), Subject: id.ID().String(),
		Outcome: audit.OutcomeFailure, Details: map[string]any{"generation": g.Generation, "backend": strings.SplitN(g.Keystore, ":", 2)[0], "source": source}})
}

// recordOne appends one record to <home>/audit. When the identity key cannot sign (keyErr: its keystore
// refused the secret; the key is not asked again, so no second prompt), the record is appended all the
// same and its checkpoint fails (audit.checkpoint_failed): the next writer with the key signs the head
// over it. When a running agent holds the log, the record is not written, and stderr says so.
func (s *Session) recordOne(ctx context.Context, id *custody.Custody, keyErr error, rec audit.Record) {
	dir := filepath.Join(s.Home, api.AuditDir)
	g := id.Current()
	var signer keystore.Signer
	if keyErr == nil {
		var err error
		if signer, err = id.Signer(ctx); err != nil {
			keyErr = err
		}
	}
	locked := keyErr != nil
	if locked {
		pub, perr := identity.DecodeKey(g.Algorithm, g.PublicKey)
		if perr != nil {
			fmt.Fprintf(s.C.App.ErrWriter, "agentctl: warning: %s not written to the audit log %s: %v\n", rec.Type, dir, perr)
			return
		}
		signer = lockedSigner{pub: pub, err: keyErr}
	}
	l, err := audit.Open(ctx, dir, audit.Options{Signer: signer, Generation: g.Generation, AgentID: id.ID().String(), Logger: s.Log})
	if err == nil {
		_, err = l.Append(ctx, rec)
		if cerr := l.Close(); err == nil && !locked {
			err = cerr // a locked key cannot seal: expected, recorded as audit.checkpoint_failed
		}
	}
	switch {
	case errors.Is(err, audit.ErrLocked):
		fmt.Fprintf(s.C.App.ErrWriter, "agentctl: warning: %s not written to the audit log: the running agent holds it\n", rec.Type)
	case err != nil:
		fmt.Fprintf(s.C.App.ErrWriter, "agentctl: warning: %s not written to the audit log %s: %v\n", rec.Type, dir, err)
	}
}

// lockedSigner stands in for the identity key whose keystore refused its secret: the audit log can take
// records, and every checkpoint signature fails with the keystore's error.
type lockedSigner struct {
	pub keystore.PublicKey
	err error
}

func (l lockedSigner) Public() keystore.PublicKey { return l.pub }
func (l lockedSigner) Sign(context.Context, []byte) ([]byte, error) {
	return nil, fmt.Errorf("the identity key is locked: %w", l.err)
}
