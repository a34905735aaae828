package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/internal/atomicfile"
)

// pluginDirs are where config init looks for the transport plugins when --plugin-dir is not given:
// beside the agentctl executable (a build tree: go build -o bin/ ./cmd/...), then where the package
// installs them.
var pluginDirs = []string{"/usr/lib/custos", "/usr/local/lib/custos"}

// transportNames are the plugins config init looks for, in the order it writes them.
var transportNames = []string{"tcp", "ws", "libp2p"}

func configCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "config",
		Usage:        "write a working daemon configuration (config init)",
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "init",
			Usage:        "write <home>/agent.yaml: loopback, the installed plugins with their SHA-256, this agent as its own administrator",
			UsageText:    "agentctl config init [--listen ADDR] [--metrics ADDR] [--plugin-dir DIR] [--admin ID]... [--out FILE] [--force]",
			Description: "Writes a configuration that 'agentctl run' starts as written: the tcp transport listening on\n" +
				"--listen (loopback by default), every transport plugin found in --plugin-dir (default: beside this\n" +
				"agentctl, else /usr/lib/custos) by absolute path with the SHA-256 of the file there now, Prometheus\n" +
				"metrics on --metrics, and authorization.admins listing this agent (so that 'agentctl grant' on it\n" +
				"gives roles its peers can use here) plus every --admin. Peers get no role without a grant\n" +
				"(authorization.default_peer_roles: []). After replacing a plugin binary, run it again with --force:\n" +
				"the daemon refuses a plugin whose digest changed. configs/agent.example.yaml explains every option.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "listen", Usage: "tcp listen `ADDRESS` (host:port; 0.0.0.0:7400 to be reachable from other hosts)", Value: "127.0.0.1:7400"},
				&cli.StringFlag{Name: "metrics", Usage: "Prometheus `ADDRESS` (host:port)", Value: "127.0.0.1:9464"},
				&cli.StringFlag{Name: "plugin-dir", Usage: "`DIR` holding transport-tcp, transport-ws, transport-libp2p", TakesFile: true},
				&cli.StringSliceFlag{Name: "admin", Usage: "another administrator's agent `ID` (repeat for more)"},
				&cli.StringFlag{Name: "out", Usage: "write to `FILE` instead of <home>/agent.yaml (- for stdout)", TakesFile: true},
				&cli.BoolFlag{Name: "force", Usage: "replace an existing file"},
				// For a package's example configuration (make package, ADR 0088): digests of the plugins
				// built in --plugin-dir, paths where the package installs them, no identity yet.
				&cli.StringFlag{Name: "install-dir", Usage: "write the plugin paths as `DIR`/transport-NAME (where they will be installed) while the digests are of the files in --plugin-dir", TakesFile: true},
				&cli.BoolFlag{Name: "no-identity", Usage: "do not open the identity: authorization.admins lists only --admin (a configuration written before init, e.g. a package's example)"},
			},
			Action: runConfigInit,
		}},
	}
}

func runConfigInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("config init takes no arguments (got %q)", c.Args().Slice())
	}
	dir, err := findPluginDir(c.String("plugin-dir"))
	if err != nil {
		return err
	}
	var admins []string
	if !c.Bool("no-identity") {
		var self string
		if err := withIdentity(c, func(_ *session, id *custody.Custody) error {
			self = id.State().ID.String()
			return nil
		}); err != nil {
			return fmt.Errorf("config init lists this agent as an administrator, so it needs the identity (or give --no-identity): %w", err)
		}
		admins = append(admins, self)
	}
	admins = append(admins, c.StringSlice("admin")...)
	installDir := dir
	if d := c.String("install-dir"); d != "" {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d {
			return usagef("--install-dir %q: give a clean absolute directory (the daemon launches plugins by absolute path only)", d)
		}
		installDir = d
	}
	text, err := renderConfig(dir, installDir, c.String("listen"), c.String("metrics"), admins)
	if err != nil {
		return err
	}
	if _, err := config.ParseConfig([]byte(text)); err != nil {
		return fmt.Errorf("the generated configuration does not load (a bug, or a bad --listen/--metrics/--admin): %w", err)
	}
	out := c.String("out")
	if out == "-" {
		_, err := io.WriteString(c.App.Writer, text)
		return err
	}
	if out == "" {
		home, err := homeDir(c)
		if err != nil {
			return err
		}
		out = filepath.Join(home, "agent.yaml")
	}
	if c.Bool("force") {
		err = atomicfile.Replace(out, []byte(text), nil)
	} else {
		err = atomicfile.Create(out, []byte(text))
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists: give --force to replace it, or --out FILE", out)
	}
	if err != nil {
		return fmt.Errorf("write the configuration: %w", err)
	}
	fmt.Fprintf(c.App.ErrWriter, "wrote %s (plugins from %s; tcp listens on %s); start the daemon with: agentctl --home %s run\n",
		out, dir, c.String("listen"), shellQuote(filepath.Dir(out)))
	return nil
}

