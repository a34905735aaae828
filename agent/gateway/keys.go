package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
)

// bucketKeys is the state database's bucket of API keys: key ID -> storedKey (JSON). The token's secret
// part is never stored, only its SHA-256.
var bucketKeys = []byte("gateway_keys")

// Token format: "cgw_" + 16 hex characters of key ID + "_" + 43 base64url characters (32 random bytes).
const (
	tokenPrefix = "cgw_"
	idLen       = 16
	secretLen   = 43
	tokenLen    = len(tokenPrefix) + idLen + 1 + secretLen
	// MaxKeys bounds how many keys (revoked included) the store holds.
	MaxKeys = 4096
	// MaxKeyRate bounds a key's own rate.
	MaxKeyRate = 100000
)

var keyName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// storedKey is one key as the state database holds it.
type storedKey struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Roles   []string  `json:"roles"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Rate    float64   `json:"rate"`
	Hash    string    `json:"hash"` // hex SHA-256 of the token's secret part
	Revoked time.Time `json:"revoked"`
}

func (k *storedKey) state(now time.Time) string {
	switch {
	case !k.Revoked.IsZero():
		return "revoked"
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return "expired"
	}
	return "valid"
}

func (k *storedKey) view(now time.Time) api.GatewayKey {
	v := api.GatewayKey{Name: k.Name, ID: k.ID, Roles: slices.Clone(k.Roles), Created: k.Created, Rate: k.Rate, State: k.state(now)}
	if !k.Expires.IsZero() {
		e := k.Expires
		v.Expires = &e
	}
	if !k.Revoked.IsZero() {
		r := k.Revoked
		v.Revoked = &r
	}
	return v
}

// Key is an authenticated API key: what a request may do.
type Key struct {
	Name  string
	ID    string
	Roles []rbac.Role
	Rate  float64 // 0: the gateway's default
}

// Keys is the store of API keys in the state database.
type Keys struct {
	db  *bbolt.DB
	now func() time.Time
}

// NewKeys opens (creating its bucket) the key store in db; now is the clock (nil: time.Now).
func NewKeys(db *bbolt.DB, now func() time.Time) (*Keys, error) {
	if now == nil {
		now = time.Now
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketKeys)
		return err
	}); err != nil {
		return nil, fmt.Errorf("gateway keys: %w", err)
	}
	return &Keys{db: db, now: now}, nil
}

// AuthError is a refused token: its Code is unauthenticated, key_revoked or key_expired.
type AuthError struct {
	Code reason.Code
	Msg  string
}

func (e *AuthError) Error() string { return e.Msg }

// Create makes a key and returns it with its token (the only copy of the secret).
func (k *Keys) Create(a api.GatewayKeyCreateArgs) (api.GatewayKeyCreated, error) {
	if !keyName.MatchString(a.Name) {
		return api.GatewayKeyCreated{}, control.Errorf(control.CodeBadRequest, "key name %q: use 1 to 64 of a-z 0-9 . _ - (starting with a letter or digit)", a.Name)
	}
	if len(a.Roles) == 0 || len(a.Roles) > len(rbac.AllRoles) {
		return api.GatewayKeyCreated{}, control.Errorf(control.CodeBadRequest, "a key needs one to %d roles (--role), e.g. gateway_service and task_submitter", len(rbac.AllRoles))
	}
	roles := make([]string, 0, len(a.Roles))
	for _, r := range a.Roles {
		role, err := rbac.ParseRole(r)
		if err != nil {
			return api.GatewayKeyCreated{}, control.Errorf(control.CodeBadRequest, "%v", err)
		}
		if !slices.Contains(roles, string(role)) {
			roles = append(roles, string(role))
		}
	}
	if a.ExpiresSeconds < 0 || a.ExpiresSeconds > int64(api.MaxGrantTTL/time.Second) {
		return api.GatewayKeyCreated{}, control.Errorf(control.CodeBadRequest, "expiry of %d seconds is outside 0..%d", a.ExpiresSeconds, int64(api.MaxGrantTTL/time.Second))
	}
	if !(a.Rate >= 0 && a.Rate <= MaxKeyRate) {
		return api.GatewayKeyCreated{}, control.Errorf(control.CodeBadRequest, "rate %v is outside 0..%d requests per second", a.Rate, MaxKeyRate)
	}
	var raw [8 + 32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return api.GatewayKeyCreated{}, err
	}
	id := hex.EncodeToString(raw[:8])
	secret := base64.RawURLEncoding.EncodeToString(raw[8:])
	clear(raw[:])
	sum := sha256.Sum256([]byte(secret))
	now := k.now().UTC().Truncate(time.Second)
	sk := &storedKey{ID: id, Name: a.Name, Roles: roles, Created: now, Rate: a.Rate, Hash: hex.EncodeToString(sum[:])}
	if a.ExpiresSeconds > 0 {
		sk.Expires = now.Add(time.Duration(a.ExpiresSeconds) * time.Second)
	}
	err := k.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		if b.Stats().KeyN >= MaxKeys {
			return control.Errorf(control.CodeBadRequest, "the store holds %d keys already: revoke and delete old ones", MaxKeys)
		}
		var dup bool
		_ = b.ForEach(func(_, v []byte) error {
			var o storedKey
			if json.Unmarshal(v, &o) == nil && o.Name == a.Name {
				dup = true
			}
			return nil
		})
		if dup {
			return control.Errorf(control.CodeBadRequest, "a key named %s exists already (revoked keys keep their name): choose another name", a.Name)
		}
		v, err := json.Marshal(sk)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), v)
	})
	if err != nil {
		return api.GatewayKeyCreated{}, err
	}
	return api.GatewayKeyCreated{Key: sk.view(now), Token: tokenPrefix + id + "_" + secret}, nil
}

func (k *Keys) all() ([]*storedKey, error) {
	var out []*storedKey
	err := k.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			var sk storedKey
			if err := strictjson.Decode(v, &sk, 1<<16); err != nil {
				return fmt.Errorf("stored gateway key: %w", err)
			}
			out = append(out, &sk)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// List returns every key, without tokens or hashes.
func (k *Keys) List() ([]api.GatewayKey, error) {
	all, err := k.all()
	if err != nil {
		return nil, err
	}
	now := k.now()
	out := []api.GatewayKey{}
	for _, sk := range all {
		out = append(out, sk.view(now))
	}
	return out, nil
}

// Revoke marks the key named name revoked: its token is refused from then on (the record stays, so the
// audit log's key names keep their meaning).
func (k *Keys) Revoke(name string) (api.GatewayKey, error) {
	var out api.GatewayKey
	err := k.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		var found *storedKey
		if err := b.ForEach(func(_, v []byte) error {
			var sk storedKey
			if err := strictjson.Decode(v, &sk, 1<<16); err != nil {
				return err
			}
			if sk.Name == name {
				found = &sk
			}
			return nil
		}); err != nil {
			return err
		}
		if found == nil {
			return control.Errorf(control.CodeNotFound, "no gateway key is named %q (agentctl gateway key list)", name)
		}
		if found.Revoked.IsZero() {
			found.Revoked = k.now().UTC().Truncate(time.Second)
		}
		v, err := json.Marshal(found)
		if err != nil {
			return err
		}
		out = found.view(k.now())
		return b.Put([]byte(found.ID), v)
	})
	return out, err
}

// Authenticate checks a bearer token: the key it names exists, the secret's hash matches (compared in
// constant time), and the key is neither revoked nor expired.
func (k *Keys) Authenticate(token string) (*Key, error) {
	if len(token) != tokenLen || !strings.HasPrefix(token, tokenPrefix) || token[len(tokenPrefix)+idLen] != '_' {
		return nil, &AuthError{reason.Unauthenticated, "the API key is not a Custos gateway token (cgw_...)"}
	}
	id, secret := token[len(tokenPrefix):len(tokenPrefix)+idLen], token[len(tokenPrefix)+idLen+1:]
	var sk storedKey
	var found bool
	if err := k.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(bucketKeys).Get([]byte(id))
		if v == nil {
			return nil
		}
		found = true
		return strictjson.Decode(v, &sk, 1<<16)
	}); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	want := make([]byte, sha256.Size)
	if found {
		if w, err := hex.DecodeString(sk.Hash); err == nil && len(w) == sha256.Size {
			want = w
		}
	}
	// Compared even for an unknown ID (against zeros), so that timing tells nothing about which IDs exist.
	if subtle.ConstantTimeCompare(sum[:], want) != 1 || !found {
		return nil, &AuthError{reason.Unauthenticated, "the API key is not known to this agent"}
	}
	switch sk.state(k.now()) {
	case "revoked":
		return nil, &AuthError{reason.KeyRevoked, fmt.Sprintf("the API key %s was revoked", sk.Name)}
	case "expired":
		return nil, &AuthError{reason.KeyExpired, fmt.Sprintf("the API key %s expired at %s", sk.Name, sk.Expires.Format(time.RFC3339))}
	}
	key := &Key{Name: sk.Name, ID: sk.ID, Rate: sk.Rate}
	for _, r := range sk.Roles {
		if role, err := rbac.ParseRole(r); err == nil {
			key.Roles = append(key.Roles, role)
		}
	}
	return key, nil
}

// Handlers implements api.Service: the control API's handlers of the key operations (api.OpGatewayKey*).
func (k *Keys) Handlers() map[string]api.Handler {
	return map[string]api.Handler{
		api.OpGatewayKeyCreate: func(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
			var a api.GatewayKeyCreateArgs
			if err := control.DecodeArgs(raw, &a); err != nil {
				return nil, err
			}
			return k.Create(a)
		},
		api.OpGatewayKeyList: func(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
			if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
				return nil, err
			}
			return k.List()
		},
		api.OpGatewayKeyRevoke: func(_ context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
			var a api.GatewayKeyArgs
			if err := control.DecodeArgs(raw, &a); err != nil {
				return nil, err
			}
			return k.Revoke(a.Name)
		},
	}
}

// errNoKey is a request without an Authorization header.
var errNoKey = &AuthError{reason.Unauthenticated, "no API key: send Authorization: Bearer <token> (agentctl gateway key create)"}

// bearer extracts the token of an Authorization header.
func bearer(h string) (string, error) {
	if h == "" {
		return "", errNoKey
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", &AuthError{reason.Unauthenticated, "the Authorization header is not \"Bearer <token>\""}
	}
	return tok, nil
}
