// Command custosd is the Custos agent daemon: it opens the identity of --home, starts the transport
// plugins of its configuration, keeps authenticated sessions with peers, runs and submits tasks, and
// serves <home>/control.sock, through which agentctl drives it (agent/api). "agentctl run" executes this
// binary with the same arguments, so either starts the daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/daemon"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/cmd/internal/clisession"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// version is reported by the daemon (status, audit).
var version = "dev"

// defaultConfigName is the configuration file looked for in the home directory.
const defaultConfigName = "agent.yaml"

// Exit codes: 0 success, 1 failure, 2 usage error (as agentctl's).
const (
	exitFailure = 1
	exitUsage   = 2
)

func main() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) }

// run is main without the process.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := newApp(stdin, stdout, stderr).Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "custosd: %v\n", err)
	var ue clisession.UsageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	versionShort, _ := clisession.Version("custosd")
	return &cli.App{
		Name:      "custosd",
		Usage:     "run the agent daemon: transports, sessions with peers, tasks, and the control socket",
		UsageText: "custosd [--home DIR] [--log-level LEVEL] [--config FILE] [--passphrase-file FILE]\n   agentctl [--home DIR] run [--config FILE] [--passphrase-file FILE]",
		Description: "Opens the identity in --home, starts the transport plugins of the configuration (each checked\n" +
			"against its SHA-256), listens, dials the bootstrap peers and keeps an authenticated session with each,\n" +
			"runs and submits tasks, and serves <home>/control.sock for the other agentctl commands.\n\n" +
			"Signals: SIGTERM or SIGINT drains (stops accepting, lets running tasks finish until limits.drain_timeout,\n" +
			"closes sessions, stops plugins) and exits 0; SIGHUP reloads the configuration and the identity (a\n" +
			"rotation made meanwhile) and logs what changed.\n\n" +
			"The configuration format is documented in configs/agent.example.yaml.",
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "home", Usage: "agent state directory (mode 0700)", EnvVars: []string{"CUSTOS_HOME"}, Value: defaultHome()},
			clisession.LogFlags("warn", "debug, info, warn or error (default: the configuration's)")[0],
			clisession.LogFlags("warn", "")[1],
			&cli.StringFlag{Name: "config", Usage: "configuration `FILE` (YAML; default <home>/" + defaultConfigName + ")", TakesFile: true},
			clisession.PassphraseFileFlag(),
		},
		Version:         versionShort,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run() prints and picks the exit code
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return clisession.AsUsage(err)
		},
		Action: runDaemon,
	}
}

func defaultHome() string {
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.custos"
	}
	return ".custos"
}

func runDaemon(c *cli.Context) error {
	if c.NArg() > 0 {
		return clisession.Usagef("run takes no arguments (got %q)", c.Args().First())
	}
	// Before any secret (passphrase, PIN) is read: no process of this uid may read this one's memory or
	// environment (ADR 0040). (agentctl run executes this binary; execve resets the flag, so it is set here.)
	if err := sandbox.SetNonDumpable(); err != nil {
		return err
	}
	s, err := clisession.New(c)
	if err != nil {
		return err
	}
	defer s.Close()
	cfgPath := c.String("config")
	if cfgPath == "" {
		cfgPath = filepath.Join(s.Home, defaultConfigName)
	}
	if cfgPath, err = filepath.Abs(cfgPath); err != nil {
		return clisession.Usagef("--config: %v", err)
	}
	cfg, digest, err := config.LoadConfig(cfgPath)
	if err != nil {
		return err
	}
	// The daemon logs at the configuration's level unless --log-level was given.
	level := new(slog.LevelVar)
	fixed := c.IsSet("log-level") && c.String("log-level") != "" // an empty CUSTOS_LOG_LEVEL is unset
	if fixed {
		lv, err := clisession.ParseLevel(c.String("log-level"))
		if err != nil {
			return err
		}
		level.Set(lv)
	}
	handler, err := clisession.NewHandler(c.App.ErrWriter, c.String("log-format"), level)
	if err != nil {
		return err
	}
	logger := slog.New(handler)
	s.Log = logger

	// Signals are caught from the start so that a SIGTERM during start-up is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx := c.Context
	// Every keystore operation of the running agent is timed and its failures counted
	// (custos_keystore_*): the metrics exist before the identity is opened.
	m := metrics.New()
	s.WrapKeystore = func(ks keystore.Keystore) keystore.Keystore { return metrics.InstrumentKeystore(ks, m) }
	cust, err := s.OpenIdentity(ctx)
	if err != nil {
		return err
	}
	defer cust.Close()
	d, err := daemon.Start(ctx, daemon.Options{
		Home: s.Home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust,
		Logger: logger, LogLevel: level, LogLevelFixed: fixed, Version: version, Metrics: m,
	})
	if err != nil {
		s.RecordUnlockFailure(ctx, cust, err, "custosd") // a wrong PIN or passphrase is audited
		return err
	}
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				// Reload logs and audits its own refusal (once: issue 18, defect 7); the daemon runs on
				// with the configuration it had.
				_, _ = d.Reload(ctx)
			default:
				logger.Info("signal received: draining", "signal", sig.String(), "deadline", cfg.Limits.DrainTimeout)
				dctx, cancel := context.WithTimeout(context.Background(), d.DrainTimeout())
				err := d.Shutdown(dctx)
				cancel()
				if err != nil {
					return fmt.Errorf("shutdown: %w", err)
				}
				logger.Info("stopped")
				return nil
			}
		case <-d.Done():
			return errors.New("the daemon stopped")
		}
	}
}
