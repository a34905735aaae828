package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
)

// recoverHint is what a user does when a key can no longer be loaded.
const recoverHint = "recover with the recovery key (agentctl recover --recovery URI)"

// responseCode returns the TPM response code inside err, if there is one.
func responseCode(err error) (tpm2.TPMRC, bool) {
	var rc tpm2.TPMRC
	if errors.As(err, &rc) {
		return rc, true
	}
	return 0, false
}

// isRC reports whether err carries the TPM response code want (format-1 codes match whatever handle,
// parameter or session they name).
func isRC(err error, want tpm2.TPMRC) bool {
	rc, ok := responseCode(err)
	return ok && rc.Is(want)
}

// staleHandle reports whether err says that the first handle no longer names a loaded object.
func staleHandle(err error) bool {
	rc, ok := responseCode(err)
	if !ok {
		return false
	}
	if rc.Is(tpm2.TPMRCReferenceH0) {
		return true
	}
	var f1 tpm2.TPMFmt1Error
	if errors.As(rc, &f1) {
		if isHandle, idx := f1.Handle(); isHandle && idx == 1 {
			return rc.Is(tpm2.TPMRCHandle) || rc.Is(tpm2.TPMRCValue)
		}
	}
	return false
}

// describe turns an error from a TPM command into a sentence for a user. Transport failures are already
// sentences (ErrUnavailable, naming the device) and pass through. what names the operation ("load key
// \"agent-gen0\"").
func (ks *Keystore) describe(what string, err error) error {
	rc, ok := responseCode(err)
	if !ok {
		if errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrClosed) {
			return err
		}
		return fmt.Errorf("%s on the TPM at %s: %w", what, ks.dev.spec.raw, err)
	}
	dev := ks.dev.spec.raw
	switch {
	case rc == tpm2.TPMRCFailure:
		return fmt.Errorf("%s: the TPM at %s is in failure mode (TPM_RC_FAILURE); a hardware TPM needs a reboot (and a firmware check), "+
			"an swtpm started without --flags not-need-init waits for CMD_INIT on its control channel and answers this way: %w",
			what, dev, keystore.ErrUnavailable)
	case rc == tpm2.TPMRCInitialize:
		return fmt.Errorf("%s: the TPM at %s was never started (TPM_RC_INITIALIZE) and refused TPM2_Startup: %w", what, dev, keystore.ErrUnavailable)
	case rc == tpm2.TPMRCLockout:
		return fmt.Errorf("%s: the TPM at %s is in dictionary-attack lockout after too many wrong passwords (TPM_RC_LOCKOUT); "+
			"wait for the lockout to expire, or clear it with the lockout password (tpm2_dictionarylockout --clear-lockout): %w",
			what, dev, keystore.ErrUnavailable)
	case rc == tpm2.TPMRCRetry || rc == tpm2.TPMRCYielded || rc == tpm2.TPMRCTesting:
		return fmt.Errorf("%s: the TPM at %s stayed busy (%v) for %s; try again: %w", what, dev, rc, ks.dev.retryBudget, keystore.ErrUnavailable)
	case rc == tpm2.TPMRCObjectMemory || rc == tpm2.TPMRCSessionMemory || rc == tpm2.TPMRCMemory:
		return fmt.Errorf("%s: the TPM at %s has no free slot for another object (%v): another program keeps objects loaded; "+
			"on a host use the resource manager %s, with swtpm stop the other users or restart it: %w",
			what, dev, rc, DefaultDevice, keystore.ErrUnavailable)
	case rc == tpm2.TPMRCNVRate || rc == tpm2.TPMRCNVUnavailable:
		return fmt.Errorf("%s: the TPM at %s cannot write its NV memory right now (%v); try again later: %w", what, dev, rc, keystore.ErrUnavailable)
	case rc.Is(tpm2.TPMRCHierarchy):
		return fmt.Errorf("%s: the TPM at %s has its owner (storage) hierarchy disabled (TPM_RC_HIERARCHY); enable it in the firmware setup: %w",
			what, dev, keystore.ErrUnavailable)
	}
	return fmt.Errorf("%s: the TPM at %s refused the command: %w (TPM response code 0x%x)", what, dev, rc, uint32(rc))
}

// badAuth reports whether err is the TPM refusing a password.
func badAuth(err error) bool {
	return isRC(err, tpm2.TPMRCBadAuth) || isRC(err, tpm2.TPMRCAuthFail)
}
