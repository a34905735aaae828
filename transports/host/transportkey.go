package host

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/custos-agent/custos/internal/atomicfile"
)

// transportKeyMagic starts a transport key file, so that a file of another kind is refused, never used.
const transportKeyMagic = "custos-transport-key-v1\n"

// LoadTransportKey returns the transport key kept at path, creating it (a fresh Ed25519 key, file mode
// 0600 in a 0700 directory, written atomically) when there is none. The key gives a transport plugin a
// stable transport identity (the libp2p peer ID) across restarts (ADR 0070); it is not an identity key:
// whoever holds it can present this peer ID, but not a binding signed by the agent's operational key
// for it beyond the life of the bindings already issued. A file that is not a transport key, or that is
// readable by others, is refused with what to do.
func LoadTransportKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return createTransportKey(path)
	case err != nil:
		return nil, fmt.Errorf("read transport key: %w", err)
	}
	defer clear(data)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("transport key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("transport key %s has mode %v: it must be readable by the agent only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	if len(data) != len(transportKeyMagic)+ed25519.SeedSize || string(data[:len(transportKeyMagic)]) != transportKeyMagic {
		return nil, fmt.Errorf("%s is not a Custos transport key (%d bytes); move it away and the agent makes a new one (the transport's peer ID changes)", path, len(data))
	}
	return ed25519.NewKeyFromSeed(data[len(transportKeyMagic):]), nil
}

func createTransportKey(path string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("transport key directory: %w", err)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("generate transport key: %w", err)
	}
	defer clear(seed)
	data := append([]byte(transportKeyMagic), seed...)
	defer clear(data)
	if err := atomicfile.Create(path, data); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process created it first: use that one
			return LoadTransportKey(path)
		}
		return nil, fmt.Errorf("write transport key: %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
