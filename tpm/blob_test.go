package tpm

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// DecodeBlob accepts exactly what Generate writes and refuses every other shape with ErrCorrupt.
func TestDecodeBlob(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks := openKS(t, sim, dir, "")
	k := mustGenerate(t, ks, "good")
	raw, err := os.ReadFile(blobPath(dir, "good"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeBlob(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !b.PublicKey().Equal(k.Public) || len(b.Name()) != 34 || b.Label != "good" || b.passwordProtected() {
		t.Fatalf("decoded blob does not match the generated key: %+v", b)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	withBytes := func(field string, f func([]byte) []byte) []byte {
		c := *b
		switch field {
		case "public":
			c.Public = f(bytes.Clone(b.Public))
		case "private":
			c.Private = f(bytes.Clone(b.Private))
		case "parent_name":
			c.ParentName = f(bytes.Clone(b.ParentName))
		}
		out, _ := json.Marshal(&c)
		return out
	}
	// withAttrs re-encodes the public part with changed object attributes (a well-formed key blob that
	// says the key could leave the TPM).
	withAttrs := func(f func(a *tpm2.TPMAObject)) []byte {
		return withBytes("public", func(p []byte) []byte {
			pub := *b.pub
			f(&pub.ObjectAttributes)
			return tpm2.Marshal(tpm2.New2B(pub))
		})
	}
	for _, tc := range []struct {
		name  string
		data  []byte
		words string
	}{
		{"trailing JSON", append(bytes.Clone(raw), []byte(`{}`)...), "trailing data"},
		{"trailing close brace", append(bytes.Clone(raw), '}'), "trailing data"},
		{"trailing close bracket", append(bytes.Clone(raw), ']'), "trailing data"},
		{"unknown field", edit(func(m map[string]any) { m["private_key"] = "x" }), "unknown field"},
		{"other format", edit(func(m map[string]any) { m["format"] = "custos-tpm-key/v0" }), "format"},
		{"ed25519", edit(func(m map[string]any) { m["algorithm"] = "ed25519" }), "only p256"},
		{"other parent", edit(func(m map[string]any) { m["parent"] = "owner/rsa-srk" }), "parent"},
		{"bad label", edit(func(m map[string]any) { m["label"] = "../x" }), "not usable"},
		{"short parent name", withBytes("parent_name", func(p []byte) []byte { return p[:20] }), "parent name"},
		{"public trailing bytes", withBytes("public", func(p []byte) []byte { return append(p, 0) }), "trailing bytes"},
		{"public truncated", withBytes("public", func(p []byte) []byte { return p[:len(p)-5] }), "TPM2B_PUBLIC"},
		{"point off the curve", withBytes("public", func(p []byte) []byte { p[len(p)-1] ^= 1; return p }), "public key"},
		{"FixedTPM clear", withAttrs(func(a *tpm2.TPMAObject) { a.FixedTPM = false }), "non-exportable"},
		{"FixedParent clear", withAttrs(func(a *tpm2.TPMAObject) { a.FixedParent = false }), "non-exportable"},
		{"FixedTPM and FixedParent clear", withAttrs(func(a *tpm2.TPMAObject) { a.FixedTPM, a.FixedParent = false, false }), "non-exportable"},
		{"SensitiveDataOrigin clear", withAttrs(func(a *tpm2.TPMAObject) { a.SensitiveDataOrigin = false }), "non-exportable"},
		{"decrypt key", withAttrs(func(a *tpm2.TPMAObject) { a.Decrypt = true }), "non-exportable"},
		{"restricted key", withAttrs(func(a *tpm2.TPMAObject) { a.Restricted = true }), "non-exportable"},
		{"private empty", withBytes("private", func([]byte) []byte { return []byte{0, 0} }), "private part"},
		{"private trailing", withBytes("private", func(p []byte) []byte { return append(p, 1) }), "private part"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeBlob(tc.data)
			wantErr(t, err, keystore.ErrCorrupt, "invalid key blob", tc.words)
		})
	}
}
