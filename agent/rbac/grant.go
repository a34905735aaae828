package rbac

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/custos-agent/custos/agent/identity"
	"github.com/custos-agent/custos/agent/signature"
	"github.com/custos-agent/custos/keystore"
)

// GrantVersion is the only version of the grant and revocation formats.
const GrantVersion = 1

// MaxGrantSize bounds one encoded grant or revocation.
const MaxGrantSize = 2048

// grantIDBytes is the length of a grant ID before base64url (128 random bits).
const grantIDBytes = 16

// ErrMalformed marks every decoding error of grants, revocations and the other signed records of this
// package.
var ErrMalformed = errors.New("malformed authorization record")

// KeyResolver returns the key that verifies an issuer's signatures now (in the agent: the current key of
// the issuer's verified key event log; in tests: the ID's own inception key).
type KeyResolver func(issuer identity.ID) (keystore.PublicKey, error)

// InceptionKey is the KeyResolver for identities that never rotated: the ID's own key.
func InceptionKey(issuer identity.ID) (keystore.PublicKey, error) { return issuer.PublicKey(), nil }

// Grant gives a role to an agent until it expires. Its JSON form (Encode) is what is stored and exchanged;
// what is signed is the length-prefixed encoding of SigningInput under signature.Grant.
type Grant struct {
	Version int    `json:"v"`
	ID      string `json:"id"`      // base64url of 16 random bytes
	Subject string `json:"subject"` // agent ID the role is given to
	Role    Role   `json:"role"`
	Issuer  string `json:"issuer"`  // agent ID of the system administrator who signed
	Issued  int64  `json:"issued"`  // Unix seconds
	Expires int64  `json:"expires"` // Unix seconds, after Issued
	Sig     string `json:"sig"`     // base64url signature by Issuer (Ed25519 raw, ECDSA DER)
}

// SigningInput is exactly what the issuer signs.
func (g *Grant) SigningInput() *signature.Input {
	return signature.NewInput(signature.Grant).
		Uint64(uint64(g.Version)).
		String(g.ID).
		String(g.Subject).
		String(string(g.Role)).
		String(g.Issuer).
		Int64(g.Issued).
		Int64(g.Expires)
}

// Digest is SHA-256 over the encoded grant (signature included): the key of the verification cache.
func (g *Grant) Digest() [32]byte { return sha256.Sum256(g.Encode()) }

// Encode returns the compact JSON form (one line, fields in the order above).
func (g *Grant) Encode() []byte { return mustJSON(g) }

// IssueGrant makes and signs a grant of role to subject, valid from now for ttl. issuer signs (its
// Public key's ID must be the issuer's agent ID, or issuerID says whose key it is after rotations).
func IssueGrant(ctx context.Context, issuer keystore.Signer, issuerID identity.ID, subject identity.ID, role Role, now time.Time, ttl time.Duration) (Grant, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return Grant{}, err
	}
	if ttl < time.Second {
		return Grant{}, fmt.Errorf("grant lifetime %s is too short: give at least 1s", ttl)
	}
	if subject.IsZero() || issuerID.IsZero() {
		return Grant{}, errors.New("a grant needs a subject and an issuer agent ID")
	}
	id, err := newID()
	if err != nil {
		return Grant{}, err
	}
	g := Grant{
		Version: GrantVersion,
		ID:      id,
		Subject: subject.String(),
		Role:    role,
		Issuer:  issuerID.String(),
		Issued:  now.Unix(),
		Expires: now.Add(ttl).Unix(),
	}
	sig, err := signature.SignInput(ctx, issuer, g.SigningInput())
	if err != nil {
		return Grant{}, fmt.Errorf("sign grant: %w", err)
	}
	g.Sig = identity.Base64().EncodeToString(sig)
	return g, nil
}

