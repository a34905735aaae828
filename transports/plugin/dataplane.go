package plugin

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/custos-agent/custos/transports"
)

// The plugin side of the data plane (transports/dataplane.go, ADR 0031): the host passes each
// connection's data socket over the control socket it gave this process at launch (descriptor
// $CUSTOS_TRANSPORT_DATA_FD); frames then move between that socket and the network connection without
// gRPC, protobuf or the AutoMTLS hop.

// startData says hello on the control socket named by the environment and serves it. It returns false
// (and the host uses gRPC frame streams) when there is none.
func (s *Server) startData() bool {
	v := os.Getenv(transports.DataFDEnv)
	if v == "" {
		return false
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		s.log.Warn("ignoring a malformed "+transports.DataFDEnv, "value", v)
		return false
	}
	f := os.NewFile(uintptr(fd), "custos-data-control")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		s.log.Warn("no data plane: control socket", "err", err)
		return false
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return false
	}
	if _, err := uc.Write([]byte(transports.DataHello)); err != nil {
		s.log.Warn("no data plane: hello", "err", err)
		_ = uc.Close()
		return false
	}
	go s.serveData(uc)
	return true
}

// serveData receives "connection ID + descriptor" messages until the host closes the control socket.
func (s *Server) serveData(uc *net.UnixConn) {
	defer uc.Close()
	buf := make([]byte, transports.MaxConnIDLen+1)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
		if err != nil {
			if !errors.Is(err, io.EOF) && s.ctx.Err() == nil {
				s.log.Debug("data control socket ended", "err", err)
			}
			return
		}
		var fds []int
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if rights, err := syscall.ParseUnixRights(&m); err == nil {
					fds = append(fds, rights...)
				}
			}
		}
		if len(fds) != 1 || n == 0 || n > transports.MaxConnIDLen || flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
			for _, fd := range fds {
				_ = syscall.Close(fd)
			}
			s.log.Warn("malformed data control message from the host", "bytes", n, "descriptors", len(fds))
			continue
		}
		syscall.CloseOnExec(fds[0])
		f := os.NewFile(uintptr(fds[0]), "custos-data")
		c, err := net.FileConn(f)
		_ = f.Close()
		if err != nil {
			continue
		}
		dc, ok := c.(*net.UnixConn)
		if !ok {
			_ = c.Close()
			continue
		}
		go s.attachData(string(buf[:n]), dc)
	}
}

// attachData pumps the frames of connection cid over dc, like Frames does over a gRPC stream.
func (s *Server) attachData(cid string, dc *net.UnixConn) {
	s.mu.Lock()
	e, ok := s.conns[cid]
	if ok && e.attached {
		ok = false
	}
	if ok {
		e.attached = true
	}
	s.mu.Unlock()
	if !ok {
		s.log.Warn("data socket for an unknown or already open connection", "conn", cid)
		_ = dc.Close() // the host reads a socket that ended without the end marker: broken
		return
	}
	defer s.drop(cid)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	if err := pumpData(ctx, dc, e.c); err != nil {
		s.log.Debug("connection ended", "conn", cid, "err", err)
	}
}

// frameReaderInto is an optional Conn capability: reading a frame into a caller's buffer.
type frameReaderInto interface {
	ReadFrameInto(ctx context.Context, buf []byte) ([]byte, error)
}

// pumpData moves frames between the host's data socket and the network connection. The host ending its
// direction cleanly (end marker) flushes and closes the network connection; the network peer closing
// cleanly sends the end marker to the host. Either side breaking closes both. The host -> network
// direction runs in the caller's goroutine, the other in one goroutine of its own (issue 19: a goroutine
// fewer per connection).
func pumpData(ctx context.Context, dc *net.UnixConn, nc Conn) error {
	defer dc.Close()
	netDone := make(chan error, 1)
	go func() { // network -> host: each frame one writev, no write buffer held per connection (issue 19)
		err := networkToHost(ctx, dc, nc)
		netDone <- err
		// The network side ended: stop the other direction, blocked on the data socket or the network.
		_ = nc.Close()
		_ = dc.SetReadDeadline(time.Unix(1, 0))
	}()
	dr := transports.NewDataReader(dc) // a read buffer only while bytes are buffered (issue 19)
	defer dr.Close()
	var buf []byte // each frame is written out before the next is read into the same buffer
	read := func(context.Context) ([]byte, error) {
		f, err := dr.ReadFrameInto(buf)
		buf = f[:cap(f)]
		return f, err
	}
	err := hostToNetwork(ctx, read, dr.Buffered, nc)
	select {
	case nerr := <-netDone: // the network side ended first, and stopped this one: its outcome counts
		err = nerr
	default:
	}
	_ = nc.Close()
	if errors.Is(err, io.EOF) { // a clean end: the host's after its last frame was written out, or the peer's
		return nil
	}
	return err
}

// networkToHost moves the network connection's frames to the data socket until either ends; a clean end
// of the network connection is passed on as the end marker.
func networkToHost(ctx context.Context, dc *net.UnixConn, nc Conn) error {
	ri, reuse := nc.(frameReaderInto)
	var buf []byte
	for {
		var f []byte
		var err error
		if reuse {
			f, err = ri.ReadFrameInto(ctx, buf)
			buf = f[:cap(f)]
		} else {
			f, err = nc.ReadFrame(ctx)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = transports.WriteDataEnd(dc)
			}
			return err
		}
		if err = transports.WriteDataFrame(dc, f); err != nil {
			return err
		}
	}
}
