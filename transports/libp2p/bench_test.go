package libp2p_test

import (
	"context"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/internal/netframe"
	"github.com/custos-agent/custos/transports/transporttest"
)

// BenchmarkPlugin streams frames host -> plugin -> libp2p stream -> plugin -> host.
func BenchmarkPlugin(b *testing.B) {
	hosttest.BenchPlugin(b, "libp2p", bins["transport-libp2p"], "/ip4/127.0.0.1/tcp/0")
}

// BenchmarkRawStream is the baseline: the same framing over one /custos/1.0.0 stream between two
// in-process go-libp2p hosts configured like the plugin's (TCP, Noise first, yamux), no plugin processes.
func BenchmarkRawStream(b *testing.B) {
	srv, _ := rawPeer(b, "noise")
	cli, _ := rawPeer(b, "noise")
	if err := srv.Network().Listen(ma.StringCast("/ip4/127.0.0.1/tcp/0")); err != nil {
		b.Fatal(err)
	}
	streams := make(chan network.Stream, 1)
	srv.SetStreamHandler("/custos/1.0.0", func(s network.Stream) { streams <- s })
	ctx := context.Background()
	if err := cli.Connect(ctx, peer.AddrInfo{ID: srv.ID(), Addrs: srv.Addrs()}); err != nil {
		b.Fatal(err)
	}
	cs, err := cli.NewStream(ctx, srv.ID(), "/custos/1.0.0")
	if err != nil {
		b.Fatal(err)
	}
	defer cs.Close()
	w := netframe.New(cs, "", nil, nil)
	if err := w.WriteFrame(ctx, []byte("open")); err != nil { // the handler runs once data arrives
		b.Fatal(err)
	}
	ss := <-streams
	defer ss.Close()
	r := netframe.New(ss, "", nil, nil)
	if _, err := r.ReadFrame(ctx); err != nil {
		b.Fatal(err)
	}
	for _, s := range transporttest.BenchSizes {
		b.Run(s.Name, func(b *testing.B) { transporttest.Stream(b, w, r, s.Size) })
	}
}
