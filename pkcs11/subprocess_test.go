package pkcs11_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

const helperEnv = "CUSTOS_PKCS11_HELPER_KEY_URI"

// A child process reaches the same token with nothing but the key URI and softhsmtest.Env: it signs
// with the parent's key and generates a key of its own, which the parent then sees.
func TestSubprocess(t *testing.T) {
	tok := softhsmtest.New(t)
	ks := open(t, tok.URI)
	k := generate(t, ks, keystore.Ed25519, "parent-key")

	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SOFTHSM2_CONF=") {
			env = append(env, e)
		}
	}
	env = append(env, softhsmtest.Env(t)...)
	env = append(env, helperEnv+"="+k.URI)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper process: %v\n%s", err, out)
	}
	var sigHex string
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, "SIG "); ok {
			sigHex = s
		}
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || len(sig) == 0 {
		t.Fatalf("helper printed no signature:\n%s", out)
	}
	if err := k.Public.Verify([]byte("from the child"), sig); err != nil {
		t.Fatalf("the child's signature does not verify under the parent's key: %v", err)
	}
	keys, err := ks.List(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(keys, func(k keystore.Key) bool { return k.Label == "child-key" }) {
		t.Fatalf("the parent does not see the key the child generated: %v", keys)
	}
}

// TestMain runs the child of TestSubprocess when the helper variable is set, and the tests otherwise.
func TestMain(m *testing.M) {
	if uri := os.Getenv(helperEnv); uri != "" {
		if err := helper(uri); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helper(uri string) error {
	ctx := context.Background()
	ks, err := pkcs11.Open(ctx, uri, keystore.OpenOptions{})
	if err != nil {
		return fmt.Errorf("Open(%s): %w", uri, err)
	}
	defer ks.Close()
	s, err := ks.Signer(ctx, uri)
	if err != nil {
		return fmt.Errorf("Signer: %w", err)
	}
	sig, err := s.Sign(ctx, []byte("from the child"))
	if err != nil {
		return fmt.Errorf("Sign: %w", err)
	}
	if _, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: keystore.P256, Label: "child-key"}); err != nil {
		return fmt.Errorf("Generate: %w", err)
	}
	fmt.Printf("SIG %x\n", sig)
	return nil
}
