package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// What agentctl sign signs, for the help texts (and docs): the context, then the file's bytes.
const signHelp = "The signature covers the bytes 'custos/v1/user-data' followed by one zero byte, then the file's\n" +
	"bytes (domain separation: it can never be taken for a protocol signature). Ed25519 signatures are the\n" +
	"raw 64 bytes; P-256 signatures are ASN.1 DER (ECDSA over SHA-256). To check one with openssl:\n\n" +
	"  printf 'custos/v1/user-data\\0' | cat - FILE > msg.bin\n" +
	"  agentctl id --pem > pub.pem\n" +
	"  openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in msg.bin -sigfile FILE.sig   # ed25519\n" +
	"  openssl dgst -sha256 -verify pub.pem -signature FILE.sig msg.bin                   # p256"

func signCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "sign",
		Usage:        "sign a file with the identity's current key",
		UsageText:    "agentctl sign --in FILE [--out FILE.sig]",
		Description:  signHelp,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "in", Usage: "the `FILE` to sign", TakesFile: true},
			&cli.StringFlag{Name: "out", Usage: "write the signature to `FILE` (default: standard output, raw bytes)", TakesFile: true},
			passphraseFileFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("sign takes no arguments (use --in FILE)")
			}
			if err := requireFlags(c, "in"); err != nil {
				return err
			}
			data, err := os.ReadFile(c.String("in"))
			if err != nil {
				return fmt.Errorf("read --in: %w", err)
			}
			return withIdentity(c, func(s *session, id *custody.Custody) error {
				signer, err := id.Signer(c.Context)
				if err != nil {
					return err
				}
				sig, err := signature.Sign(c.Context, signer, signature.UserData, data)
				if err != nil {
					return fmt.Errorf("sign: %w", err)
				}
				sum := sha256.Sum256(data)
				s.RecordKeyUse(c.Context, id, hex.EncodeToString(sum[:])) // audited (issue 18, defect 9)
				if out := c.String("out"); out != "" {
					if err := os.WriteFile(out, sig, 0o644); err != nil {
						return fmt.Errorf("write --out: %w", err)
					}
					fmt.Fprintf(c.App.ErrWriter, "agentctl: signed %s with generation %d of %s (%s, %d bytes) into %s\n",
						c.String("in"), id.State().Generation, id.ID(), signer.Public().Algorithm, len(sig), out)
					return nil
				}
				_, err = c.App.Writer.Write(sig)
				return err
			})
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "verify",
		Usage:        "verify a signature made by agentctl sign",
		UsageText:    "agentctl verify (--id ID | --pubkey FILE.pem) --in FILE --sig FILE.sig",
		Description: "--id ID verifies against the key of the CURRENT generation when ID is this agent's (read from the\n" +
			"verified key event log in --home): a signature by a key retired since does not verify. To verify\n" +
			"another agent's signature, use --pubkey with its current public key (agentctl id --pem on that agent).\n\n" +
			signHelp,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "verify with this agent `ID`'s current key (this agent only)"},
			&cli.StringFlag{Name: "pubkey", Usage: "verify with the public key in this PEM `FILE` (SubjectPublicKeyInfo)", TakesFile: true},
			&cli.StringFlag{Name: "in", Usage: "the signed `FILE`", TakesFile: true},
			&cli.StringFlag{Name: "sig", Usage: "the signature `FILE`", TakesFile: true},
		},
		Action: runVerify,
	}
}

func runVerify(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("verify takes no arguments")
	}
	if err := requireFlags(c, "in", "sig"); err != nil {
		return err
	}
	if c.IsSet("id") == c.IsSet("pubkey") {
		return usagef("give exactly one of --id ID and --pubkey FILE.pem")
	}
	var (
		pub  keystore.PublicKey
		what string
	)
	if c.IsSet("id") {
		want, err := identity.ParseID(c.String("id"))
		if err != nil {
			return usagef("--id: %v", err)
		}
		s, err := newSession(c)
		if err != nil {
			return err
		}
		st, err := custody.VerifyHome(s.Home)
		if err != nil {
			return err
		}
		if !st.ID.Equal(want) {
			return fmt.Errorf("--id %s is not this agent (%s in %s): to verify another agent's signature, use --pubkey with its public key", want, st.ID, s.Home)
		}
		pub, what = st.Current, fmt.Sprintf("generation %d of %s", st.Generation, st.ID)
	} else {
		b, err := os.ReadFile(c.String("pubkey"))
		if err != nil {
			return fmt.Errorf("read --pubkey: %w", err)
		}
		if pub, err = keystore.ParsePublicKeyPEM(b); err != nil {
			return fmt.Errorf("--pubkey %s: %w", c.String("pubkey"), err)
		}
		what = "the " + string(pub.Algorithm) + " key in " + c.String("pubkey")
	}
	data, err := os.ReadFile(c.String("in"))
	if err != nil {
		return fmt.Errorf("read --in: %w", err)
	}
	sig, err := os.ReadFile(c.String("sig"))
	if err != nil {
		return fmt.Errorf("read --sig: %w", err)
	}
	if err := checkSignatureLength(pub.Algorithm, sig, c.String("sig")); err != nil {
		return err
	}
	if err := signature.Verify(pub, signature.UserData, data, sig); err != nil {
		if errors.Is(err, keystore.ErrBadSignature) {
			return fmt.Errorf("the signature in %s does not verify for %s with %s: wrong file, wrong key, or a signature by an older generation", c.String("sig"), c.String("in"), what)
		}
		return err
	}
	fmt.Fprintf(c.App.Writer, "signature OK: %s signed by %s\n", c.String("in"), what)
	return nil
}

// checkSignatureLength refuses a signature file that cannot be a signature of alg, with a sentence.
func checkSignatureLength(alg keystore.Algorithm, sig []byte, name string) error {
	switch alg {
	case keystore.Ed25519:
		if len(sig) != ed25519.SignatureSize {
			return fmt.Errorf("signature file %s is %d bytes: an ed25519 signature is exactly %d bytes (make it with agentctl sign --out; do not base64 or hex it)", name, len(sig), ed25519.SignatureSize)
		}
	case keystore.P256:
		// DER SEQUENCE of two INTEGERs of 1..33 bytes each.
		if len(sig) < 8 || len(sig) > 72 || sig[0] != 0x30 {
			return fmt.Errorf("signature file %s is %d bytes and not a DER ECDSA signature: a p256 signature is an ASN.1 DER SEQUENCE of 8 to 72 bytes (make it with agentctl sign --out)", name, len(sig))
		}
	}
	return nil
}
