package custody

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// mutate runs fn with the process lock and the home directory's lock held, on freshly loaded and
// reconciled state (another process may have changed it since Open).
func (c *Custody) mutate(ctx context.Context, fn func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := lock(ctx, c.home)
	if err != nil {
		return err
	}
	defer unlock()
	if err := c.load(ctx); err != nil {
		return err
	}
	return fn()
}

// Rotate moves the identity to its pre-committed next key: it makes a new next key, writes a rotation
// event signed by the current and the new key, and retires the old key (destroyed after req.Grace, or at
// once with req.DestroyOld). It returns the new current generation.
func (c *Custody) Rotate(ctx context.Context, req RotateRequest) (Generation, error) {
	if req.Grace < 0 {
		return Generation{}, fmt.Errorf("rotate: the grace period %v is negative", req.Grace)
	}
	var out Generation
	err := c.mutate(ctx, func() error {
		st := c.st
		cur := c.rec.Generations[c.rec.find(Active)]
		nxt := c.rec.Generations[c.rec.find(Next)]
		// Both signers first: a wrong PIN or a missing key stops here, before anything is written.
		prior, err := c.signerFor(ctx, cur)
		if err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
		newSigner, err := c.signerFor(ctx, nxt)
		if err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
		ks, err := c.keystore(ctx, c.rec.Keystore)
		if err != nil {
			return fmt.Errorf("rotate: %w", err)
		}
		alg := nxt.Algorithm
		if !slices.Contains(ks.Info().Algorithms, alg) {
			return keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "rotate: the keystore cannot make %s keys", alg)
		}
		now := c.opts.now().UTC().Truncate(time.Second)
		until := now.Add(req.Grace)
		if req.DestroyOld {
			until = now
		}
		p := &pending{
			Op: opRotate, Generation: st.Generation + 1, Keystore: c.rec.Keystore,
			Keys:        []pendingKey{{Generation: st.Generation + 2, Label: newLabel(fmt.Sprintf("g%d", st.Generation+2)), Algorithm: alg}},
			RetireUntil: until, DestroyOld: req.DestroyOld, Started: now,
		}
		err = c.commit(ctx, c.rec.clone(), p, func([]keystore.Key) (keystore.Signer, error) { return newSigner, nil },
			func(keys []keystore.Key, _ keystore.Signer) (identity.Event, error) {
				return identity.Rotate(ctx, st, prior, newSigner, keys[0].Public, eventTime(now, st))
			})
		if err != nil {
			return err
		}
		out = c.rec.Generations[c.rec.find(Active)]
		return nil
	})
	return out, err
}

// Recover replaces a lost current key: the recovery key committed in the log signs a recovery event for a
// new key made in the identity's keystore (or req.Keystore); the ID does not change. The old keys are
// retired for immediate destruction. It returns the new current generation.
func (c *Custody) Recover(ctx context.Context, req RecoverRequest) (Generation, error) {
	var out Generation
	err := c.mutate(ctx, func() error {
		st := c.st
		if st.RecoveryDigest == "" {
			return fmt.Errorf("recover: %w: it cannot be recovered; make a new identity with agentctl init --force", identity.ErrNoRecovery)
		}
		ruri := req.Recovery
		if ruri == "" {
			if c.rec.Recovery == nil {
				return errors.New("recover: no recovery key URI given and none recorded in identity.json: use --recovery URI")
			}
			ruri = c.rec.Recovery.Key
		}
		rs, rk, err := c.findRecovery(ctx, ruri, st.RecoveryDigest)
		if err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		ksURI := req.Keystore
		if ksURI == "" {
			ksURI = c.rec.Keystore
		}
		ks, err := c.keystore(ctx, ksURI)
		if err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		alg := c.rec.Generations[c.rec.find(Active)].Algorithm
		if !slices.Contains(ks.Info().Algorithms, alg) {
			return keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "recover: the keystore cannot make %s keys", alg)
		}
		now := c.opts.now().UTC().Truncate(time.Second)
		p := &pending{
			Op: opRecover, Generation: st.Generation + 1, Keystore: ks.Info().URI,
			Keys: []pendingKey{
				{Generation: st.Generation + 1, Label: newLabel(fmt.Sprintf("g%d", st.Generation+1)), Algorithm: alg},
				{Generation: st.Generation + 2, Label: newLabel(fmt.Sprintf("g%d", st.Generation+2)), Algorithm: alg},
			},
			RetireUntil: now, DestroyOld: true, Started: now,
		}
		base := c.rec.clone()
		base.Recovery = &rk
		err = c.commit(ctx, base, p,
			func(keys []keystore.Key) (keystore.Signer, error) {
				s, err := ks.Signer(ctx, keys[0].URI)
				if err == nil && !s.Public().Equal(keys[0].Public) {
					err = keystore.Errorf(keystore.ErrCorrupt, "the keystore's signer for %s is not the generated key", keys[0].URI)
				}
				return s, err
			},
			func(keys []keystore.Key, s keystore.Signer) (identity.Event, error) {
				return identity.Recover(ctx, st, rs, s, keys[1].Public, rs.Public(), eventTime(now, st))
			})
		if err != nil {
			return err
		}
		out = c.rec.Generations[c.rec.find(Active)]
		return nil
	})
	return out, err
}

