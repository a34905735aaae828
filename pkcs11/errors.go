package pkcs11

import (
	"errors"

	p11 "github.com/miekg/pkcs11"
)

// errClass says what a failed PKCS#11 call means for the session and the module.
type errClass int

const (
	// classOther: the operation failed; the session is dropped, nothing else is repaired.
	classOther errClass = iota
	// classSession: sessions, login or object handles are gone (CKR_SESSION_HANDLE_INVALID,
	// CKR_USER_NOT_LOGGED_IN, CKR_OBJECT_HANDLE_INVALID, ...): log in again, look handles up again, retry once.
	classSession
	// classDevice: the module or the device is in trouble (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
	// CKR_CRYPTOKI_NOT_INITIALIZED, ...): re-initialise the module, log in again, retry once.
	classDevice
)

// rv extracts the PKCS#11 return value from err.
func rv(err error) (p11.Error, bool) {
	var e p11.Error
	if errors.As(err, &e) {
		return e, true
	}
	return 0, false
}

// isRV reports whether err carries one of the return values.
func isRV(err error, codes ...p11.Error) bool {
	e, ok := rv(err)
	if !ok {
		return false
	}
	for _, c := range codes {
		if e == c {
			return true
		}
	}
	return false
}

func classify(err error) errClass {
	e, ok := rv(err)
	if !ok {
		return classOther
	}
	switch e {
	case p11.CKR_DEVICE_ERROR, p11.CKR_DEVICE_MEMORY, p11.CKR_DEVICE_REMOVED,
		p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED,
		p11.CKR_SLOT_ID_INVALID, p11.CKR_GENERAL_ERROR:
		return classDevice
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID, p11.CKR_SESSION_COUNT:
		return classSession
	}
	return classOther
}

// wrongPIN reports whether err says the PIN was refused.
func wrongPIN(err error) bool {
	return isRV(err, p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_LOCKED,
		p11.CKR_PIN_EXPIRED)
}

// errStale is returned inside an operation whose session belongs to an older module initialisation; the
// operation is run again on a fresh session without counting as a retry.
var errStale = errors.New("session from an earlier module initialisation")
