package pkcs11

import p11 "github.com/miekg/pkcs11"

// PKCS#11 v3.0 constants that github.com/miekg/pkcs11 v1.1.2 (a v2.40 binding) does not define.
const (
	ckkECEdwards           = 0x00000040 // CKK_EC_EDWARDS
	ckmECEdwardsKeyPairGen = 0x00001055 // CKM_EC_EDWARDS_KEY_PAIR_GEN
	ckmEdDSA               = 0x00001057 // CKM_EDDSA
	ckfHWSlot              = p11.CKF_HW_SLOT
	ckEffectivelyInfinite  = p11.CK_EFFECTIVELY_INFINITE
	ckUnavailableInfo      = p11.CK_UNAVAILABLE_INFORMATION
)

// CKA_EC_PARAMS values. SoftHSM 2.6.1 accepts, for Ed25519, both the DER OID id-Ed25519 (1.3.101.112,
// RFC 8410) and the DER PrintableString "edwards25519" (PKCS#11 3.0 section 2.3.10); it refuses the
// curve25519 OID 1.3.6.1.4.1.11591.15.1 with CKR_GENERAL_ERROR (measured). We write the OID and read
// either form.
var (
	oidEd25519          = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	printableEdwards255 = append([]byte{0x13, 0x0c}, "edwards25519"...)
	oidP256             = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07} // prime256v1
)

const (
	// idLen is the length of the random CKA_ID given to both halves of every key pair we generate.
	idLen = 16
	// maxTokenLabel is the size of CK_TOKEN_INFO.label.
	maxTokenLabel = 32
	// maxKeyLabel bounds CKA_LABEL of the keys we generate (the attribute itself is unbounded).
	maxKeyLabel = 128
	// defaultMaxSessions bounds the session pool of one keystore (besides its login session).
	defaultMaxSessions = 32
)
