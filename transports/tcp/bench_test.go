package tcp_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/internal/netframe"
	"github.com/custos-agent/custos/transports/transporttest"
)

// BenchmarkPlugin streams frames host -> plugin -> TLS 1.3 -> plugin -> host.
func BenchmarkPlugin(b *testing.B) {
	hosttest.BenchPlugin(b, "tcp", bins["transport-tcp"], "127.0.0.1:0")
}

// BenchmarkRawTLS13 is the baseline: the same framing over an in-process TLS 1.3 connection on loopback
// TCP with Ed25519 certificates, no plugin processes.
func BenchmarkRawTLS13(b *testing.B) {
	cert := func() tls.Certificate {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			b.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	}
	srvConf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert()}, ClientAuth: tls.RequireAnyClientCert}
	cliConf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{cert()}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvConf)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).HandshakeContext(context.Background())
		}
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	cc, err := tls.Dial("tcp", ln.Addr().String(), cliConf)
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	sc, ok := <-accepted
	if !ok {
		b.Fatal("server handshake failed")
	}
	defer sc.Close()
	w := netframe.New(cc, "", nil, nil)
	r := netframe.New(sc.(*tls.Conn), "", nil, nil)
	for _, s := range transporttest.BenchSizes {
		b.Run(s.Name, func(b *testing.B) { transporttest.Stream(b, w, r, s.Size) })
	}
}
