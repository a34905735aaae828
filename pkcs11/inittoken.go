package pkcs11

import (
	"context"
	"unsafe"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// InitToken initialises a new token with label on a free slot of the module at modulePath (C_InitToken
// with soPIN, then C_InitPIN with userPIN) and returns the token's serial number. It is for provisioning
// SoftHSM tokens (and for test harnesses) without putting PINs on a command line; it goes through the
// process-wide module registry, so it is safe while keystores of the same module are open. The PINs are
// not kept; the caller wipes them. A label already used by an initialised token gives ErrExists.
func InitToken(ctx context.Context, modulePath, label string, soPIN, userPIN []byte) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	switch {
	case label == "" || len(label) > maxTokenLabel:
		return "", keystore.Errorf(keystore.ErrBadURI, "token label %q must be 1 to %d bytes", label, maxTokenLabel)
	case len(soPIN) == 0 || len(userPIN) == 0:
		return "", keystore.Errorf(keystore.ErrWrongSecret, "token %q: the SO PIN and the user PIN must not be empty", label)
	}
	mod, _, err := acquireModule(modulePath)
	if err != nil {
		return "", err
	}
	defer mod.release()
	mod.admin.Lock()
	defer mod.admin.Unlock()

	var serial string
	for attempt := 0; ; attempt++ {
		free := false
		var gen uint64
		err := mod.call(func(c *p11.Ctx, g uint64) error {
			gen = g
			matches, _, err := findTokens(c, label, "")
			if err != nil {
				return err
			}
			if len(matches) > 0 {
				return keystore.Errorf(keystore.ErrExists, "a token labelled %q already exists (serial %s): choose another label",
					label, matches[0].info.SerialNumber)
			}
			slots, err := c.GetSlotList(true)
			if err != nil {
				return err
			}
			for _, s := range slots {
				ti, err := c.GetTokenInfo(s)
				if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED != 0 {
					continue
				}
				free = true
				return initToken(c, s, label, soPIN, userPIN, &serial)
			}
			return nil
		})
		if err != nil {
			return "", err
		}
		if free {
			return serial, nil
		}
		if attempt > 0 {
			return "", keystore.Errorf(keystore.ErrUnavailable, "PKCS#11 module %s has no free slot for a new token", modulePath)
		}
		// SoftHSM adds its spare empty slot at C_Initialize: look again after a re-initialisation.
		if err := mod.reinit(gen); err != nil {
			return "", err
		}
	}
}

func initToken(c *p11.Ctx, slot uint, label string, soPIN, userPIN []byte, serial *string) error {
	so := unsafe.String(unsafe.SliceData(soPIN), len(soPIN))
	user := unsafe.String(unsafe.SliceData(userPIN), len(userPIN))
	if err := c.InitToken(slot, so, label); err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "C_InitToken for %q: %v", label, err)
	}
	sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "open a session on new token %q: %v", label, err)
	}
	defer func() { _ = c.CloseSession(sh) }()
	if err := c.Login(sh, p11.CKU_SO, so); err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "SO login on new token %q: %v", label, err)
	}
	if err := c.InitPIN(sh, user); err != nil {
		_ = c.Logout(sh)
		return keystore.Errorf(keystore.ErrUnavailable, "C_InitPIN on new token %q: %v", label, err)
	}
	_ = c.Logout(sh)
	ti, err := c.GetTokenInfo(slot)
	if err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "read new token %q: %v", label, err)
	}
	*serial = ti.SerialNumber
	return nil
}
