// Package wire is the one binary field encoding of the agent protocol: a sequence of fields, each a
// 4-byte big-endian length followed by that many bytes; integers are 8-byte big-endian values carried
// as 8-byte fields. signature.Input is a Writer that starts with the signature's context prefix:
// one length-prefixed writer for what is signed and what is sent.
//
// Decoding is strict: every field has a maximum length, integers must be exactly 8 bytes, booleans 0 or
// 1, and trailing bytes are refused. Because every value has exactly one encoding, decode-then-encode
// returns the input bytes.
package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/custos-agent/custos/reason"
)

// Writer appends fields.
type Writer struct{ buf []byte }

// NewWriter starts an encoding with capacity hint n.
func NewWriter(n int) *Writer { return &Writer{buf: make([]byte, 0, n)} }

// Bytes appends a length-prefixed byte field.
func (w *Writer) Bytes(b []byte) *Writer {
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(b)))
	w.buf = append(w.buf, b...)
	return w
}

// String appends a length-prefixed string field.
func (w *Writer) String(s string) *Writer {
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(s)))
	w.buf = append(w.buf, s...)
	return w
}

// Uint64 appends an 8-byte big-endian integer field.
func (w *Writer) Uint64(v uint64) *Writer {
	w.buf = binary.BigEndian.AppendUint32(w.buf, 8)
	w.buf = binary.BigEndian.AppendUint64(w.buf, v)
	return w
}

// Int64 appends a signed integer as its two's-complement uint64.
func (w *Writer) Int64(v int64) *Writer { return w.Uint64(uint64(v)) }

// Bool appends 1 or 0 as an integer field.
func (w *Writer) Bool(v bool) *Writer {
	if v {
		return w.Uint64(1)
	}
	return w.Uint64(0)
}

// Raw appends bytes without a length prefix (a type byte, a magic).
func (w *Writer) Raw(b ...byte) *Writer { w.buf = append(w.buf, b...); return w }

// Len is the number of bytes written so far.
func (w *Writer) Len() int { return len(w.buf) }

// Out returns the encoding. The Writer must not be used afterwards.
func (w *Writer) Out() []byte { return w.buf }

// Message is Out under the name signature inputs use: the complete bytes to be signed.
func (w *Writer) Message() []byte { return w.buf }

// Reader decodes fields in order. The first error sticks: later calls return zero values and Err
// returns that first error, so a decoder reads every field and checks Err once.
type Reader struct {
	what string // name of the message, for errors
	b    []byte
	off  int
	err  error
}

// NewReader reads the encoding of the message named what.
func NewReader(what string, b []byte) *Reader { return &Reader{what: what, b: b} }

func (r *Reader) fail(code reason.Code, field, format string, args ...any) {
	if r.err == nil {
		r.err = reason.New(code, "%s: field %s: %s", r.what, field, fmt.Sprintf(format, args...))
	}
}

// Bytes reads a byte field of at most max bytes. The result aliases the input.
func (r *Reader) Bytes(field string, max int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b)-r.off < 4 {
		r.fail(reason.Malformed, field, "the message ends before the field's length")
		return nil
	}
	n := binary.BigEndian.Uint32(r.b[r.off:])
	if uint64(n) > uint64(max) {
		r.fail(reason.Malformed, field, "%d bytes exceeds the limit of %d", n, max)
		return nil
	}
	if uint64(len(r.b)-r.off-4) < uint64(n) {
		r.fail(reason.Malformed, field, "the message ends inside the field (%d of %d bytes)", len(r.b)-r.off-4, n)
		return nil
	}
	v := r.b[r.off+4 : r.off+4+int(n) : r.off+4+int(n)]
	r.off += 4 + int(n)
	return v
}

// Fixed reads a byte field of exactly n bytes.
func (r *Reader) Fixed(field string, n int) []byte {
	v := r.Bytes(field, n)
	if r.err == nil && len(v) != n {
		r.fail(reason.Malformed, field, "must be %d bytes, has %d", n, len(v))
		return nil
	}
	return v
}

// String reads a string field of at most max bytes.
func (r *Reader) String(field string, max int) string { return string(r.Bytes(field, max)) }

// Uint64 reads an 8-byte integer field.
func (r *Reader) Uint64(field string) uint64 {
	v := r.Fixed(field, 8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// Int64 reads a signed integer field. Values beyond ±2^62 are refused: no timestamp or size is that large,
// and refusing them keeps arithmetic on them from overflowing.
func (r *Reader) Int64(field string) int64 {
	v := int64(r.Uint64(field))
	if r.err == nil && (v > math.MaxInt64/2 || v < math.MinInt64/2) {
		r.fail(reason.Malformed, field, "integer %d out of range", v)
		return 0
	}
	return v
}

// Bool reads an integer field that must be 0 or 1.
func (r *Reader) Bool(field string) bool {
	v := r.Uint64(field)
	if r.err == nil && v > 1 {
		r.fail(reason.Malformed, field, "boolean must be 0 or 1, is %d", v)
	}
	return v == 1
}

// Offset is the number of bytes consumed so far.
func (r *Reader) Offset() int { return r.off }

// Remaining reports whether bytes are left.
func (r *Reader) Remaining() int { return len(r.b) - r.off }

// Err is the first error.
func (r *Reader) Err() error { return r.err }

// End checks that every byte was consumed and returns the first error.
func (r *Reader) End() error {
	if r.err == nil && r.off != len(r.b) {
		r.err = reason.New(reason.Malformed, "%s: %d trailing bytes after the last field", r.what, len(r.b)-r.off)
	}
	return r.err
}

// Failf records a semantic error found by the caller (first error wins).
func (r *Reader) Failf(code reason.Code, field, format string, args ...any) {
	r.fail(code, field, format, args...)
}

// HashBytes writes b to h as a field (4-byte big-endian length, then b), the encoding Writer.Bytes
// appends, for what is hashed and never sent: no buffer is built first.
func HashBytes(h io.Writer, b []byte) {
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(b)))
	_, _ = h.Write(l[:])
	_, _ = h.Write(b)
}

// HashUint64 writes v to h as an integer field, the encoding Writer.Uint64 appends.
func HashUint64(h io.Writer, v uint64) {
	var b [12]byte
	binary.BigEndian.PutUint32(b[:4], 8)
	binary.BigEndian.PutUint64(b[4:], v)
	_, _ = h.Write(b[:])
}
