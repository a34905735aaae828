package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host/sandbox"
	pb "github.com/custos-agent/custos/transports/proto"
)

// ErrChecksum: the plugin binary's SHA-256 digest is not the configured one; the plugin was not started.
var ErrChecksum = errors.New("plugin checksum mismatch")

// ErrBadPluginFile: the plugin path is not absolute, not a regular file, writable by others, or owned by
// another user than root or the agent's.
var ErrBadPluginFile = errors.New("unacceptable plugin file")

// FileSHA256 returns the hex SHA-256 digest of the file at path (what Config.SHA256 expects).
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkPluginPath refuses what must never be executed as a plugin.
func checkPluginPath(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: plugin path %q is not absolute (plugins are launched by absolute path only)", ErrBadPluginFile, path)
	}
	if filepath.Clean(path) != path {
		return fmt.Errorf("%w: plugin path %q is not clean (want %q)", ErrBadPluginFile, path, filepath.Clean(path))
	}
	return nil
}

// fdRunner is a go-plugin runner that executes exactly the bytes it hashed: it opens the plugin file,
// checks its SHA-256 with go-plugin's SecureConfig (a fresh hash for this launch) through
// /proc/self/fd/N, then executes that same open file (fexecve style), so the file cannot be swapped
// between the check and the exec. The child gets /dev/null as stdin (never the host's terminal) and only
// the environment go-plugin and the host's Config.Env give it.
type fdRunner struct {
	path      string
	want      []byte
	cmd       *exec.Cmd
	log       hclog.Logger
	sb        sandbox.Options
	socketDir string

	launch *sandbox.Launch
	prot   sandbox.Protections

	stdout, stderr io.ReadCloser
	pid            int
	data           *os.File // host end of the data control socket (dataplane.go), nil without one
	mu             sync.Mutex
}

func newFDRunner(path string, want []byte, template *exec.Cmd, extraEnv []string, log hclog.Logger, sb sandbox.Options, socketDir string) *fdRunner {
	env := append([]string(nil), template.Env...)
	env = append(env, extraEnv...)
	cmd := &exec.Cmd{Args: []string{path}, Env: env}
	sb.SocketDir, sb.Path = socketDir, path
	return &fdRunner{path: path, want: want, cmd: cmd, log: log, sb: sb, socketDir: socketDir}
}

func (r *fdRunner) Start(ctx context.Context) error {
	f, err := os.Open(r.path)
	if err != nil {
		return fmt.Errorf("open plugin %s: %w", r.path, err)
	}
	defer func() { _ = f.Close() }() // the child holds its own copy
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat plugin %s: %w", r.path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrBadPluginFile, r.path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%w: %s is writable by group or others (mode %v); chmod go-w it", ErrBadPluginFile, r.path, fi.Mode().Perm())
	}
	if uid, ok := fileOwner(fi); ok && uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%w: %s is owned by uid %d, neither root nor the agent's uid %d (who owns the file can replace it); chown it",
			ErrBadPluginFile, r.path, uid, os.Geteuid())
	}
	fdPath := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	sc := &goplugin.SecureConfig{Checksum: r.want, Hash: sha256.New()}
	ok, err := sc.Check(fdPath)
	if err != nil {
		return fmt.Errorf("hash plugin %s: %w", r.path, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s has SHA-256 %s, configured %s; not started (rebuild or reconfigure the checksum)",
			ErrChecksum, r.path, hex.EncodeToString(sc.Hash.Sum(nil)), hex.EncodeToString(r.want))
	}
	// The child receives the hashed open file as fd 3 and the kernel executes it from there, and the
	// plugin end of the data control socket as fd 4 (transports.DataFDEnv).
	r.cmd.Path = "/proc/self/fd/3"
	r.cmd.ExtraFiles = []*os.File{f}
	if hostEnd, plugEnd, err := socketPair(syscall.SOCK_SEQPACKET); err == nil {
		defer func() { _ = plugEnd.Close() }()
		r.cmd.ExtraFiles = append(r.cmd.ExtraFiles, plugEnd)
		r.cmd.Env = append(r.cmd.Env, transports.DataFDEnv+"=4")
		r.mu.Lock()
		r.data = hostEnd
		r.mu.Unlock()
	}
	r.cmd.Stdin = nil
	setProcAttr(r.cmd)
	dropData := func() {
		if d := r.takeData(); d != nil {
			_ = d.Close()
		}
	}
	// The sandbox (ADR 0040): the command becomes the trampoline, which confines itself and then
	// executes descriptor 3.
	launch, err := sandbox.Wrap(r.cmd, r.sb)
	if err != nil {
		dropData()
		return fmt.Errorf("transport plugin %s: %w", r.path, err)
	}
	ownProcessGroup(r.cmd)
	if r.stdout, err = r.cmd.StdoutPipe(); err != nil {
		launch.Abort()
		dropData()
		return err
	}
	if r.stderr, err = r.cmd.StderrPipe(); err != nil {
		launch.Abort()
		dropData()
		return err
	}
	if err := launch.Start(r.cmd); err != nil {
		launch.Abort()
		dropData()
		return fmt.Errorf("start plugin %s: %w", r.path, err)
	}
	prot := sandbox.Protections{Off: true, UID: os.Getuid(), GID: os.Getgid()}
	if launch != nil {
		if prot, err = launch.Started(ctx); err != nil {
			_ = r.cmd.Process.Kill()
			_ = r.cmd.Wait()
			launch.Cleanup()
			dropData()
			return fmt.Errorf("transport plugin %s: %w", r.path, err)
		}
	}
	r.mu.Lock()
	r.pid = r.cmd.Process.Pid
	r.launch, r.prot = launch, prot
	r.mu.Unlock()
	return nil
}

