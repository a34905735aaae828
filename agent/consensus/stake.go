package consensus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// StakeTableVersion is the only version of the stake table format.
const StakeTableVersion = 1

// Limits of a stake table.
const (
	MaxStakeEntries   = 10000
	MaxStakeTableSize = 1 << 20
)

// ErrMalformed marks every decoding error of a stake table.
var ErrMalformed = errors.New("malformed stake table")

// ErrStakeTable marks a stake table that decodes but may not be used (issuer, signature, expiry).
var ErrStakeTable = errors.New("stake table refused")

// Stake is one agent's stake: a positive amount in whatever unit the administrators agree on.
type Stake struct {
	Agent  string `json:"agent"`
	Amount uint64 `json:"amount"`
}

// StakeTable is the administrator-signed list of stakes used by stake-weighted and hybrid votes. Entries
// are sorted by agent ID and unique, so the encoding is canonical.
type StakeTable struct {
	Version int     `json:"v"`
	Issuer  string  `json:"issuer"`
	Issued  int64   `json:"issued"`
	Expires int64   `json:"expires"`
	Stakes  []Stake `json:"stakes"`
	Sig     string  `json:"sig"`
}

// SigningInput is exactly what the administrator signs (purpose signature.StakeTable).
func (t *StakeTable) SigningInput() *signature.Input {
	in := signature.NewInput(signature.StakeTable).
		Uint64(uint64(t.Version)).
		String(t.Issuer).
		Int64(t.Issued).
		Int64(t.Expires).
		Uint64(uint64(len(t.Stakes)))
	for _, s := range t.Stakes {
		in.String(s.Agent).Uint64(s.Amount)
	}
	return in
}

// Encode returns the compact JSON form.
func (t *StakeTable) Encode() []byte {
	b, err := json.Marshal(t)
	if err != nil {
		panic("consensus: marshal stake table: " + err.Error())
	}
	return b
}

// Amount returns an agent's stake (0 when it has none).
func (t *StakeTable) Amount(agent identity.ID) uint64 {
	if t == nil {
		return 0
	}
	a := agent.String()
	i, ok := slices.BinarySearchFunc(t.Stakes, a, func(s Stake, a string) int { return strings.Compare(s.Agent, a) })
	if !ok {
		return 0
	}
	return t.Stakes[i].Amount
}

// SignStakeTable sorts stakes, checks them and signs the table with an administrator's key.
func SignStakeTable(ctx context.Context, admin keystore.Signer, adminID identity.ID, stakes []Stake, now time.Time, ttl time.Duration) (StakeTable, error) {
	t := StakeTable{Version: StakeTableVersion, Issuer: adminID.String(), Issued: now.Unix(), Expires: now.Add(ttl).Unix(), Stakes: append([]Stake{}, stakes...)}
	slices.SortFunc(t.Stakes, func(a, b Stake) int { return strings.Compare(a.Agent, b.Agent) })
	if err := t.check(); err != nil {
		return StakeTable{}, err
	}
	sig, err := signature.SignInput(ctx, admin, t.SigningInput())
	if err != nil {
		return StakeTable{}, fmt.Errorf("sign stake table: %w", err)
	}
	t.Sig = identity.Base64().EncodeToString(sig)
	return t, nil
}

// DecodeStakeTable strictly decodes a stake table: size limit, no unknown fields, no trailing data,
// version 1, valid IDs, entries sorted and unique with positive amounts, a signature, and the canonical
// encoding. It checks form, not the signature (VerifyStakeTable does).
func DecodeStakeTable(b []byte) (StakeTable, error) {
	var t StakeTable
	if len(b) > MaxStakeTableSize {
		return t, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxStakeTableSize)
	}
	if err := strictjson.Decode(b, &t, 0); err != nil {
		return StakeTable{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := t.check(); err != nil {
		return StakeTable{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if s, err := identity.Base64().DecodeString(t.Sig); err != nil || len(s) == 0 || len(s) > 128 {
		return StakeTable{}, fmt.Errorf("%w: signature must be 1 to 128 bytes in unpadded base64url", ErrMalformed)
	}
	if strictjson.Canonical(b, t.Encode()) != nil {
		return StakeTable{}, fmt.Errorf("%w: not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return t, nil
}

func (t *StakeTable) check() error {
	if t.Version != StakeTableVersion {
		return fmt.Errorf("version %d (this agent speaks %d)", t.Version, StakeTableVersion)
	}
	if _, err := identity.ParseID(t.Issuer); err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	if t.Issued <= 0 || t.Expires <= t.Issued {
		return fmt.Errorf("validity [%d, %d] is empty: expires must be after issued", t.Issued, t.Expires)
	}
	if t.Stakes == nil {
		return errors.New(`"stakes" must be a list (it may be empty)`)
	}
	if len(t.Stakes) > MaxStakeEntries {
		return fmt.Errorf("%d entries exceeds %d", len(t.Stakes), MaxStakeEntries)
	}
	for i, s := range t.Stakes {
		if _, err := identity.ParseID(s.Agent); err != nil {
			return fmt.Errorf("entry %d: %v", i, err)
		}
		if s.Amount == 0 {
			return fmt.Errorf("entry %d (%s): stake must be positive (leave the agent out instead)", i, s.Agent)
		}
		if i > 0 && strings.Compare(t.Stakes[i-1].Agent, s.Agent) >= 0 {
			return fmt.Errorf("entry %d (%s): entries must be sorted by agent ID with no duplicates", i, s.Agent)
		}
	}
	return nil
}

// MaxStakeFutureSkew is how far in the future (by this agent's clock) a stake table's Issued may lie.
const MaxStakeFutureSkew = 5 * time.Minute

// VerifyStakeTable checks that t is signed by one of admins under the issuer's key event log (resolve
// returns what this agent knows of it; identity.State.VerifySignedAt judges the signature at t.Issued), is
// not dated more than MaxStakeFutureSkew ahead of now and has not expired. Errors wrap ErrStakeTable and
// say why.
func VerifyStakeTable(t StakeTable, admins []identity.ID, resolve func(identity.ID) (identity.State, error), now time.Time) error {
	if err := t.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrStakeTable, err)
	}
	issuer, _ := identity.ParseID(t.Issuer)
	if !slices.ContainsFunc(admins, issuer.Equal) {
		return fmt.Errorf("%w: signed by %s, which is not a configured system administrator", ErrStakeTable, t.Issuer)
	}
	st, err := resolve(issuer)
	if err != nil {
		return fmt.Errorf("%w: the issuer's key event log is unavailable: %v", ErrStakeTable, err)
	}
	sig, err := identity.Base64().DecodeString(t.Sig)
	if err != nil {
		return fmt.Errorf("%w: signature is not unpadded base64url", ErrStakeTable)
	}
	if _, err := st.VerifySignedAt(identity.NoGeneration, "", t.Issued, func(pub keystore.PublicKey) error {
		return signature.VerifyInput(pub, t.SigningInput(), sig)
	}); err != nil {
		return fmt.Errorf("%w: %v", ErrStakeTable, err)
	}
	if t.Issued > now.Add(MaxStakeFutureSkew).Unix() {
		return fmt.Errorf("%w: issued at %s, more than %s ahead of this agent's clock (%s): check the administrator's clock",
			ErrStakeTable, time.Unix(t.Issued, 0).UTC().Format(time.RFC3339), MaxStakeFutureSkew, now.UTC().Format(time.RFC3339))
	}
	if now.Unix() >= t.Expires {
		return fmt.Errorf("%w: expired at %s: ask an administrator for a new table", ErrStakeTable, time.Unix(t.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}
