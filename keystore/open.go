package keystore

import (
	"context"
	"log/slog"
)

// OpenOptions are what a backend's Open needs beyond the URI. It is a struct so options can grow.
type OpenOptions struct {
	// Logger receives the backend's diagnostics (never secrets). Nil means slog.Default().
	Logger *slog.Logger
	// Prompt asks the user for a secret when the URI names no secret source (a PIN, a passphrase). It is
	// set only when stdin is a terminal; nil means "no way to ask": the backend fails with a message that
	// names the source to configure. The caller of Prompt wipes the returned bytes when done.
	Prompt func(what string) ([]byte, error)
	// HoldsKeys says the caller expects its keys to be there already (it opens the keystore of an
	// identity that exists). A keystore that cannot be found is then described as one to make visible to
	// this process, never as one to create (issue 18, defect 6).
	HoldsKeys bool
}

// OpenFunc opens a keystore (or the keystore holding a key) from a URI. Each backend has one:
// pkcs11.Open, tpm.Open, software.Open.
type OpenFunc func(ctx context.Context, uri string, opts OpenOptions) (Keystore, error)

// Log returns o.Logger or the default logger.
func (o OpenOptions) Log() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}
