// Package pkcs11 is the PKCS#11 keystore backend: Ed25519 (PKCS#11 v3 CKM_EDDSA) and ECDSA P-256
// (CKM_ECDSA) keys that live on a token (SoftHSM in tests and CI, an HSM or smart card in production),
// reached through github.com/miekg/pkcs11. See docs/adr/0002-pkcs11-ed25519-and-crypto11.md for why
// P-256 does not go through crypto11.
//
// # URIs
//
// Keystores and keys are addressed by RFC 7512 URIs:
//
//	pkcs11:token=custos?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/custos/pin
//	pkcs11:token=custos;object=agent-gen0;id=%8F%12...?module-path=...&pin-source=env:CUSTOS_PIN
//
// Tokens are found by label (token=) and optionally serial (serial=), never by slot number. Key URIs
// returned by Generate and List carry module-path and pin-source, so a key can be reopened from its URI
// alone; a URI never carries a PIN (pin-value is refused). Without pin-source the PIN comes from
// OpenOptions.Prompt, and without that Open fails with a message naming pin-source.
//
// # Keys
//
// Private keys are made with CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE true and CKA_EXTRACTABLE false;
// public keys with CKA_TOKEN true; both halves share CKA_LABEL (the requested label) and a random
// 16-byte CKA_ID. Keys are looked up by CKA_ID / CKA_LABEL directly, never by enumerating key pairs.
//
// # Optional capabilities
//
// The keystore.Keystore that Open returns also implements, found by type assertion:
//   - keystore.Pinger: Ping checks the token answers and the keystore is logged in;
//   - AttributeReader: KeyAttributes reads CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE,
//     CKA_NEVER_EXTRACTABLE and CKA_ALWAYS_SENSITIVE of a key's private object.
//
// # Sessions, concurrency and recovery
//
// A module is initialised once per process and shared by every keystore using the same library file
// (a process-wide registry; the last Close finalises it). Each keystore keeps one login session and a
// pool of operation sessions, safe for any number of goroutines (at most 32 sessions in use at once;
// more callers wait, honouring their context). A session whose operation fails is closed and replaced.
// After a session- or login-class error (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,
// CKR_USER_NOT_LOGGED_IN, CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID) the keystore logs in again
// (reading the PIN from its source once more, or prompting again); after a device-class error
// (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_TOKEN_NOT_PRESENT,
// CKR_GENERAL_ERROR, ...) it first re-initialises the module. Then cached object handles are looked up
// again and the operation is retried once. A token that is not found when the module is already running
// triggers one re-initialisation too, because SoftHSM enumerates tokens only at C_Initialize.
//
// Known limits: github.com/miekg/pkcs11 takes the PIN as a Go string and copies it into C memory that it
// frees without zeroing; this package passes a view of its own PIN buffer (no extra Go copy) and zeroes
// that buffer right after C_Login. Login state is per token per process: a second keystore on a token
// already logged in by this process gets CKR_USER_ALREADY_LOGGED_IN, and its PIN is then checked
// against an HMAC (random per-process key) of the PIN that logged in.
package pkcs11

import "github.com/custos-agent/custos/keystore"

var (
	_ keystore.Keystore = (*tokenKeystore)(nil)
	_ keystore.Pinger   = (*tokenKeystore)(nil)
	_ AttributeReader   = (*tokenKeystore)(nil)
	_ keystore.Signer   = (*signer)(nil)
	_ keystore.OpenFunc = Open
)
