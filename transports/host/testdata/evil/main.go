// Command evil is a transport plugin that lies to its host in the way EVIL_MODE says, to test that the
// host never trusts what a plugin returns. It claims to be transport "tcp".
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/plugin"
	pb "github.com/custos-agent/custos/transports/proto"
)

type evil struct {
	pb.UnimplementedTransportServer
	mode string
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey

	mu      sync.Mutex
	binding []byte
}

func (e *evil) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	switch e.mode {
	case "hangconfigure":
		<-ctx.Done()
		return nil, ctx.Err()
	case "badname":
		return &pb.ConfigureResponse{Transport: "udp", PublicKey: e.pub,
			Proof: ed25519.Sign(e.priv, transports.KeyProofInput("udp", req.Nonce, e.pub))}, nil
	case "dhtserver": // answers lookups whatever the host asked for
		return &pb.ConfigureResponse{Transport: "tcp", PublicKey: e.pub, DhtMode: pb.DhtMode_DHT_MODE_SERVER,
			Proof: ed25519.Sign(e.priv, transports.KeyProofInput("tcp", req.Nonce, e.pub))}, nil
	case "badproof": // signs another nonce
		other := make([]byte, 32)
		return &pb.ConfigureResponse{Transport: "tcp", PublicKey: e.pub,
			Proof: ed25519.Sign(e.priv, transports.KeyProofInput("tcp", other, e.pub))}, nil
	}
	return &pb.ConfigureResponse{Transport: "tcp", PublicKey: e.pub,
		Proof: ed25519.Sign(e.priv, transports.KeyProofInput("tcp", req.Nonce, e.pub))}, nil
}

func (e *evil) SetBinding(_ context.Context, req *pb.SetBindingRequest) (*pb.SetBindingResponse, error) {
	e.mu.Lock()
	e.binding = req.Binding
	e.mu.Unlock()
	return &pb.SetBindingResponse{}, nil
}

func (e *evil) Listen(context.Context, *pb.ListenRequest) (*pb.ListenResponse, error) {
	switch e.mode {
	case "badaddr":
		return &pb.ListenResponse{ListenerId: "l1", Addresses: []string{"127.0.0.1:4000\x1b[31mred"}, BoundAddress: "127.0.0.1:4000"}, nil
	case "manyaddrs":
		return &pb.ListenResponse{ListenerId: "l1", Addresses: make([]string, 1000), BoundAddress: "127.0.0.1:4000"}, nil
	}
	return &pb.ListenResponse{ListenerId: "l1", Addresses: []string{"127.0.0.1:4000"}, BoundAddress: "127.0.0.1:4000"}, nil
}

func (e *evil) Dial(ctx context.Context, _ *pb.DialRequest) (*pb.DialResponse, error) {
	e.mu.Lock()
	own := e.binding
	e.mu.Unlock()
	c := &pb.Connection{ConnId: "c1", RemoteAddr: "127.0.0.1:4000", PeerBinding: own, PeerKey: e.pub}
	switch e.mode {
	case "hangdial":
		<-ctx.Done()
		return nil, ctx.Err()
	case "nobinding":
		c.PeerBinding = nil
	case "forged": // a real binding, but reported for another key
		other, _, _ := ed25519.GenerateKey(rand.Reader)
		c.PeerKey = other
	case "shortkey":
		c.PeerKey = e.pub[:16]
	case "badremote":
		c.RemoteAddr = "not an address\n"
	case "bigbinding":
		c.PeerBinding = make([]byte, transports.MaxBindingSize+1)
	}
	return &pb.DialResponse{Conn: c}, nil
}

func (e *evil) CloseConn(context.Context, *pb.CloseConnRequest) (*pb.CloseResponse, error) {
	return &pb.CloseResponse{}, nil
}

func (e *evil) CloseListener(context.Context, *pb.CloseListenerRequest) (*pb.CloseResponse, error) {
	return &pb.CloseResponse{}, nil
}

func (e *evil) Accept(_ *pb.AcceptRequest, st grpc.ServerStreamingServer[pb.Inbound]) error {
	<-st.Context().Done()
	return nil
}

// Frames ignores flow control: it floods the host with data it has no credit for.
func (e *evil) Frames(st grpc.BidiStreamingServer[pb.FrameMessage, pb.FrameMessage]) error {
	if _, err := st.Recv(); err != nil {
		return err
	}
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	chunk := make([]byte, 256<<10)
	for i := 0; i < 64; i++ {
		if err := st.Send(&pb.FrameMessage{Msg: &pb.FrameMessage_Data{Data: chunk}}); err != nil {
			return nil
		}
	}
	time.Sleep(10 * time.Second)
	return nil
}

// serveData speaks the data plane (transports/dataplane.go) to misbehave on it: "dataoversize" announces
// a frame above the limit on every data socket, "datanoend" sends one frame and closes the socket without
// the end marker.
func serveData(mode string) {
	fd, err := strconv.Atoi(os.Getenv(transports.DataFDEnv))
	if err != nil {
		return
	}
	c, err := net.FileConn(os.NewFile(uintptr(fd), "data"))
	if err != nil {
		return
	}
	uc := c.(*net.UnixConn)
	if _, err := uc.Write([]byte(transports.DataHello)); err != nil {
		return
	}
	go func() {
		buf, oob := make([]byte, 128), make([]byte, syscall.CmsgSpace(16))
		for {
			_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, _ := syscall.ParseUnixRights(&m)
				for _, fd := range fds {
					f := os.NewFile(uintptr(fd), "conn")
					switch mode {
					case "dataoversize":
						_, _ = f.Write([]byte{0x00, 0x50, 0x00, 0x00}) // 5 MiB
					case "datanoend":
						_ = transports.WriteFrame(f, []byte("x"))
					}
					_ = f.Close()
				}
			}
		}
	}()
}

func main() {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	mode := strings.TrimSpace(os.Getenv("EVIL_MODE"))
	if strings.HasPrefix(mode, "data") {
		serveData(mode)
	}
	plugin.ServeServer(&evil{mode: mode, pub: pub, priv: priv})
}
