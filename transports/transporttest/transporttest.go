// Package transporttest is the conformance suite every transport passes (in the manner of SPIRE's
// keymanagertest and tailscale's tailchonk test suite): a transport's test calls Run with a Factory that
// makes fresh endpoints of the transport under test. The plugin transports (tcp, ws, libp2p) run it through
// the real plugin host and its subprocesses (transports/host/hosttest.Factory); the in-memory transport
// (transports/memory) runs it in process.
//
// The cases, each a subtest of Run:
//
//   - FramesBothWays: both ends learn the other's agent ID, the transport name and a remote address;
//     frames of 5 bytes, 0 bytes, 1 KiB, 64 KiB and transports.MaxFrameSize arrive intact and in order
//     both ways; a frame above MaxFrameSize is refused with transports.ErrFrameTooLarge; a graceful close
//     delivers the last frame, then io.EOF to the peer and transports.ErrClosed to the closed end.
//   - WrongExpectedIDRefused: a dial that expects another agent than the one listening fails with
//     transports.ErrPeerMismatch naming both agent IDs; the same dial expecting the right agent succeeds.
//   - HostEnvironmentNotInherited (needs Caps.Process): the plugin process's environment holds the
//     go-plugin handshake cookie and none of the host's (secrets, PATH, HOME).
//   - RestartAfterSIGKILL (needs Caps.Process): after SIGKILL of the plugin process, the host restarts it
//     (one restart event, a new pid), both ends of the old connection end, and the same listener accepts
//     a new dial that carries frames both ways.
//
// A case that needs a capability the Factory does not declare is skipped with t.Skip, saying which
// capability is missing, never passed silently. The in-memory transport declares none: it has no plugin
// process to inherit an environment or to be killed. The TLS binding of the tcp and ws transports (TLS 1.3
// only, client certificates, the binding checked against the certificate key) is each transport's own
// test (transports/tcp, transports/ws), not a case here: the in-memory transport carries no TLS.
//
// Exchange, ExpectEnd and Frame are the helpers the cases use, for transports' own tests too; Stream and
// BenchSizes are what the transport benchmarks drive.
package transporttest

import (
	"context"
	"testing"
)

// Conn is one end of a connection of the transport under test.
type Conn interface {
	FrameConn
	Close() error
	// Transport is the transport's name (Factory.Name).
	Transport() string
	// RemoteAddr is the peer's address, never "".
	RemoteAddr() string
	// PeerAgentID is the agent at the other end.
	PeerAgentID() string
}

// Listener delivers the inbound connections to its addresses.
type Listener interface {
	Addrs() []string
	Accept(ctx context.Context) (Conn, error)
	Close() error
}

// Endpoint is one agent's attachment to the transport under test: it listens and dials as that agent.
type Endpoint interface {
	AgentID() string
	Listen(ctx context.Context, addr string) (Listener, error)
	// Dial connects to addr; expect is the agent ID that must be listening there.
	Dial(ctx context.Context, addr, expect string) (Conn, error)
}

// Process is what an Endpoint of a transport with Caps.Process also does: it runs the transport in a
// plugin subprocess and restarts it when it dies.
type Process interface {
	// PID is the plugin process now running.
	PID() int
	// Restarts counts the plugin's restarts so far.
	Restarts() uint64
	// Restarted delivers an event for each restart.
	Restarted() <-chan Restart
}

// Restart is one restart of a plugin process.
type Restart struct {
	// Restarts is the number of restarts so far, this one included.
	Restarts uint64
	// PID is the new process.
	PID int
}

// Network is where the endpoints of one case meet (the in-memory transport's Network; the loopback
// interface for the plugin transports).
type Network interface {
	// Endpoint starts the endpoint of a fresh agent, to be stopped when t ends.
	Endpoint(t *testing.T) Endpoint
	// OtherAgentID is a well-formed agent ID that no endpoint of the network speaks for.
	OtherAgentID(t *testing.T) string
}

