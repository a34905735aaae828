package rbac

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// GrantVersion is the version of the grant and revocation formats this agent writes: version 2 names the
// issuer's key generation (and the digest of the key event that made it current), so that the object
// stays verifiable after the issuer rotates (docs/protocol.md, "Signing-generation validity"). Version 1
// (no generation) is still read: its generation is the one current at its issued time.
const GrantVersion = 2

// grantVersion1 is the first format, without the issuer's generation.
const grantVersion1 = 1

// MaxGrantSize bounds one encoded grant or revocation.
const MaxGrantSize = 2048

// grantIDBytes is the length of a grant ID before base64url (128 random bits).
const grantIDBytes = 16

// ErrMalformed marks every decoding error of grants, revocations and the other signed records of this
// package.
var ErrMalformed = errors.New("malformed authorization record")

// KeyResolver returns what this agent knows of an issuer's key event log (in the agent: its own log, or the
// issuer's verified log from the peer cache, or identity.SignedAtOnly when it has none; in tests: often
// InceptionKey). Signatures are judged against it by identity.State.VerifySignedAt.
type KeyResolver func(issuer identity.ID) (identity.State, error)

// InceptionKey is the KeyResolver for identities whose log is unknown: generation 0, the ID's own key.
func InceptionKey(issuer identity.ID) (identity.State, error) {
	return identity.SignedAtOnly(issuer), nil
}

// IssuerKey names the key that signs an object: the issuer's agent ID, its generation, and the digest of the
// key event that made that generation current (base64url; "" when unknown).
type IssuerKey struct {
	ID         identity.ID
	Generation uint64
	Head       string
}

// IssuerOf returns the IssuerKey of the current generation of a verified key event log state.
func IssuerOf(st identity.State) IssuerKey {
	return IssuerKey{ID: st.ID, Generation: st.Generation, Head: identity.Base64().EncodeToString(st.Head[:])}
}

// Grant gives a role to an agent until it expires. Its JSON form (Encode) is what is stored and exchanged;
// what is signed is the length-prefixed encoding of SigningInput under signature.Grant.
type Grant struct {
	Version int    `json:"v"`
	ID      string `json:"id"`      // base64url of 16 random bytes
	Subject string `json:"subject"` // agent ID the role is given to
	Role    Role   `json:"role"`
	Issuer  string `json:"issuer"`         // agent ID of the system administrator who signed
	Issued  int64  `json:"issued"`         // Unix seconds
	Expires int64  `json:"expires"`        // Unix seconds, after Issued
	Gen     uint64 `json:"gen,omitempty"`  // v2: the issuer's key generation that signs (omitted when 0)
	Head    string `json:"head,omitempty"` // v2: base64url digest of the key event that made Gen current
	Sig     string `json:"sig"`            // base64url signature by Issuer (Ed25519 raw, ECDSA DER)
}

// SigningInput is exactly what the issuer signs.
func (g *Grant) SigningInput() *signature.Input {
	in := signature.NewInput(signature.Grant).
		Uint64(uint64(g.Version)).
		String(g.ID).
		String(g.Subject).
		String(string(g.Role)).
		String(g.Issuer).
		Int64(g.Issued).
		Int64(g.Expires)
	if g.Version >= GrantVersion {
		in.Uint64(g.Gen).String(g.Head)
	}
	return in
}

// SignedBy is the generation the grant names (identity.NoGeneration for a version 1 grant).
func (g *Grant) SignedBy() int64 { return signedBy(g.Version, g.Gen) }

func signedBy(v int, gen uint64) int64 {
	if v == grantVersion1 || gen > math.MaxInt64 {
		return identity.NoGeneration
	}
	return int64(gen)
}

// Digest is SHA-256 over the encoded grant (signature included): the key of the verification cache.
func (g *Grant) Digest() [32]byte { return sha256.Sum256(g.Encode()) }

// Encode returns the compact JSON form (one line, fields in the order above).
func (g *Grant) Encode() []byte { return mustJSON(g) }

// IssueGrant makes and signs a grant of role to subject, valid from now for ttl, as generation 0 of
// issuerID (an identity that never rotated; IssueGrantBy names the generation).
func IssueGrant(ctx context.Context, issuer keystore.Signer, issuerID identity.ID, subject identity.ID, role Role, now time.Time, ttl time.Duration) (Grant, error) {
	return IssueGrantBy(ctx, issuer, IssuerKey{ID: issuerID}, subject, role, now, ttl)
}

