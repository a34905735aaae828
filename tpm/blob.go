package tpm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
)

const (
	// BlobExt is the file extension of a wrapped key blob in the blob directory.
	BlobExt = ".tpmkey"
	// BlobFormat identifies the blob file format (a JSON object, see Blob).
	BlobFormat = "custos-tpm-key/v1"
	// ParentSRK names the parent every key is created under: the TCG reference ECC P-256 storage root key
	// (go-tpm's tpm2.ECCSRKTemplate), created in the owner hierarchy with TPM2_CreatePrimary on demand.
	ParentSRK = "owner/ecc-p256-srk"
	// MaxBlobSize bounds a key file DecodeBlob accepts (a P-256 blob is about 1 KiB).
	MaxBlobSize = 64 << 10
)

var labelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func checkLabel(label string) error {
	if !labelRE.MatchString(label) {
		return keystore.Errorf(keystore.ErrBadURI,
			"key label %q is not usable: use 1 to 64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit (it names the blob file)", label)
	}
	return nil
}

// Blob is the content of one key file (<dir>/<label>.tpmkey, mode 0600): the key as the TPM wrapped it.
// Public is a TPM2B_PUBLIC and Private a TPM2B_PRIVATE exactly as TPM2_Create returned them (size
// prefix included); the private part is encrypted and integrity-protected under the storage root key, so
// it is useless outside the TPM that made it. ParentName is the TPM Name of that storage root key when the
// key was made: when the current one differs, the TPM was cleared or replaced and the key is gone.
type Blob struct {
	Format     string             `json:"format"`
	Label      string             `json:"label"`
	Algorithm  keystore.Algorithm `json:"algorithm"`
	Parent     string             `json:"parent"`
	ParentName []byte             `json:"parent_name"`
	Public     []byte             `json:"public"`
	Private    []byte             `json:"private"`
	Created    time.Time          `json:"created"`

	pub  *tpm2.TPMTPublic
	name []byte
	key  keystore.PublicKey
}

// DecodeBlob parses and checks a key file. It never talks to a TPM. Every failure wraps
// keystore.ErrCorrupt.
func DecodeBlob(data []byte) (*Blob, error) {
	var b Blob
	if err := strictjson.Decode(data, &b, MaxBlobSize); err != nil {
		return nil, corrupt("not a JSON key blob: %v", err)
	}
	if b.Format != BlobFormat {
		return nil, corrupt("format %q (want %q)", b.Format, BlobFormat)
	}
	if err := checkLabel(b.Label); err != nil {
		return nil, corrupt("%v", err)
	}
	if b.Algorithm != keystore.P256 {
		return nil, corrupt("algorithm %q (only p256)", b.Algorithm)
	}
	if b.Parent != ParentSRK {
		return nil, corrupt("parent %q (want %q)", b.Parent, ParentSRK)
	}
	if len(b.ParentName) != 34 {
		return nil, corrupt("parent name is %d bytes (want 34: SHA-256 name)", len(b.ParentName))
	}
	pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
	if err != nil {
		return nil, corrupt("public part is not a TPM2B_PUBLIC: %v", err)
	}
	if !bytes.Equal(tpm2.Marshal(pub2b), b.Public) {
		return nil, corrupt("public part has trailing bytes")
	}
	pub, err := pub2b.Contents()
	if err != nil {
		return nil, corrupt("public part: %v", err)
	}
	if err := checkPublic(pub); err != nil {
		return nil, corrupt("public part: %v", err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](b.Private)
	if err != nil {
		return nil, corrupt("private part is not a TPM2B_PRIVATE: %v", err)
	}
	if len(priv.Buffer) == 0 || 2+len(priv.Buffer) != len(b.Private) {
		return nil, corrupt("private part is empty or has trailing bytes")
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, corrupt("public part: %v", err)
	}
	key, err := publicKey(pub)
	if err != nil {
		return nil, corrupt("public key: %v", err)
	}
	b.pub, b.name, b.key = pub, name.Buffer, key
	return &b, nil
}

func corrupt(format string, args ...any) error {
	return keystore.Errorf(keystore.ErrCorrupt, "invalid key blob: "+format, args...)
}

// checkPublic insists on the template this package creates: an unrestricted ECDSA P-256/SHA-256 signing key
// that cannot leave the TPM.
func checkPublic(p *tpm2.TPMTPublic) error {
	if p.Type != tpm2.TPMAlgECC || p.NameAlg != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("type %v with name algorithm %v (want ECC, SHA-256)", p.Type, p.NameAlg)
	}
	a := p.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.UserWithAuth || !a.SignEncrypt || a.Decrypt || a.Restricted {
		return errors.New("object attributes are not those of a non-exportable signing key")
	}
	ecc, err := p.Parameters.ECCDetail()
	if err != nil {
		return err
	}
	if ecc.CurveID != tpm2.TPMECCNistP256 {
		return fmt.Errorf("curve %v (want NIST P-256)", ecc.CurveID)
	}
	if ecc.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return fmt.Errorf("scheme %v (want ECDSA)", ecc.Scheme.Scheme)
	}
	d, err := ecc.Scheme.Details.ECDSA()
	if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
		return errors.New("ECDSA scheme without SHA-256")
	}
	return nil
}

