package tpm

import (
	"context"
	"testing"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/keystoretest"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

func TestConformance(t *testing.T) {
	keystoretest.Run(t, keystoretest.Harness{
		New: func(t *testing.T) func() (keystore.Keystore, error) {
			sim := swtpmtest.Start(t)
			uri := sim.KeystoreURI(t.TempDir())
			return func() (keystore.Keystore, error) {
				return Open(context.Background(), uri, keystore.OpenOptions{})
			}
		},
		Algorithms:             []keystore.Algorithm{keystore.P256},
		Concurrency:            4,
		SignaturesPerGoroutine: 4,
	})
}