// commit runs the crash-safe sequence shared by Rotate and Recover:
//
//  1. identity.json gets the pending operation (labels of the keys to make): intent;
//  2. the keys are made, and identity.json records their URIs and public keys;
//  3. the event is signed and kel.jsonl replaced with the longer log: the commit point;
//  4. identity.json says what the log now says (finalize);
//  5. keys due for destruction are destroyed.
//
// A crash anywhere leaves a state that load() (run by every Open) completes or undoes. A real error
// (not a simulated crash) does the same at once, so that the caller sees the identity as it was or as
// it became, never half-way.
func (c *Custody) commit(ctx context.Context, base *record, p *pending,
	newSigner func([]keystore.Key) (keystore.Signer, error),
	makeEvent func([]keystore.Key, keystore.Signer) (identity.Event, error),
) error {
	recPath, kelPath := paths(c.home)
	op, fail := p.Op, c.opts.fail
	bail := func(err error) error {
		if isCrash(err) {
			return err
		}
		if rerr := c.load(context.WithoutCancel(ctx)); rerr != nil {
			return fmt.Errorf("%s: %w (and cleaning up failed: %v)", op, err, rerr)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := fail(op + ":begin"); err != nil {
		return err
	}
	r := base
	r.Pending = p
	if err := writeFile(recPath, r.encode(), op+":intent", fail); err != nil {
		return bail(err)
	}
	ks, err := c.keystore(ctx, p.Keystore)
	if err != nil {
		return bail(err)
	}
	var keys []keystore.Key
	for i := range p.Keys {
		if err := fail(fmt.Sprintf("%s:generate-%d", op, i)); err != nil {
			return err
		}
		k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: p.Keys[i].Algorithm, Label: p.Keys[i].Label})
		if err != nil {
			return bail(fmt.Errorf("make the generation %d key: %w", p.Keys[i].Generation, err))
		}
		p.Keys[i].Key, p.Keys[i].PublicKey = k.URI, identity.EncodeKey(k.Public)
		keys = append(keys, k)
	}
	if err := writeFile(recPath, r.encode(), op+":record-keys", fail); err != nil {
		return bail(err)
	}
	s, err := newSigner(keys)
	if err != nil {
		return bail(err)
	}
	if err := fail(op + ":sign"); err != nil {
		return err
	}
	ev, err := makeEvent(keys, s)
	if err != nil {
		return bail(fmt.Errorf("sign the %s event: %w", op, err))
	}
	st, err := c.st.Apply(&ev)
	if err != nil {
		return bail(fmt.Errorf("the new %s event does not verify: %w", op, err))
	}
	l := identity.Log{Events: append(slices.Clone(c.log.Events), ev)}
	if err := writeFile(kelPath, l.Encode(), op+":log", fail); err != nil {
		return bail(err)
	}
	final := finalize(r)
	if err := final.check(st); err != nil {
		return bail(fmt.Errorf("internal error: the finished record disagrees with the log: %w", err))
	}
	if err := writeFile(recPath, final.encode(), op+":commit", fail); err != nil {
		return bail(err)
	}
	c.rec, c.log, c.st = final, l, st
	if p.DestroyOld {
		if _, err := c.destroyExpired(ctx); err != nil {
			if isCrash(err) {
				return err
			}
			c.opts.log().Warn("the old key could not be destroyed yet; DestroyExpired will try again", "err", err)
		}
	}
	return nil
}

// DestroyExpired destroys every retired key whose grace period has passed and records it as destroyed.
// Run it at the start of every command that opens the identity. It returns what it destroyed; keys it
// could not destroy (a keystore that is gone) are reported in the error and tried again next time.
func (c *Custody) DestroyExpired(ctx context.Context) ([]Generation, error) {
	var out []Generation
	err := c.mutate(ctx, func() error {
		var err error
		out, err = c.destroyExpired(ctx)
		return err
	})
	return out, err
}