// publicKey extracts the P-256 public key and checks that it is a point on the curve.
func publicKey(p *tpm2.TPMTPublic) (keystore.PublicKey, error) {
	pt, err := p.Unique.ECC()
	if err != nil {
		return keystore.PublicKey{}, err
	}
	if len(pt.X.Buffer) > 32 || len(pt.Y.Buffer) > 32 {
		return keystore.PublicKey{}, errors.New("coordinate longer than 32 bytes")
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[1+32-len(pt.X.Buffer):33], pt.X.Buffer)
	copy(raw[33+32-len(pt.Y.Buffer):], pt.Y.Buffer)
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return keystore.PublicKey{}, err
	}
	return keystore.NewPublicKey(k)
}

// passwordProtected reports whether the key has a password (keys without one carry NoDA).
func (b *Blob) passwordProtected() bool { return !b.pub.ObjectAttributes.NoDA }

// PublicKey is the key's public half.
func (b *Blob) PublicKey() keystore.PublicKey { return b.key }

// Name is the key's TPM Name (name algorithm + SHA-256 of the public area).
func (b *Blob) Name() []byte { return bytes.Clone(b.name) }

// PrivateBlob is the contents of the TPM2B_PRIVATE (without its size prefix): the integrity HMAC and the
// encrypted sensitive area.
func (b *Blob) PrivateBlob() []byte { return bytes.Clone(b.Private[2:]) }

// encode is the file content.
func (b *Blob) encode() ([]byte, error) {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

func blobPath(dir, label string) string { return filepath.Join(dir, label+BlobExt) }

// readBlob reads the key file for label. A missing file is ErrNotFound; anything wrong with it is ErrCorrupt.
func readBlob(dir, label string) (*Blob, error) {
	path := blobPath(dir, label)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, keystore.Errorf(keystore.ErrNotFound, "no TPM key labelled %q in %s", label, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read TPM key file %s: %w", path, err)
	}
	b, err := DecodeBlob(data)
	if err != nil {
		return nil, fmt.Errorf("TPM key file %s: %w; restore the file from a backup, or %s", path, err, recoverHint)
	}
	if b.Label != label {
		return nil, fmt.Errorf("TPM key file %s holds key %q: %w", path, b.Label, keystore.ErrCorrupt)
	}
	return b, nil
}

// writeBlob creates the key file for b.Label without ever replacing an existing one: the content goes to
// a temporary file (0600) that is synced and then hard-linked to its final name, and the directory is
// synced. An existing file gives ErrExists.
func writeBlob(dir string, b *Blob) error {
	data, err := b.encode()
	if err != nil {
		return err
	}
	final := blobPath(dir, b.Label)
	if err := atomicfile.Create(final, data); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return keystore.Errorf(keystore.ErrExists, "a TPM key labelled %q already exists in %s", b.Label, dir)
		}
		return fmt.Errorf("create TPM key file: %w", err)
	}
	return nil
}

// listLabels returns the labels of the key files in dir (temporary files and others are ignored).
func listLabels(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list TPM key directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		label, ok := strings.CutSuffix(name, BlobExt)
		if !ok || !e.Type().IsRegular() || checkLabel(label) != nil {
			continue
		}
		out = append(out, label)
	}
	return out, nil
}
