package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
)

// daemonBinary is the agent daemon's executable (cmd/custosd), which agentctl run executes.
const daemonBinary = "custosd"

func runCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "run",
		Usage:        "run the agent daemon: transports, sessions with peers, tasks, and the control socket",
		UsageText:    "agentctl run [--config FILE] [--passphrase-file FILE]",
		Description: "Executes " + daemonBinary + ", the agent daemon (the one beside this agentctl, else the one in $PATH),\n" +
			"in place of this process (same pid, same environment) with --home, --log-level, --log-format and the arguments\n" +
			"after run: 'agentctl run --help' shows its flags. The daemon opens the identity in --home, starts the\n" +
			"transport plugins of the configuration, keeps sessions with peers, runs and submits tasks, and serves\n" +
			"<home>/control.sock for the other agentctl commands. SIGTERM or SIGINT drains and exits 0; SIGHUP\n" +
			"reloads the configuration and the identity.",
		SkipFlagParsing: true, // the daemon parses them
		Action:          execDaemon,
	}
}

// execDaemon replaces this process with the daemon: argv is the daemon's path, the global --home and
// --log-level when given, and every argument after run, unchanged.
func execDaemon(c *cli.Context) error {
	exe, err := os.Executable()
	if err != nil {
		exe = ""
	}
	bin, err := locateDaemon(exe, exec.LookPath)
	if err != nil {
		return err
	}
	argv := []string{bin}
	for _, name := range []string{"home", "log-level", "log-format"} {
		for _, p := range c.Lineage() {
			if p.IsSet(name) {
				argv = append(argv, "--"+name+"="+p.String(name))
				break
			}
		}
	}
	argv = append(argv, c.Args().Slice()...)
	if err := syscall.Exec(bin, argv, os.Environ()); err != nil {
		return fmt.Errorf("execute the agent daemon %s: %w", bin, err)
	}
	return nil // not reached
}

// locateDaemon finds the daemon binary: beside the agentctl executable exe (the one it was built and
// installed with), else in $PATH (lookPath).
func locateDaemon(exe string, lookPath func(string) (string, error)) (string, error) {
	beside := ""
	if exe != "" {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		beside = filepath.Join(filepath.Dir(exe), daemonBinary)
		if fi, err := os.Stat(beside); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return beside, nil
		}
	}
	p, err := lookPath(daemonBinary)
	if err == nil {
		return p, nil
	}
	if beside == "" {
		beside = "(the agentctl executable's directory is unknown)"
	}
	return "", fmt.Errorf("the agent daemon %s is neither beside agentctl (%s) nor in $PATH (%v): install it with agentctl (go build ./cmd/... builds both)", daemonBinary, beside, err)
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
	return filepath.Join(abs, api.ControlFile), nil
}

// daemonClient is the control API client of the daemon of --home.
func daemonClient(c *cli.Context) (*api.Client, error) {
	path, err := controlPath(c)
	if err != nil {
		return nil, err
	}
	return api.NewClient(path), nil
}
