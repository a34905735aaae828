package ws_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/transporttest"
	"github.com/custos-agent/custos/transports/ws"
)

var bins map[string]string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cxbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = hosttest.Build(dir, "transport-ws")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// TestConformance runs the transport conformance suite through the plugin host and its subprocesses.
func TestConformance(t *testing.T) {
	transporttest.Run(t, hosttest.Factory("ws", bins["transport-ws"], "127.0.0.1:0"))
}

// listen starts a host listening and returns its URL, its host:port and a check that nothing reached it.
func listen(t *testing.T) (string, string, func(time.Duration) error) {
	t.Helper()
	a := hosttest.Start(t, hosttest.Config(t, "ws", bins["transport-ws"]))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	u := l.Addrs()[0]
	if !strings.HasPrefix(u, "wss://127.0.0.1:") || !strings.HasSuffix(u, "/custos/v1") {
		t.Fatalf("listener address %q", u)
	}
	hostport := strings.TrimSuffix(strings.TrimPrefix(u, "wss://"), "/custos/v1")
	return u, hostport, func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		c, err := l.Accept(ctx)
		if err == nil {
			_ = c.Close()
			return fmt.Errorf("a connection from %s reached the host", c.RemoteAddr())
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return nil
	}
}

func openssl(t *testing.T, addr string, flags ...string) (string, error) {
	t.Helper()
	bin := testenv.LookTool(t, "openssl", "openssl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	args := append([]string{"s_client", "-connect", addr, "-ign_eof"}, flags...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader("GET /custos/v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	out, err := cmd.CombinedOutput()
	t.Logf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	return string(out), err
}

func TestOpenSSLTLS12Refused(t *testing.T) {
	_, hp, noInbound := listen(t)
	out, err := openssl(t, hp, "-tls1_2")
	if err == nil || !strings.Contains(out, "alert protocol version") || !strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("TLS 1.2 was not refused with protocol_version (exit %v):\n%s", err, out)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestOpenSSLTLS13WithoutClientCertGetsNoSession(t *testing.T) {
	_, hp, noInbound := listen(t)
	out, _ := openssl(t, hp, "-tls1_3")
	if !strings.Contains(out, "alert certificate required") {
		t.Errorf("want certificate_required:\n%s", out)
	}
	if strings.Contains(out, "101 Switching Protocols") {
		t.Errorf("the upgrade was answered:\n%s", out)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

// A TLS 1.3 client with a certificate but no binding gets no HTTP answer, let alone an upgrade.
func TestClientCertWithoutBindingGetsNoUpgrade(t *testing.T) {
	u, _, noInbound := listen(t)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "intruder"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}}}}
	resp, err := client.Get(strings.Replace(u, "wss://", "https://", 1))
	if err == nil {
		_ = resp.Body.Close()
		t.Fatalf("got an HTTP answer %s", resp.Status)
	}
	if !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("want a bad_certificate alert, got %v", err)
	}
	// Plain HTTP is not answered either.
	plain := &http.Client{Timeout: 3 * time.Second}
	resp, err = plain.Get(strings.Replace(u, "wss://", "http://", 1))
	if err == nil {
		body := new(bytes.Buffer)
		_, _ = body.ReadFrom(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP got %s %q", resp.Status, body)
		}
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

// TestIdleConnectionsBeforeUpgradeLimited: connections that never finish the TLS handshake and HTTP
// upgrade are bounded like the TCP plugin's handshakes: beyond MaxHandshakes the listener drops them at
// once instead of holding each until its handshake timeout.
func TestIdleConnectionsBeforeUpgradeLimited(t *testing.T) {
	cfg := hosttest.Config(t, "ws", bins["transport-ws"])
	cfg.Options = map[string]string{ws.OptHandshakeTimeout: "5m"} // the held ones stay held for the whole test
	a := hosttest.Start(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	hostport := strings.TrimSuffix(strings.TrimPrefix(l.Addrs()[0], "wss://"), "/custos/v1")
	const n = ws.MaxHandshakes + 36
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", hostport)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The listener accepts in order: once the last connection is dropped, so are all beyond the limit.
	// (Without a limit it is held until the handshake timeout: the read below runs into its deadline.)
	last := conns[n-1]
	_ = last.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := last.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("connection %d beyond the limit of %d was not dropped: %v", n, ws.MaxHandshakes, err)
	}
	held := 0
	for _, c := range conns[:n-1] {
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			held++
		}
	}
	if held != ws.MaxHandshakes {
		t.Fatalf("%d of %d idle connections held; want exactly %d", held, n, ws.MaxHandshakes)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }
