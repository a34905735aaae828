//go:build !linux

package host

import (
	"errors"
	"os"
)

// socketPair is Linux-only (like the launcher); elsewhere connections use gRPC frame streams.
func socketPair(int) (*os.File, *os.File, error) {
	return nil, nil, errors.New("data sockets are implemented on Linux only")
}
