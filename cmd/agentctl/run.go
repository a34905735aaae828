package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/daemon"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// version is reported by the daemon (status, audit).
var version = "dev"

// defaultConfigName is the configuration file looked for in the home directory.
const defaultConfigName = "agent.yaml"

func runCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "run",
		Usage:        "run the agent daemon: transports, sessions with peers, tasks, and the control socket",
		UsageText:    "agentctl run [--config FILE]",
		Description: "Opens the identity in --home, starts the transport plugins of the configuration (each checked\n" +
			"against its SHA-256), listens, dials the bootstrap peers and keeps an authenticated session with each,\n" +
			"runs and submits tasks, and serves <home>/control.sock for the other agentctl commands.\n\n" +
			"Signals: SIGTERM or SIGINT drains (stops accepting, lets running tasks finish until limits.drain_timeout,\n" +
			"closes sessions, stops plugins) and exits 0; SIGHUP reloads the configuration and the identity (a\n" +
			"rotation made meanwhile) and logs what changed.\n\n" +
			"The configuration format is documented in configs/agent.example.yaml.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "configuration `FILE` (YAML; default <home>/" + defaultConfigName + ")", TakesFile: true},
			passphraseFileFlag(),
		},
		Action: runDaemon,
	}
}

func runDaemon(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("run takes no arguments (got %q)", c.Args().First())
	}
	// Before any secret (passphrase, PIN) is read: no process of this uid may read this one's memory or
	// environment (ADR 0040).
	if err := sandbox.SetNonDumpable(); err != nil {
		return err
	}
	s, err := newSession(c)
	if err != nil {
		return err
	}
	defer s.close()
	cfgPath := c.String("config")
	if cfgPath == "" {
		cfgPath = filepath.Join(s.home, defaultConfigName)
	}
	if cfgPath, err = filepath.Abs(cfgPath); err != nil {
		return usagef("--config: %v", err)
	}
	cfg, digest, err := daemon.LoadConfig(cfgPath)
	if err != nil {
		return err
	}
	// The daemon logs at the configuration's level unless --log-level was given.
	level := new(slog.LevelVar)
	fixed := c.IsSet("log-level")
	if fixed {
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(c.String("log-level"))); err != nil {
			return usagef("--log-level %q: use debug, info, warn or error", c.String("log-level"))
		}
		level.Set(lv)
	}
	logger := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: level}))
	s.log = logger

	// Signals are caught from the start so that a SIGTERM during start-up is not lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx := c.Context
	cust, err := s.openIdentity(ctx)
	if err != nil {
		return err
	}
	defer cust.Close()
	d, err := daemon.Start(ctx, daemon.Options{
		Home: s.home, Config: cfg, ConfigDigest: digest, ConfigPath: cfgPath, Custody: cust,
		Logger: logger, LogLevel: level, LogLevelFixed: fixed, Version: version,
	})
	if err != nil {
		return err
	}
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				if _, err := d.Reload(ctx); err != nil {
					logger.Error("SIGHUP: reload failed", "err", err)
				}
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

// controlPath is the daemon's control socket in the home directory.
func controlPath(c *cli.Context) (string, error) {
	home := c.String("home")
	for _, p := range c.Lineage() {
		if p.IsSet("home") {
			home = p.String("home")
			break
		}
	}
	if home == "" {
		return "", usagef("no agent home: give --home DIR or set CUSTOS_HOME")
	}
	abs, err := filepath.Abs(home)
	if err != nil {
		return "", usagef("--home %q: %v", home, err)
	}
	return filepath.Join(abs, daemon.ControlFile), nil
}

// call sends one control request to the daemon of --home.
func call(c *cli.Context, ctx context.Context, op string, args, result any) error {
	path, err := controlPath(c)
	if err != nil {
		return err
	}
	return control.Call(ctx, path, op, args, result)
}

// trailingFlags splits args into positional arguments and flags given after them (urfave/cli stops
// parsing flags at the first argument). spec maps each accepted flag name to whether it takes a value.
func trailingFlags(args []string, spec map[string]bool) ([]string, map[string]string, error) {
	var pos []string
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		takes, ok := spec[name]
		if !ok {
			return nil, nil, usagef("flag provided but not defined: %s", a)
		}
		switch {
		case takes && !hasVal:
			if i+1 >= len(args) {
				return nil, nil, usagef("flag needs an argument: %s", a)
			}
			i++
			val = args[i]
		case !takes && !hasVal:
			val = "true"
		}
		vals[name] = val
	}
	return pos, vals, nil
}
