package transports

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// The data plane (ADR 0031). A connection's frames do not have to ride the gRPC connection: when the
// plugin supports it, each connection gets a unix stream socket of its own, one end kept by the host, the
// other passed to the plugin over a control socket (SCM_RIGHTS) that the host created at launch and gave
// the plugin as an inherited descriptor. On that socket frames are 4-byte big-endian lengths and bytes,
// exactly as on the network, and a direction ends cleanly with the length DataEnd; a socket that ends
// without it broke (the process on the other side died). The kernel's socket buffers are the flow
// control: a writer blocks while the reader does not read.
const (
	// DataFDEnv is the environment variable that gives a plugin the descriptor number of its data
	// control socket (a SOCK_SEQPACKET unix socket).
	DataFDEnv = "CUSTOS_TRANSPORT_DATA_FD"
	// DataHello is the first message a plugin sends on the control socket: it takes connections' frames
	// over sockets. A plugin that does not send it gets gRPC frame streams.
	DataHello = "custos-data/1"
	// DataEnd is the frame length that ends a direction cleanly (larger than any frame).
	DataEnd = 0xFFFFFFFF
	// MaxConnIDLen bounds the connection ID in a control message.
	MaxConnIDLen = 64
)

// ErrDataBroken: a data socket ended without the end marker (the other side's process died, or it broke
// the protocol).
var ErrDataBroken = errors.New("data socket broken")

// WriteDataFrame writes one frame to c with a single writev (no copy of the frame).
func WriteDataFrame(c net.Conn, frame []byte) error {
	if len(frame) > MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), ErrFrameTooLarge, MaxFrameSize)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
	bufs := net.Buffers{hdr[:], frame}
	_, err := bufs.WriteTo(c)
	return err
}

// WriteDataEnd writes the end marker: the peer's ReadDataFrame returns io.EOF after the frames before it.
func WriteDataEnd(w io.Writer) error {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], DataEnd)
	_, err := w.Write(hdr[:])
	return err
}

// ReadDataFrame reads one frame from r: io.EOF after the end marker, ErrDataBroken when the socket ends
// without it, ErrFrameTooLarge for a length above MaxFrameSize (nothing more is read).
func ReadDataFrame(r io.Reader) ([]byte, error) { return ReadDataFrameInto(r, nil) }

// ReadDataFrameInto is ReadDataFrame reading into buf when it is large enough (the result then aliases
// buf), for a pump that hands each frame on before it reads the next.
func ReadDataFrameInto(r io.Reader, buf []byte) ([]byte, error) {
	n, err := readDataHeader(r)
	if err != nil {
		return nil, err
	}
	return readDataBody(r, sized(buf, n))
}

// readDataHeader reads a frame's length: io.EOF for the end marker, ErrDataBroken when the socket
// ends first, ErrFrameTooLarge above MaxFrameSize.
func readDataHeader(r io.Reader) (uint32, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, fmt.Errorf("%w: it ended without the end marker", ErrDataBroken)
		}
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == DataEnd {
		return 0, io.EOF
	}
	if n > MaxFrameSize {
		return 0, fmt.Errorf("frame of %d bytes announced: %w (limit %d)", n, ErrFrameTooLarge, MaxFrameSize)
	}
	return n, nil
}

// sized returns buf cut to n bytes when it is large enough, else a new slice.
func sized(buf []byte, n uint32) []byte {
	if uint32(cap(buf)) >= n {
		return buf[:n]
	}
	return make([]byte, n)
}

// readDataBody fills buf from r: ErrDataBroken when the socket ends inside the frame.
func readDataBody(r io.Reader, buf []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: it ended inside a frame", ErrDataBroken)
		}
		return nil, err
	}
	return buf, nil
}

// DataReadBuffer is the read-ahead buffer of a DataReader while bytes are buffered: smaller than a large
// frame, whose bulk is then read straight into the frame.
const DataReadBuffer = 16 << 10

var dataReadBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, DataReadBuffer) }}

// DataReader reads the frames of one data socket (ReadDataFrameInto's protocol) through a read-ahead
// buffer it holds only while it has bytes buffered. An idle connection waits for the next frame's length
// on the socket itself and holds no buffer, so that an agent with thousands of idle sessions does not
// keep a buffer per session (issue 19). One goroutine reads.
type DataReader struct {
	r  io.Reader
	br *bufio.Reader // nil when nothing is buffered
}

// NewDataReader reads frames from r.
func NewDataReader(r io.Reader) *DataReader { return &DataReader{r: r} }

// Buffered is the number of bytes read ahead of the frames returned so far.
func (d *DataReader) Buffered() int {
	if d.br == nil {
		return 0
	}
	return d.br.Buffered()
}

// ReadFrameInto is ReadDataFrameInto on the socket: io.EOF after the end marker, ErrDataBroken when the
// socket ends without it, ErrFrameTooLarge above MaxFrameSize. The frame aliases buf when it fits.
func (d *DataReader) ReadFrameInto(buf []byte) ([]byte, error) {
	defer d.release()
	var src io.Reader = d.r
	if d.br != nil {
		src = d.br
	}
	n, err := readDataHeader(src)
	if err != nil {
		return nil, err
	}
	buf = sized(buf, n)
	if d.br == nil && n < DataReadBuffer {
		// A small frame: read it with read-ahead, so that the frames behind it come in the same read.
		d.br = dataReadBuffers.Get().(*bufio.Reader)
		d.br.Reset(d.r)
		src = d.br
	}
	return readDataBody(src, buf)
}

// release gives the read-ahead buffer back once nothing is buffered in it.
func (d *DataReader) release() {
	if d.br != nil && d.br.Buffered() == 0 {
		d.br.Reset(nil)
		dataReadBuffers.Put(d.br)
		d.br = nil
	}
}

// Close drops the read-ahead buffer (and what it holds); the reader is not used afterwards.
func (d *DataReader) Close() {
	if d.br != nil {
		d.br.Reset(nil)
		dataReadBuffers.Put(d.br)
		d.br = nil
	}
}
