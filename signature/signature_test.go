package signature

import (
	"bytes"
	"testing"

	"github.com/custos-agent/custos/internal/wire"
)

func TestSameAsSignatureInput(t *testing.T) {
	w := wire.NewWriter(0).String("a").Bytes([]byte{1, 2}).Uint64(7).Int64(-1).Bool(true)
	in := NewInput(Envelope).String("a").Bytes([]byte{1, 2}).Uint64(7).Int64(-1).Uint64(1)
	if !bytes.Equal(append(Envelope.Prefix(), w.Out()...), in.Message()) {
		t.Fatal("wire encoding differs from signature.Input")
	}
}
