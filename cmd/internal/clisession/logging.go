package clisession

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// Environment variables of the global logging flags (agentctl and custosd).
const (
	EnvLogLevel  = "CUSTOS_LOG_LEVEL"
	EnvLogFormat = "CUSTOS_LOG_FORMAT"
)

// LogFlags are --log-level and --log-format, with their environment variables. defaultLevel is the
// level when neither the flag nor the variable is given.
func LogFlags(defaultLevel, levelUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Usage: levelUsage, EnvVars: []string{EnvLogLevel}, Value: defaultLevel},
		&cli.StringFlag{Name: "log-format", Usage: "log lines as text (key=value) or json (one object a line)", EnvVars: []string{EnvLogFormat}, Value: "text"},
	}
}

// ParseLevel reads a --log-level value ("" is warn: an empty CUSTOS_LOG_LEVEL counts as unset); the
// error says what is accepted.
func ParseLevel(s string) (slog.Level, error) {
	var lv slog.Level
	if s == "" {
		return slog.LevelWarn, nil
	}
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return 0, Usagef("--log-level %q: use debug, info, warn or error (or set %s)", s, EnvLogLevel)
	}
	return lv, nil
}

// NewHandler is the slog handler of --log-format on w.
func NewHandler(w io.Writer, format string, level slog.Leveler) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "", "text":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, Usagef("--log-format %q: use text or json (or set %s)", format, EnvLogFormat)
}

// Version is the module version, the commit and the Go version this binary was built with (short, for
// --version, after the program's name), and the same with the build settings, one "key=value" a line
// (long, for the version command), from the binary's build information.
func Version(name string) (short, long string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		s := fmt.Sprintf("(no build information) %s", runtime.Version())
		return s, name + " " + s + "\n"
	}
	ver := bi.Main.Version
	if ver == "" {
		ver = "(devel)"
	}
	rev, modified := "unknown", ""
	var b strings.Builder
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	short = fmt.Sprintf("%s commit %s%s %s %s/%s", ver, rev, modified, bi.GoVersion, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "%s %s\nmodule:  %s %s\ncommit:  %s%s\ngo:      %s\nbuild:\n", name, short, bi.Main.Path, ver, rev, modified, bi.GoVersion)
	for _, s := range bi.Settings {
		fmt.Fprintf(&b, "  %s=%s\n", s.Key, s.Value)
	}
	return short, b.String()
}
