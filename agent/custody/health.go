package custody

import (
	"context"

	"github.com/custos-agent/custos/keystore"
)

// Ping checks that the keystore holding the current generation's key answers: its keystore.Pinger when
// it has one, else a read of the key's public half. The keystore is opened if it is not yet; the ping
// itself runs without holding the identity's lock, so a hung device does not stall other callers.
func (c *Custody) Ping(ctx context.Context) error {
	c.mu.Lock()
	g := c.rec.Generations[c.rec.find(Active)]
	ks, err := c.keystore(ctx, g.Keystore)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if p, ok := ks.(keystore.Pinger); ok {
		return p.Ping(ctx)
	}
	_, err = ks.PublicKey(ctx, g.Key)
	return err
}