// IssueGrantBy makes and signs a grant of role to subject, valid from now for ttl. issuer signs with the
// key of generation by.Generation of agent by.ID (the grant names both, and by.Head).
func IssueGrantBy(ctx context.Context, issuer keystore.Signer, by IssuerKey, subject identity.ID, role Role, now time.Time, ttl time.Duration) (Grant, error) {
	issuerID := by.ID
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
		Gen:     by.Generation,
		Head:    by.Head,
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
	if strictjson.Canonical(b, g.Encode()) != nil {
		return Grant{}, fmt.Errorf("%w: grant is not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return g, nil
}

func (g *Grant) check() error {
	if err := checkVersion(g.Version, g.Gen, g.Head); err != nil {
		return err
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

// checkVersion checks the version and the generation fields it allows: version 1 has none, version 2 may
// name a head (a 32-byte digest).
func checkVersion(v int, gen uint64, head string) error {
	switch v {
	case grantVersion1:
		if gen != 0 || head != "" {
			return errors.New("version 1 carries no issuer generation")
		}
	case GrantVersion:
		if gen > math.MaxInt64 {
			return fmt.Errorf("issuer generation %d is out of range", gen)
		}
		if head != "" {
			if b, err := identity.Base64().DecodeString(head); err != nil || len(b) != 32 {
				return errors.New("head must be a SHA-256 digest in unpadded base64url")
			}
		}
	default:
		return fmt.Errorf("version %d (this agent speaks %d and reads %d)", v, GrantVersion, grantVersion1)
	}
	return nil
}

// Revocation withdraws a grant for good. Any configured system administrator may sign one.
type Revocation struct {
	Version int    `json:"v"`
	Grant   string `json:"grant"`          // ID of the revoked grant
	Issuer  string `json:"issuer"`         // agent ID of the administrator who signed
	Issued  int64  `json:"issued"`         // Unix seconds
	Gen     uint64 `json:"gen,omitempty"`  // v2: the issuer's key generation that signs (omitted when 0)
	Head    string `json:"head,omitempty"` // v2: base64url digest of the key event that made Gen current
	Sig     string `json:"sig"`
}

// SignedBy is the generation the revocation names (identity.NoGeneration for version 1).
func (r *Revocation) SignedBy() int64 { return signedBy(r.Version, r.Gen) }

// SigningInput is exactly what the administrator signs (purpose signature.GrantRevocation).
func (r *Revocation) SigningInput() *signature.Input {
	in := signature.NewInput(signature.GrantRevocation).
		Uint64(uint64(r.Version)).
		String(r.Grant).
		String(r.Issuer).
		Int64(r.Issued)
	if r.Version >= GrantVersion {
		in.Uint64(r.Gen).String(r.Head)
	}
	return in
}

// Encode returns the compact JSON form.
func (r *Revocation) Encode() []byte { return mustJSON(r) }

// IssueRevocation makes and signs the revocation of grantID as generation 0 of issuerID (IssueRevocationBy
// names the generation).
func IssueRevocation(ctx context.Context, issuer keystore.Signer, issuerID identity.ID, grantID string, now time.Time) (Revocation, error) {
	return IssueRevocationBy(ctx, issuer, IssuerKey{ID: issuerID}, grantID, now)
}

// IssueRevocationBy makes and signs the revocation of grantID with the key of generation by.Generation.
func IssueRevocationBy(ctx context.Context, issuer keystore.Signer, by IssuerKey, grantID string, now time.Time) (Revocation, error) {
	if err := checkID(grantID); err != nil {
		return Revocation{}, err
	}
	r := Revocation{Version: GrantVersion, Grant: grantID, Issuer: by.ID.String(), Issued: now.Unix(), Gen: by.Generation, Head: by.Head}
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
	if strictjson.Canonical(b, r.Encode()) != nil {
		return Revocation{}, fmt.Errorf("%w: revocation is not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return r, nil
}

func (r *Revocation) check() error {
	if err := checkVersion(r.Version, r.Gen, r.Head); err != nil {
		return err
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

// CheckGrantID refuses a string that is not a grant ID (128 bits in unpadded base64url).
func CheckGrantID(id string) error { return checkID(id) }

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
	if err := strictjson.Decode(b, v, MaxGrantSize); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
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
	if err := strictjson.Decode(b, &raws, 0); err != nil {
		return nil, fmt.Errorf("%w: grant list: %v", ErrMalformed, err)
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
	if strictjson.Canonical(b, EncodeGrants(gs)) != nil {
		return nil, fmt.Errorf("%w: grant list is not in canonical form", ErrMalformed)
	}
	return gs, nil
}

// MaxPresentation bounds the encoded grants and issuer logs an initiator presents at the handshake (the
// handshake's opaque grants field is at most 64 KiB).
const MaxPresentation = 64 << 10

// Presentation is what an initiator presents at the handshake: its grants and, for grants that name an
// issuer generation above 0, the issuer's key event log (JSON lines), so that a verifier that never met
// the issuer can judge them (docs/protocol.md, "Signing-generation validity"; docs/adr/0050).
type Presentation struct {
	Grants []Grant
	Logs   [][]byte // key event logs of issuers, JSON lines (identity.Log.Encode)
}

// presentationJSON is the wire form of a Presentation with logs.
type presentationJSON struct {
	Grants []json.RawMessage `json:"grants"`
	Logs   []string          `json:"logs"` // base64url of each log's JSON lines
}

// EncodePresentation is the handshake form: without logs, exactly EncodeGrants (a JSON array, what agents
// before grant version 2 read); with logs, the object {"grants":[...],"logs":[...]}.
func EncodePresentation(p Presentation) []byte {
	if len(p.Logs) == 0 {
		return EncodeGrants(p.Grants)
	}
	pj := presentationJSON{Grants: make([]json.RawMessage, len(p.Grants)), Logs: make([]string, len(p.Logs))}
	for i := range p.Grants {
		pj.Grants[i] = p.Grants[i].Encode()
	}
	for i, l := range p.Logs {
		pj.Logs[i] = identity.Base64().EncodeToString(l)
	}
	return mustJSON(pj)
}

// DecodePresentation strictly decodes EncodePresentation's forms: at most MaxPresentation bytes, at most
// MaxGrantList grants and as many logs, each grant by DecodeGrant, and the canonical encoding. The logs
// are returned as bytes; the caller decodes and verifies them (identity.DecodeLog, Log.Verify).
func DecodePresentation(b []byte) (Presentation, error) {
	if len(b) > MaxPresentation {
		return Presentation{}, fmt.Errorf("%w: grant presentation of %d bytes exceeds %d", ErrMalformed, len(b), MaxPresentation)
	}
	if len(b) == 0 || b[0] != '{' {
		gs, err := DecodeGrants(b)
		return Presentation{Grants: gs}, err
	}
	var pj presentationJSON
	if err := strictjson.Decode(b, &pj, 0); err != nil {
		return Presentation{}, fmt.Errorf("%w: grant presentation: %v", ErrMalformed, err)
	}
	if len(pj.Grants) > MaxGrantList || len(pj.Logs) > MaxGrantList || len(pj.Logs) == 0 {
		return Presentation{}, fmt.Errorf("%w: %d grants and %d logs in one presentation (1 to %d logs, at most %d grants)", ErrMalformed, len(pj.Grants), len(pj.Logs), MaxGrantList, MaxGrantList)
	}
	var p Presentation
	for i, r := range pj.Grants {
		g, err := DecodeGrant(r)
		if err != nil {
			return Presentation{}, fmt.Errorf("grant %d of the presentation: %w", i, err)
		}
		p.Grants = append(p.Grants, g)
	}
	for i, s := range pj.Logs {
		l, err := identity.Base64().DecodeString(s)
		if err != nil || len(l) == 0 {
			return Presentation{}, fmt.Errorf("%w: log %d of the presentation is not unpadded base64url", ErrMalformed, i)
		}
		p.Logs = append(p.Logs, l)
	}
	if strictjson.Canonical(b, EncodePresentation(p)) != nil {
		return Presentation{}, fmt.Errorf("%w: grant presentation is not in canonical form", ErrMalformed)
	}
	return p, nil
}
