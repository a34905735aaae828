package transports

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// TestDataReader: frames of every size class come through whole and in order (small ones with
// read-ahead, large ones straight into the frame), the end marker is io.EOF, a socket that ends without
// it is ErrDataBroken, and a reader with nothing buffered holds no buffer (issue 19).
func TestDataReader(t *testing.T) {
	a, b := net.Pipe()
	sizes := []int{0, 1, 100, DataReadBuffer - 1, DataReadBuffer, DataReadBuffer + 1, 64 << 10, 3, 5}
	var frames [][]byte
	for i, n := range sizes {
		frames = append(frames, bytes.Repeat([]byte{byte(i + 1)}, n))
	}
	go func() {
		var all []byte
		for _, f := range frames {
			all = append(all, byte(len(f)>>24), byte(len(f)>>16), byte(len(f)>>8), byte(len(f)))
			all = append(all, f...)
		}
		// In two writes that split a frame, so that read-ahead sees partial frames.
		_, _ = a.Write(all[:len(all)/3])
		_, _ = a.Write(all[len(all)/3:])
		_ = WriteDataEnd(a)
		_ = a.Close()
	}()
	d := NewDataReader(b)
	var buf []byte
	for i, want := range frames {
		f, err := d.ReadFrameInto(buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(f, want) {
			t.Fatalf("frame %d: %d bytes, want %d bytes of %d", i, len(f), len(want), i+1)
		}
		if d.Buffered() == 0 && d.br != nil {
			t.Fatalf("frame %d: the reader keeps a buffer with nothing in it", i)
		}
		buf = f[:cap(f)]
	}
	if _, err := d.ReadFrameInto(nil); !errors.Is(err, io.EOF) {
		t.Fatalf("after the end marker: %v, want io.EOF", err)
	}
	if d.br != nil {
		t.Fatal("an idle reader holds a buffer")
	}

	c, d2 := net.Pipe()
	go func() { _, _ = c.Write([]byte{0, 0, 0, 9, 1, 2}); _ = c.Close() }()
	if _, err := NewDataReader(d2).ReadFrameInto(nil); !errors.Is(err, ErrDataBroken) {
		t.Fatalf("a socket that ends inside a frame: %v, want ErrDataBroken", err)
	}
	e, f2 := net.Pipe()
	go func() { _, _ = e.Write([]byte{0xff, 0xff, 0xff, 0xfe}); _ = e.Close() }()
	if _, err := NewDataReader(f2).ReadFrameInto(nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("an oversized length: %v, want ErrFrameTooLarge", err)
	}
}