// DecodeGrant strictly decodes a grant: at most MaxGrantSize bytes, no unknown fields, no trailing data,
// version 1, a 16-byte ID, valid agent IDs, a known role, expires after issued, a signature, and the
// canonical encoding (Encode of the result gives back exactly b). It checks form, not the signature.
func DecodeGrant(b []byte) (Grant, error) {
	var g Grant
	if err := strictJSON(b, &g, "grant"); err != nil {
		return Grant{}, err
	}
	if err := g.check(); err != nil {
		return Grant{}, fmt.Errorf("%w: grant: %v", ErrMalformed, err)
	}
	if !bytes.Equal(g.Encode(), b) {
		return Grant{}, fmt.Errorf("%w: grant is not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return g, nil
}

func (g *Grant) check() error {
	if g.Version != GrantVersion {
		return fmt.Errorf("version %d (this agent speaks %d)", g.Version, GrantVersion)
	}
	if err := checkID(g.ID); err != nil {
		return err
	}
	if _, err := identity.ParseID(g.Subject); err != nil {
		return fmt.Errorf("subject: %v", err)
	}
	if _, err := ParseRole(string(g.Role)); err != nil {
		return err
	}
	if _, err := identity.ParseID(g.Issuer); err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	if g.Issued <= 0 || g.Expires <= g.Issued {
		return fmt.Errorf("validity [%d, %d] is empty: expires must be after issued", g.Issued, g.Expires)
	}
	if _, err := decodeSig(g.Sig); err != nil {
		return err
	}
	return nil
}

// Revocation withdraws a grant for good. Any configured system administrator may sign one.
type Revocation struct {
	Version int    `json:"v"`
	Grant   string `json:"grant"`  // ID of the revoked grant
	Issuer  string `json:"issuer"` // agent ID of the administrator who signed
	Issued  int64  `json:"issued"` // Unix seconds
	Sig     string `json:"sig"`
}

// SigningInput is exactly what the administrator signs (purpose signature.GrantRevocation).
func (r *Revocation) SigningInput() *signature.Input {
	return signature.NewInput(signature.GrantRevocation).
		Uint64(uint64(r.Version)).
		String(r.Grant).
		String(r.Issuer).
		Int64(r.Issued)
}

// Encode returns the compact JSON form.
func (r *Revocation) Encode() []byte { return mustJSON(r) }

// IssueRevocation makes and signs the revocation of grantID.
func IssueRevocation(ctx context.Context, issuer keystore.Signer, issuerID identity.ID, grantID string, now time.Time) (Revocation, error) {
	if err := checkID(grantID); err != nil {
		return Revocation{}, err
	}
	r := Revocation{Version: GrantVersion, Grant: grantID, Issuer: issuerID.String(), Issued: now.Unix()}
	sig, err := signature.SignInput(ctx, issuer, r.SigningInput())
	if err != nil {
		return Revocation{}, fmt.Errorf("sign revocation: %w", err)
	}
	r.Sig = identity.Base64().EncodeToString(sig)
	return r, nil
}

// DecodeRevocation strictly decodes a revocation, with the same rules as DecodeGrant.
func DecodeRevocation(b []byte) (Revocation, error) {
	var r Revocation
	if err := strictJSON(b, &r, "revocation"); err != nil {
		return Revocation{}, err
	}
	if err := r.check(); err != nil {
		return Revocation{}, fmt.Errorf("%w: revocation: %v", ErrMalformed, err)
	}
	if !bytes.Equal(r.Encode(), b) {
		return Revocation{}, fmt.Errorf("%w: revocation is not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return r, nil
}

func (r *Revocation) check() error {
	if r.Version != GrantVersion {
		return fmt.Errorf("version %d (this agent speaks %d)", r.Version, GrantVersion)
	}
	if err := checkID(r.Grant); err != nil {
		return err
	}
	if _, err := identity.ParseID(r.Issuer); err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	if r.Issued <= 0 {
		return fmt.Errorf("issued time %d is not a positive Unix time", r.Issued)
	}
	_, err := decodeSig(r.Sig)
	return err
}

func newID() (string, error) {
	var b [grantIDBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("grant ID: %w", err)
	}
	return identity.Base64().EncodeToString(b[:]), nil
}

func checkID(id string) error {
	b, err := identity.Base64().DecodeString(id)
	if err != nil || len(b) != grantIDBytes {
		return fmt.Errorf("grant ID %q must be %d bytes in unpadded base64url", id, grantIDBytes)
	}
	return nil
}

func decodeSig(s string) ([]byte, error) {
	b, err := identity.Base64().DecodeString(s)
	if err != nil || len(b) == 0 || len(b) > 128 {
		return nil, errors.New("signature must be 1 to 128 bytes in unpadded base64url")
	}
	return b, nil
}

// strictJSON decodes one JSON object into v: size limit, no unknown fields, no trailing data.
func strictJSON(b []byte, v any, what string) error {
	if len(b) > MaxGrantSize {
		return fmt.Errorf("%w: %s of %d bytes exceeds %d", ErrMalformed, what, len(b), MaxGrantSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: trailing data after the object", ErrMalformed, what)
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("rbac: marshal: " + err.Error()) // plain fields only: cannot fail
	}
	return b
}

// MaxGrantList bounds how many grants one list (one handshake) may carry.
const MaxGrantList = 16

// EncodeGrants is the wire form of the grants an initiator presents at the handshake: a compact JSON array
// of encoded grants.
func EncodeGrants(gs []Grant) []byte {
	out := []byte{'['}
	for i := range gs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, gs[i].Encode()...)
	}
	return append(out, ']')
}

// DecodeGrants strictly decodes EncodeGrants' form: at most MaxGrantList grants, each decoded by
// DecodeGrant, and the canonical encoding as a whole. An empty input is an empty list (no grants
// presented).
func DecodeGrants(b []byte) ([]Grant, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) > MaxGrantList*(MaxGrantSize+1)+2 {
		return nil, fmt.Errorf("%w: grant list of %d bytes is too large", ErrMalformed, len(b))
	}
	var raws []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raws); err != nil {
		return nil, fmt.Errorf("%w: grant list: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: grant list: trailing data", ErrMalformed)
	}
	if len(raws) > MaxGrantList {
		return nil, fmt.Errorf("%w: %d grants in one list, at most %d", ErrMalformed, len(raws), MaxGrantList)
	}
	gs := make([]Grant, 0, len(raws))
	for i, r := range raws {
		g, err := DecodeGrant(r)
		if err != nil {
			return nil, fmt.Errorf("grant %d of the list: %w", i, err)
		}
		gs = append(gs, g)
	}
	if !bytes.Equal(EncodeGrants(gs), b) {
		return nil, fmt.Errorf("%w: grant list is not in canonical form", ErrMalformed)
	}
	return gs, nil
}
