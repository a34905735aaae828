package keystore

import "fmt"

// errorf wraps kind in a sentence: errors.Is(err, kind) holds and the message reads "sentence: kind".
func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), kind)
}

// Errorf is errorf for backends: it returns an error that errors.Is recognises as kind, whose text is the
// formatted sentence followed by the kind.
func Errorf(kind error, format string, args ...any) error { return errorf(kind, format, args...) }
