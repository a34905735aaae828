// Command agentctl is the one command-line tool of Custos: it makes and rotates an agent's identity in a
// TPM, a PKCS#11 token or (for development) an encrypted key file, signs and verifies, runs the agent
// daemon, and reads the audit log.
//
// Adding a command: write a function returning a *cli.Command (Name, Usage, UsageText, Description, Flags,
// Action; OnUsageError: onUsageError) in a file of its own, and list it in commands() below. Flags may be
// given before or after the arguments of every command (flagsFirst, ADR 0079): do not parse c.Args() for
// flags. Return usagef(...) for a usage error (exit 2); docs/cli.md is generated from these definitions
// (go test ./cmd/agentctl -run TestCLIDoc -update rewrites it).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/cmd/internal/clisession"
)

// Exit codes: 0 success, 1 failure, 2 usage error.
const (
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error as a usage error (exit 2).
// (clisession's, which custosd shares).
type usageError = clisession.UsageError

func usagef(format string, args ...any) error { return clisession.Usagef(format, args...) }

func main() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) }

// run is main without the process: tests call it in-process (testscript).
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	var unknown string
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	err := app.Run(flagsFirst(app, args))
	if err == nil && unknown != "" {
		err = usagef("unknown command %q; run 'agentctl --help' for the list", unknown)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "agentctl: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	short, _ := clisession.Version("agentctl")
	app := &cli.App{
		Name:  "agentctl",
		Usage: "hardware-backed key custody agent for peer-to-peer AI agents",
		Description: "Custos keeps each agent's identity key in a TPM 2.0 or a PKCS#11 token (a passphrase-encrypted\n" +
			"file for development) and never lets it out. Start with 'agentctl init', see 'agentctl id'.\n" +
			"Secrets (PINs, passphrases, TPM passwords) are read from files or named environment variables,\n" +
			"never from the command line.",
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "home", Usage: "agent state directory (mode 0700)", EnvVars: []string{"CUSTOS_HOME"}, Value: defaultHome()},
			clisession.LogFlags("warn", "debug, info, warn or error")[0],
			clisession.LogFlags("warn", "")[1],
		},
		Version:        short,
		Commands:       commands(),
		Before:         checkGlobalFlags,
		ExitErrHandler: func(*cli.Context, error) {}, // run() prints and picks the exit code
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return clisession.AsUsage(err)
		},
	}
	return app
}

// commands lists every subcommand; each lives in a file of its own.
func commands() []*cli.Command {
	return []*cli.Command{
		initCommand(), idCommand(), keysCommand(), rotateCommand(), recoverCommand(), logCommand(), signCommand(), verifyCommand(), tokenCommand(),
		auditCommand(),
		runCommand(), statusCommand(), peersCommand(), taskCommand(), feedbackCommand(),
		grantCommand(), revokeCommand(),
		configCommand(), versionCommand(), completionCommand(),
		gatewayCommand(), dataCommand(), compactCommand(),
		backupCommand(), restoreCommand(),
	}
}

// checkGlobalFlags refuses a bad --log-level or --log-format (or CUSTOS_LOG_LEVEL, CUSTOS_LOG_FORMAT)
// before any command runs: a usage error naming the accepted values.
func checkGlobalFlags(c *cli.Context) error {
	if _, err := clisession.ParseLevel(c.String("log-level")); err != nil {
		return err
	}
	_, err := clisession.NewHandler(io.Discard, c.String("log-format"), nil)
	return err
}

func defaultHome() string {
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.custos"
	}
	return ".custos"
}
