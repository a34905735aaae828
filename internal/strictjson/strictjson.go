// Package strictjson is the one strict JSON decoder of the module: a size limit, unknown fields
// refused, nothing after the value, and (for forms with one spelling) a re-encode-and-compare check.
// Every decoder of data a peer, a file or a client controls goes through it.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Errors wrapped by Decode and Canonical, so callers can tell the kinds apart.
var (
	ErrTooLarge     = errors.New("too large")
	ErrTrailing     = errors.New("trailing data after the JSON value")
	ErrNotCanonical = errors.New("not in canonical form")
)

// Decode decodes exactly one JSON value from b into v. It refuses input longer than max bytes (max <= 0:
// no limit), object fields v does not declare, and anything but white space after the value. The
// error says which: it wraps ErrTooLarge or ErrTrailing, or carries encoding/json's message.
func Decode(b []byte, v any, max int) error {
	if max > 0 && len(b) > max {
		return fmt.Errorf("%w: %d bytes exceeds %d", ErrTooLarge, len(b), max)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return ErrTrailing
	}
	return nil
}

// Canonical reports an error wrapping ErrNotCanonical unless encoded, the decoded value written again
// by its encoder, equals the input byte for byte: the form then has one spelling per value.
func Canonical(input, encoded []byte) error {
	if !bytes.Equal(input, encoded) {
		return ErrNotCanonical
	}
	return nil
}
