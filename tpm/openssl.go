package tpm

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/custos-agent/custos/keystore"
)

// OpenSSLVerifyFiles writes what an independent check of a signature with openssl needs into dir (which
// must exist): pub.pem (the SPKI public key), msg (the signed message) and sig (the signature: DER for
// P-256, 64 raw bytes for Ed25519), each 0600. It returns the openssl command line, to run with dir as
// the working directory, that exits 0 and prints "Verified OK" exactly when the signature is good:
//
//	p256:    openssl dgst -sha256 -verify pub.pem -signature sig msg
//	ed25519: openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in msg -sigfile sig
func OpenSSLVerifyFiles(dir string, pub keystore.PublicKey, message, sig []byte) ([]string, error) {
	pemBytes := pub.PEM()
	if pemBytes == nil {
		return nil, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "cannot encode a %q public key as PEM", pub.Algorithm)
	}
	files := []struct {
		name string
		data []byte
	}{{"pub.pem", pemBytes}, {"msg", message}, {"sig", sig}}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return nil, fmt.Errorf("write %s for openssl: %w", f.name, err)
		}
	}
	switch pub.Algorithm {
	case keystore.P256:
		return []string{"openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig", "msg"}, nil
	case keystore.Ed25519:
		return []string{"openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg", "-sigfile", "sig"}, nil
	}
	return nil, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "no openssl check for algorithm %q", pub.Algorithm)
}
