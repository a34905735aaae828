package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrNotLoopback: the metrics address is not a loopback address and non-loopback was not allowed.
var ErrNotLoopback = errors.New("metrics address is not loopback")

// DefaultAddr is where the agent serves metrics unless configured otherwise.
const DefaultAddr = "127.0.0.1:9464"

// ServeOptions configure the metrics endpoint.
type ServeOptions struct {
	// Addr is host:port; the host must be a loopback IP address or "localhost" unless AllowNonLoopback.
	// Port 0 picks a free port (see Server.Addr).
	Addr string
	// AllowNonLoopback permits any address. Metrics reveal traffic patterns and peer counts: expose them
	// beyond the host only behind something that authenticates the scraper.
	AllowNonLoopback bool
	// Logger receives serving errors (default slog.Default()).
	Logger *slog.Logger
}

// Server is a running /metrics endpoint.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// CheckAddr validates a metrics address: host:port with a loopback host, unless allowNonLoopback.
func CheckAddr(addr string, allowNonLoopback bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: %v (use host:port, e.g. %s)", addr, err, DefaultAddr)
	}
	if port == "" {
		return fmt.Errorf("metrics address %q has no port (use host:port, e.g. %s)", addr, DefaultAddr)
	}
	if allowNonLoopback {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	// The advice names only what an operator can set (issue 18, defect 6): the daemon's configuration has
	// no way to serve metrics beyond loopback.
	const todo = "custosd serves metrics on loopback only (they reveal traffic patterns): use 127.0.0.1:PORT or [::1]:PORT, " +
		"put a reverse proxy with authentication in front of it to scrape from another host, or set metrics.disabled: true"
	ip := net.ParseIP(host)
	switch {
	case host == "":
		return fmt.Errorf("%w: %q listens on every interface; %s", ErrNotLoopback, addr, todo)
	case ip == nil:
		return fmt.Errorf("%w: %q names a host, not a loopback IP address; %s", ErrNotLoopback, addr, todo)
	case !ip.IsLoopback():
		return fmt.Errorf("%w: %s is not a loopback address; %s", ErrNotLoopback, host, todo)
	}
	return nil
}

// Serve checks the address, listens, and serves m's registry at /metrics (nothing else) until ctx ends
// or Close is called.
func Serve(ctx context.Context, m *Metrics, opts ServeOptions) (*Server, error) {
	if m == nil {
		return nil, errors.New("metrics: Serve needs metrics (metrics.New)")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := CheckAddr(opts.Addr, opts.AllowNonLoopback); err != nil {
		return nil, err
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", opts.Addr, err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() && !opts.AllowNonLoopback {
		ln.Close() // "localhost" resolved to something else
		return nil, fmt.Errorf("%w: %s resolved to %s", ErrNotLoopback, opts.Addr, a.IP)
	}
	if opts.AllowNonLoopback {
		if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			opts.Logger.Warn("metrics served beyond loopback; put an authenticating proxy in front", "addr", ln.Addr().String())
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(opts.Logger.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       10 * time.Second,
	}))
	s := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(opts.Logger.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			opts.Logger.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the full URL of the metrics endpoint.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() + "/metrics" }

// Close stops the server (waiting up to 5 s for scrapes in progress).
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}
