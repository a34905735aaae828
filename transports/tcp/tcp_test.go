package tcp_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/tlsbind"
	"github.com/custos-agent/custos/transports/transporttest"
)

var bins map[string]string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cxbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = hosttest.Build(dir, "transport-tcp")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func start(t *testing.T) *hosttest.Host {
	return hosttest.Start(t, hosttest.Config(t, "tcp", bins["transport-tcp"]))
}

// TestConformance runs the transport conformance suite through the plugin host and its subprocesses.
func TestConformance(t *testing.T) {
	transporttest.Run(t, hosttest.Factory("tcp", bins["transport-tcp"], "127.0.0.1:0"))
}

// listen starts a host listening on loopback and returns it, its listener and the port address.
func listen(t *testing.T) (*hosttest.Host, func(time.Duration) error, string) {
	t.Helper()
	a := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	// noInbound asserts that nothing reaches the host within d.
	noInbound := func(d time.Duration) error {
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
	return a, noInbound, l.Addrs()[0]
}

// openssl runs s_client against addr with the given flags, feeding it stdin, and returns its output.
func openssl(t *testing.T, addr string, stdin []byte, flags ...string) (string, error) {
	t.Helper()
	bin := testenv.LookTool(t, "openssl", "openssl")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	args := append([]string{"s_client", "-connect", addr, "-ign_eof"}, flags...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	t.Logf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	return string(out), err
}

// frame is a length-prefixed frame as a peer would send it after the handshake.
var frame = []byte{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}

func TestOpenSSLTLS12Refused(t *testing.T) {
	_, noInbound, addr := listen(t)
	out, err := openssl(t, addr, frame, "-tls1_2")
	if err == nil {
		t.Errorf("openssl -tls1_2 exited 0:\n%s", out)
	}
	if !strings.Contains(out, "alert protocol version") {
		t.Errorf("want a protocol_version alert, got:\n%s", out)
	}
	if !strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("a TLS 1.2 session was negotiated:\n%s", out)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestOpenSSLTLS13WithoutClientCertGetsNoSession(t *testing.T) {
	_, noInbound, addr := listen(t)
	out, _ := openssl(t, addr, frame, "-tls1_3")
	if !strings.Contains(out, "alert certificate required") {
		t.Errorf("want a certificate_required alert, got:\n%s", out)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

// selfSigned writes an Ed25519 key and a self-signed certificate (with extra extensions) as PEM files.
func selfSigned(t *testing.T, exts []pkix.Extension) (certFile, keyFile string, cert tls.Certificate) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "intruder"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtraExtensions: exts,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

func TestOpenSSLTLS13ClientCertWithoutBindingDropped(t *testing.T) {
	_, noInbound, addr := listen(t)
	certFile, keyFile, _ := selfSigned(t, nil)
	out, _ := openssl(t, addr, frame, "-tls1_3", "-cert", certFile, "-key", keyFile)
	if !strings.Contains(out, "alert bad certificate") {
		t.Errorf("want the server to abort with a bad_certificate alert, got:\n%s", out)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

// A certificate can carry a well-formed binding, but if the binding names another key than the
// certificate's, the peer is dropped before the host sees anything.
func TestBindingForAnotherKeyDropped(t *testing.T) {
	a, noInbound, addr := listen(t)
	otherKey, _, _ := ed25519.GenerateKey(rand.Reader)
	raw, _, err := a.Authority.Bind(context.Background(), "tcp", otherKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := binding.Decode(raw); err != nil {
		t.Fatal(err)
	}
	ext, _ := asn1.Marshal(raw)
	_, _, cert := selfSigned(t, []pkix.Extension{{Id: tlsbind.BindingOID, Value: ext}})
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert},
		NextProtos: []string{"custos/1"}}
	c, err := tls.Dial("tcp", addr, conf)
	if err == nil {
		// TLS 1.3: the client may finish before the server judged its certificate; the server's verdict
		// arrives on the first read.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(frame)
		_, err = c.Read(make([]byte, 1))
		_ = c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("client with a binding for another key: %v, want a bad_certificate alert", err)
	}
	if err := noInbound(2 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestGoTLS12ClientRefused(t *testing.T) {
	_, noInbound, addr := listen(t)
	_, _, cert := selfSigned(t, nil)
	conf := &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}
	c, err := tls.Dial("tcp", addr, conf)
	if err == nil {
		_ = c.Close()
		t.Fatal("TLS 1.2 handshake succeeded")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("TLS 1.2 client: %v, want a protocol version alert", err)
	}
	if err := noInbound(time.Second); err != nil {
		t.Error(err)
	}
}
