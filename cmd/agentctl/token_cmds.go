package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "token",
		Usage:        "PKCS#11 token provisioning (SoftHSM for development and CI)",
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "init",
			Usage:        "initialise a new token on a free slot and set its PINs, without putting a PIN on a command line",
			UsageText:    "agentctl token init --module PATH --label LABEL --so-pin-source file:/path|env:NAME --pin-source file:/path|env:NAME",
			Description: "C_InitToken with the security officer PIN, then C_InitPIN with the user PIN. For SoftHSM, set\n" +
				"SOFTHSM2_CONF to choose the token directory. Prints the keystore URI to give to agentctl init --pkcs11.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "module", Usage: "absolute `PATH` of the PKCS#11 library", Value: "/usr/lib/softhsm/libsofthsm2.so"},
				&cli.StringFlag{Name: "label", Usage: "token `LABEL` (tokens are always found by label, never by slot)"},
				&cli.StringFlag{Name: "so-pin-source", Usage: "where the security officer PIN is: file:/path or env:NAME"},
				&cli.StringFlag{Name: "pin-source", Usage: "where the user PIN is: file:/path or env:NAME (recorded in the printed URI)"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("token init takes no arguments")
				}
				if err := requireFlags(c, "label", "so-pin-source", "pin-source"); err != nil {
					return err
				}
				module := c.String("module")
				if !filepath.IsAbs(module) {
					return usagef("--module %q: give the absolute path of the PKCS#11 library", module)
				}
				pinSource, err := absSource(c.String("pin-source"))
				if err != nil {
					return usagef("--pin-source: %v", err)
				}
				soSource, err := absSource(c.String("so-pin-source"))
				if err != nil {
					return usagef("--so-pin-source: %v", err)
				}
				so, err := keystore.ReadSecret(soSource)
				if err != nil {
					return fmt.Errorf("--so-pin-source: %w", err)
				}
				defer keystore.Wipe(so)
				user, err := keystore.ReadSecret(pinSource)
				if err != nil {
					return fmt.Errorf("--pin-source: %w", err)
				}
				defer keystore.Wipe(user)
				serial, err := pkcs11.InitToken(c.Context, module, c.String("label"), so, user)
				if err != nil {
					return err
				}
				u := &keystore.URI{Scheme: "pkcs11"}
				u.SetPath("token", c.String("label"))
				u.SetQuery("module-path", module)
				u.SetQuery("pin-source", pinSource)
				fmt.Fprintf(c.App.ErrWriter, "agentctl: initialised token %q (serial %s)\n", c.String("label"), serial)
				fmt.Fprintln(c.App.Writer, u.String())
				return nil
			},
		}},
	}
}

// absSource makes a file: secret source absolute, so the URI it goes into works from any directory.
func absSource(src string) (string, error) {
	kind, ref, ok := strings.Cut(src, ":")
	if !ok || ref == "" || (kind != "file" && kind != "env") {
		return "", fmt.Errorf("%q: use file:/path or env:NAME", src)
	}
	if kind == "file" {
		p, err := filepath.Abs(ref)
		if err != nil {
			return "", err
		}
		return "file:" + p, nil
	}
	return src, nil
}
