package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/cmd/internal/clisession"
)

// The command-line session (keystore backends, secret sources, opening the identity) is shared with
// custosd: cmd/internal/clisession.
type session = clisession.Session

// Environment variables read by the identity commands.
const (
	envPassphrase = clisession.EnvPassphrase
	envTPMDevice  = clisession.EnvTPMDevice
	envWorkFactor = clisession.EnvWorkFactor
)

func newSession(c *cli.Context) (*session, error) { return clisession.New(c) }

func passphraseFileFlag() cli.Flag { return clisession.PassphraseFileFlag() }

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
func onUsageError(_ *cli.Context, err error, _ bool) error { return clisession.AsUsage(err) }

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
	defer s.Close()
	id, err := s.OpenIdentity(c.Context)
	if err != nil {
		return err
	}
	defer id.Close()
	err = fn(s, id)
	s.RecordUnlockFailure(c.Context, id, err, custody.SourceAgentctl) // a wrong PIN or passphrase is audited
	return err
}
