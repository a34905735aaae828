package metrics

import (
	"context"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// Keystore operation names (the operation label).
const (
	OpGenerate  = "generate"
	OpSigner    = "signer"
	OpSign      = "sign"
	OpPublicKey = "public_key"
	OpDestroy   = "destroy"
	OpList      = "list"
	OpPing      = "ping"
)

// InstrumentKeystore wraps ks so that every operation (and every Sign of the signers it returns) is
// timed into custos_keystore_operation_duration_seconds and its errors counted in
// custos_keystore_errors_total, labelled with ks.Info().Backend. The wrapper keeps the optional Pinger
// capability when ks has it; Unwrap returns ks for any other capability. A nil m returns ks unchanged.
func InstrumentKeystore(ks keystore.Keystore, m *Metrics) keystore.Keystore {
	if m == nil || ks == nil {
		return ks
	}
	base := &instrumented{ks: ks, m: m, backend: ks.Info().Backend}
	if p, ok := ks.(keystore.Pinger); ok {
		return &instrumentedPinger{instrumented: base, p: p}
	}
	return base
}

type instrumented struct {
	ks      keystore.Keystore
	m       *Metrics
	backend string
}

// Unwrap returns the keystore being instrumented.
func (k *instrumented) Unwrap() keystore.Keystore { return k.ks }

func (k *instrumented) observe(op string, start time.Time, err error) {
	k.m.ObserveKeystore(k.backend, op, time.Since(start), err)
}

func (k *instrumented) Generate(ctx context.Context, req keystore.GenerateRequest) (keystore.Key, error) {
	start := time.Now()
	key, err := k.ks.Generate(ctx, req)
	k.observe(OpGenerate, start, err)
	return key, err
}

func (k *instrumented) Signer(ctx context.Context, keyURI string) (keystore.Signer, error) {
	start := time.Now()
	s, err := k.ks.Signer(ctx, keyURI)
	k.observe(OpSigner, start, err)
	if err != nil {
		return nil, err
	}
	return &instrumentedSigner{s: s, k: k}, nil
}

func (k *instrumented) PublicKey(ctx context.Context, keyURI string) (keystore.PublicKey, error) {
	start := time.Now()
	p, err := k.ks.PublicKey(ctx, keyURI)
	k.observe(OpPublicKey, start, err)
	return p, err
}

func (k *instrumented) Destroy(ctx context.Context, keyURI string) error {
	start := time.Now()
	err := k.ks.Destroy(ctx, keyURI)
	k.observe(OpDestroy, start, err)
	return err
}

func (k *instrumented) List(ctx context.Context) ([]keystore.Key, error) {
	start := time.Now()
	keys, err := k.ks.List(ctx)
	k.observe(OpList, start, err)
	return keys, err
}

func (k *instrumented) Info() keystore.Info { return k.ks.Info() }

func (k *instrumented) Close() error { return k.ks.Close() }

type instrumentedPinger struct {
	*instrumented
	p keystore.Pinger
}

func (k *instrumentedPinger) Ping(ctx context.Context) error {
	start := time.Now()
	err := k.p.Ping(ctx)
	k.observe(OpPing, start, err)
	return err
}

type instrumentedSigner struct {
	s keystore.Signer
	k *instrumented
}

func (s *instrumentedSigner) Public() keystore.PublicKey { return s.s.Public() }

func (s *instrumentedSigner) Sign(ctx context.Context, message []byte) ([]byte, error) {
	start := time.Now()
	sig, err := s.s.Sign(ctx, message)
	s.k.observe(OpSign, start, err)
	return sig, err
}

// Unwrap returns the signer being instrumented.
func (s *instrumentedSigner) Unwrap() keystore.Signer { return s.s }