// Caps are what a transport can be tested for beyond what every transport passes.
type Caps struct {
	// Process: each endpoint runs the transport in a plugin subprocess and implements Process. Cases
	// HostEnvironmentNotInherited and RestartAfterSIGKILL need it.
	Process bool
}

// Factory tells the suite how to make the transport under test.
type Factory struct {
	// Name is the transport name its connections report.
	Name string
	// ListenAddr is the address the cases listen on ("127.0.0.1:0", "/ip4/127.0.0.1/tcp/0"; "" where
	// the transport picks one).
	ListenAddr string
	// New makes a fresh network for one case.
	New func(t *testing.T) Network
	// Caps declares the transport's capabilities; cases that need one it lacks are skipped.
	Caps Caps
}

// Run runs every case of the suite against the transport f makes.
func Run(t *testing.T, f Factory) {
	if f.Name == "" || f.New == nil {
		t.Fatalf("transporttest.Run: the Factory needs a Name and New (got %+v)", f)
	}
	t.Run("FramesBothWays", func(t *testing.T) { testFramesBothWays(t, f) })
	t.Run("WrongExpectedIDRefused", func(t *testing.T) { testWrongExpectedIDRefused(t, f) })
	t.Run("HostEnvironmentNotInherited", func(t *testing.T) {
		need(t, f, f.Caps.Process, "Process")
		testHostEnvironmentNotInherited(t, f)
	})
	t.Run("RestartAfterSIGKILL", func(t *testing.T) {
		need(t, f, f.Caps.Process, "Process")
		testRestartAfterSIGKILL(t, f)
	})
}

// need skips t, saying so, when the transport lacks the capability a case needs.
func need(t *testing.T, f Factory, has bool, capability string) {
	t.Helper()
	if !has {
		t.Skipf("transport %s does not declare Caps.%s, which this case needs", f.Name, capability)
	}
}

// process returns e's Process side; the factory declared Caps.Process, so it must have one.
func process(t *testing.T, f Factory, e Endpoint) Process {
	t.Helper()
	p, ok := e.(Process)
	if !ok {
		t.Fatalf("transport %s declares Caps.Process but its endpoint %T does not implement transporttest.Process", f.Name, e)
	}
	return p
}

// ListenerOf is a listener whose Accept returns the transport's own connection type.
type ListenerOf[C Conn] interface {
	Addrs() []string
	Accept(ctx context.Context) (C, error)
	Close() error
}

// TransportOf is a transport whose Listen and Dial return its own types.
type TransportOf[C Conn, L ListenerOf[C]] interface {
	Listen(ctx context.Context, addr string) (L, error)
	Dial(ctx context.Context, addr, expect string) (C, error)
}

// EndpointOf adapts a transport whose Listen and Dial return its own types, speaking for agent id, to an
// Endpoint.
func EndpointOf[C Conn, L ListenerOf[C]](id string, t TransportOf[C, L]) Endpoint {
	return endpointOf[C, L]{id: id, t: t}
}

type endpointOf[C Conn, L ListenerOf[C]] struct {
	id string
	t  TransportOf[C, L]
}

func (e endpointOf[C, L]) AgentID() string { return e.id }

func (e endpointOf[C, L]) Listen(ctx context.Context, addr string) (Listener, error) {
	l, err := e.t.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return listenerOf[C]{l}, nil
}

func (e endpointOf[C, L]) Dial(ctx context.Context, addr, expect string) (Conn, error) {
	c, err := e.t.Dial(ctx, addr, expect)
	if err != nil {
		return nil, err
	}
	return c, nil
}

type listenerOf[C Conn] struct{ l ListenerOf[C] }

func (l listenerOf[C]) Addrs() []string { return l.l.Addrs() }
func (l listenerOf[C]) Close() error    { return l.l.Close() }

func (l listenerOf[C]) Accept(ctx context.Context) (Conn, error) {
	c, err := l.l.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return c, nil
}