// findPluginDir is --plugin-dir, or the first of: the agentctl executable's directory, pluginDirs, that
// holds transport-tcp.
func findPluginDir(flag string) (string, error) {
	var tried []string
	try := func(d string) bool {
		tried = append(tried, d)
		fi, err := os.Stat(filepath.Join(d, "transport-tcp"))
		return err == nil && fi.Mode().IsRegular()
	}
	if flag != "" {
		abs, err := filepath.Abs(flag)
		if err != nil {
			return "", usagef("--plugin-dir %q: %v", flag, err)
		}
		if !try(abs) {
			return "", fmt.Errorf("--plugin-dir %s holds no transport-tcp: give the directory the plugins were built or installed to", abs)
		}
		return abs, nil
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		if d := filepath.Dir(exe); try(d) {
			return d, nil
		}
	}
	for _, d := range pluginDirs {
		if try(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no transport plugins found (looked for transport-tcp in %s): build them (go build -o bin/ ./cmd/...) or install the package, or give --plugin-dir", strings.Join(tried, ", "))
}

// renderConfig is the text of a configuration: every plugin of dir with its digest, named by its path in
// installDir (dir itself unless packaging), tcp listening on listen.
func renderConfig(dir, installDir, listen, metrics string, admins []string) (string, error) {
	var b strings.Builder
	b.WriteString("# Written by 'agentctl config init'. configs/agent.example.yaml explains every option.\n")
	b.WriteString("# The plugins are started only if their SHA-256 matches: after replacing one, run config init --force.\n")
	b.WriteString("transports:\n")
	for _, t := range transportNames {
		p := filepath.Join(dir, "transport-"+t)
		raw, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) && t != "tcp" {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read the plugin %s: %w", p, err)
		}
		sum := sha256.Sum256(raw)
		fmt.Fprintf(&b, "  - name: %s\n    plugin: %s\n    sha256: %s\n", t, yamlQuote(filepath.Join(installDir, "transport-"+t)), hex.EncodeToString(sum[:]))
		if t == "tcp" {
			fmt.Fprintf(&b, "    listen: [%s]\n", yamlQuote(listen))
		} else {
			b.WriteString("    # dial only; add listen: [...] to accept connections on it\n")
		}
	}
	b.WriteString("handlers:\n  echo: {builtin: echo}\n  sha256: {builtin: sha256}\n")
	fmt.Fprintf(&b, "metrics:\n  address: %s\n", yamlQuote(metrics))
	b.WriteString("log:\n  level: info\n")
	b.WriteString("authorization:\n")
	if len(admins) == 0 { // --no-identity
		b.WriteString("  # Grants signed by these agents count here. None yet: after 'agentctl init', list this agent's ID\n")
		b.WriteString("  # ('agentctl id -q'); then 'agentctl grant --to PEER_ID --role ROLE' on it signs grants its peers install.\n")
		b.WriteString("  admins: []\n")
	} else {
		b.WriteString("  # Grants signed by these agents count here. This agent is one: 'agentctl grant --to PEER_ID --role ROLE'\n")
		b.WriteString("  # on it signs a grant the peer installs with 'agentctl grant install FILE'.\n")
		b.WriteString("  admins:\n")
	}
	for _, a := range admins {
		fmt.Fprintf(&b, "    - %s\n", yamlQuote(a))
	}
	b.WriteString("  # A peer without a grant may only answer this agent's requests ([task_submitter]: anyone may submit).\n")
	b.WriteString("  default_peer_roles: []\n")
	return b.String(), nil
}

// yamlQuote is s as a double-quoted YAML scalar.
func yamlQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// shellQuote is s quoted for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=@,+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// homeDir is --home, absolute.
func homeDir(c *cli.Context) (string, error) {
	p, err := controlPath(c)
	if err != nil {
		return "", err
	}
	return filepath.Dir(p), nil
}