func (c *Custody) destroyExpired(ctx context.Context) ([]Generation, error) {
	recPath, _ := paths(c.home)
	now := c.opts.now()
	var (
		done []Generation
		errs []error
	)
	for i := range c.rec.Generations {
		g := c.rec.Generations[i]
		if g.State != Retired || g.RetiredUntil.After(now) {
			continue
		}
		step := fmt.Sprintf("destroy:%d", g.Generation)
		if err := c.opts.fail(step); err != nil {
			return done, err
		}
		ks, err := c.keystore(ctx, g.Keystore)
		if err == nil {
			err = ks.Destroy(ctx, g.Key)
			if errors.Is(err, keystore.ErrNotFound) {
				err = nil // already gone (a crash after the destroy, or a lost key)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("destroy the retired generation %d key %s: %w", g.Generation, keystoreRedact(g.Key), err))
			continue
		}
		r := c.rec.clone()
		t := now.UTC()
		r.Generations[i].State, r.Generations[i].RetiredUntil, r.Generations[i].DestroyedAt = Destroyed, nil, &t
		if err := writeFile(recPath, r.encode(), step, c.opts.fail); err != nil {
			return done, err
		}
		c.rec = r
		done = append(done, r.Generations[i])
	}
	return done, errors.Join(errs...)
}

// initRecovery resolves InitRequest.Recovery: an existing key, or a keystore in which a recovery key is
// made (with the identity's algorithm when the keystore can, else its preferred one).
func (c *Custody) initRecovery(ctx context.Context, uri string, alg keystore.Algorithm) (RecoveryKey, error) {
	ks, err := c.keystore(ctx, uri)
	if err != nil {
		return RecoveryKey{}, fmt.Errorf("recovery keystore: %w", err)
	}
	pub, err := ks.PublicKey(ctx, uri)
	switch {
	case err == nil:
		return RecoveryKey{Keystore: ks.Info().URI, Key: uri, Algorithm: pub.Algorithm, PublicKey: identity.EncodeKey(pub)}, nil
	case errors.Is(err, keystore.ErrBadURI):
		// A keystore URI, not a key URI: make the recovery key there.
		a := alg
		if algs := ks.Info().Algorithms; !slices.Contains(algs, a) && len(algs) > 0 {
			a = algs[0]
		}
		k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: a, Label: newLabel("recovery")})
		if err != nil {
			return RecoveryKey{}, fmt.Errorf("make the recovery key: %w", err)
		}
		return RecoveryKey{Keystore: ks.Info().URI, Key: k.URI, Algorithm: a, PublicKey: identity.EncodeKey(k.Public)}, nil
	default:
		return RecoveryKey{}, fmt.Errorf("recovery key %s: %w", keystoreRedact(uri), err)
	}
}

// findRecovery finds the committed recovery key at uri (a key URI, or a keystore holding it) and returns
// its signer.
func (c *Custody) findRecovery(ctx context.Context, uri, committed string) (keystore.Signer, RecoveryKey, error) {
	matches := func(p keystore.PublicKey) bool { return identity.Base64().EncodeToString(digest(p)) == committed }
	ks, err := c.keystore(ctx, uri)
	if err != nil {
		return nil, RecoveryKey{}, fmt.Errorf("recovery keystore: %w", err)
	}
	keyURI := ""
	pub, err := ks.PublicKey(ctx, uri)
	switch {
	case err == nil:
		if !matches(pub) {
			return nil, RecoveryKey{}, fmt.Errorf("the key %s is not the recovery key committed in the key event log", keystoreRedact(uri))
		}
		keyURI = uri
	case errors.Is(err, keystore.ErrBadURI):
		keys, err := ks.List(ctx)
		if err != nil {
			return nil, RecoveryKey{}, fmt.Errorf("list the recovery keystore: %w", err)
		}
		for _, k := range keys {
			if matches(k.Public) {
				keyURI, pub = k.URI, k.Public
			}
		}
		if keyURI == "" {
			return nil, RecoveryKey{}, fmt.Errorf("no key in %s is the recovery key committed in the key event log", keystoreRedact(uri))
		}
	default:
		return nil, RecoveryKey{}, fmt.Errorf("recovery key %s: %w", keystoreRedact(uri), err)
	}
	s, err := ks.Signer(ctx, keyURI)
	if err != nil {
		return nil, RecoveryKey{}, fmt.Errorf("recovery key %s: %w", keystoreRedact(keyURI), err)
	}
	if !s.Public().Equal(pub) || !matches(s.Public()) {
		return nil, RecoveryKey{}, keystore.Errorf(keystore.ErrCorrupt, "the recovery key at %s is not the key committed in the key event log", keystoreRedact(keyURI))
	}
	return s, RecoveryKey{Keystore: ks.Info().URI, Key: keyURI, Algorithm: pub.Algorithm, PublicKey: identity.EncodeKey(pub)}, nil
}

// Reload re-reads the home directory (under the lock, completing or undoing an interrupted operation):
// a long-running holder (the daemon) calls it to see a rotation or recovery another process made.
func (c *Custody) Reload(ctx context.Context) error {
	return c.mutate(ctx, func() error { return nil })
}