// protections reports what confines the started process.
func (r *fdRunner) protections() sandbox.Protections {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.prot
}

// takeData hands over the host end of the data control socket (once).
func (r *fdRunner) takeData() *os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.data
	r.data = nil
	return d
}

func (r *fdRunner) Diagnose(context.Context) string {
	return "the plugin did not complete the go-plugin handshake: is " + r.path + " a Custos transport plugin built for this machine?"
}
func (r *fdRunner) Stdout() io.ReadCloser { return r.stdout }
func (r *fdRunner) Stderr() io.ReadCloser { return r.stderr }
func (r *fdRunner) Name() string          { return r.path }
func (r *fdRunner) Wait(context.Context) error {
	err := r.cmd.Wait()
	r.mu.Lock()
	l := r.launch
	r.mu.Unlock()
	l.Cleanup()
	return err
}
func (r *fdRunner) PluginToHost(n, a string) (string, string, error) { return n, a, nil }
func (r *fdRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }
func (r *fdRunner) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pid == 0 {
		return ""
	}
	return strconv.Itoa(r.pid)
}
func (r *fdRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

// clientPlugin is the host half of the go-plugin plugin: it captures the gRPC connection.
type clientPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

type rpcHandle struct {
	conn *grpc.ClientConn
	rpc  pb.TransportClient
}

func (clientPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the host side serves nothing")
}

func (clientPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &rpcHandle{conn: c, rpc: pb.NewTransportClient(c)}, nil
}

// newClient prepares (does not start) a go-plugin client for cfg with the hardening of DESIGN 5:
// AutoMTLS, SkipHostEnv with an explicit environment, the fd-bound checksum check, gRPC only.
func newClient(cfg *Config, want []byte) (*goplugin.Client, *runnerRef) {
	hlog := newHCLogger(cfg.Logger, "plugin-"+cfg.Name)
	ref := &runnerRef{}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  transports.ProtocolVersion,
			MagicCookieKey:   transports.MagicCookieKey,
			MagicCookieValue: transports.MagicCookieValue,
		},
		Plugins:          goplugin.PluginSet{transports.PluginName: clientPlugin{}},
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		SkipHostEnv:      true,
		Logger:           hlog,
		StartTimeout:     cfg.StartTimeout,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(transports.MaxGRPCMessage), grpc.MaxCallSendMsgSize(transports.MaxGRPCMessage),
			grpc.ForceCodecV2(transports.GRPCCodec())),
			grpc.WithInitialWindowSize(transports.GRPCStreamWindow), grpc.WithInitialConnWindowSize(transports.GRPCConnWindow),
			experimental.WithBufferPool(transports.GRPCBufferPool())},
		RunnerFunc: func(l hclog.Logger, template *exec.Cmd, socketDir string) (runner.Runner, error) {
			fr := newFDRunner(cfg.Path, want, template, cfg.Env, l, cfg.sandboxOptions(), socketDir)
			ref.mu.Lock()
			ref.r = fr
			ref.mu.Unlock()
			return fr, nil
		},
	})
	return client, ref
}

// runnerRef learns the runner go-plugin creates.
type runnerRef struct {
	mu sync.Mutex
	r  *fdRunner
}

// kill sends SIGKILL to the process, if one was started.
func (r *runnerRef) kill() {
	r.mu.Lock()
	fr := r.r
	r.mu.Unlock()
	if fr != nil {
		_ = fr.Kill(context.Background())
	}
}

// takeData hands over the host end of the data control socket of the started process, nil if none.
func (r *runnerRef) takeData() *os.File {
	r.mu.Lock()
	fr := r.r
	r.mu.Unlock()
	if fr == nil {
		return nil
	}
	return fr.takeData()
}

// protections reports what confines the started process.
func (r *runnerRef) protections() sandbox.Protections {
	r.mu.Lock()
	fr := r.r
	r.mu.Unlock()
	if fr == nil {
		return sandbox.Protections{}
	}
	return fr.protections()
}

// pid is the started process's ID, 0 if none.
func (r *runnerRef) pid() int {
	r.mu.Lock()
	fr := r.r
	r.mu.Unlock()
	if fr == nil {
		return 0
	}
	n, _ := strconv.Atoi(fr.ID())
	return n
}

// hcWriter turns hclog's JSON lines (go-plugin's own logs and the plugin's forwarded stderr) into slog
// records.
type hcWriter struct{ log *slog.Logger }

func (w hcWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			w.log.Debug(string(line))
			continue
		}
		msg, _ := m["@message"].(string)
		lvl, _ := m["@level"].(string)
		var attrs []any
		for k, v := range m {
			if !strings.HasPrefix(k, "@") && k != "timestamp" {
				attrs = append(attrs, k, v)
			}
		}
		var l slog.Level
		switch lvl {
		case "trace", "debug":
			l = slog.LevelDebug
		case "warn":
			l = slog.LevelWarn
		case "error":
			l = slog.LevelError
		default:
			l = slog.LevelInfo
		}
		w.log.Log(context.Background(), l, msg, attrs...)
	}
	return len(p), nil
}

func newHCLogger(log *slog.Logger, name string) hclog.Logger {
	level := hclog.Info
	if log.Enabled(context.Background(), slog.LevelDebug) {
		level = hclog.Debug // also forwards the plugin's unstructured stderr (panics, race reports)
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Output: hcWriter{log: log}, JSONFormat: true, Level: level})
}
