package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
)

func initCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "init",
		Usage:        "make a new agent identity: a key and its pre-committed successor in a TPM, a PKCS#11 token or (for development) an encrypted file",
		UsageText:    "agentctl init [--pkcs11 URI | --tpm [--tpm-device DEV] | --software] [--alg ed25519|p256] [--recovery URI] [--force]",
		Description: "Generates the generation 0 key (whose public key is the agent ID) and the generation 1 key that the\n" +
			"first rotation will switch to, then writes the inception event to <home>/kel.jsonl and the key\n" +
			"locations to <home>/identity.json.\n\n" +
			"Backends:\n" +
			"  --pkcs11 'pkcs11:token=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path/pin'\n" +
			"            keys on a PKCS#11 token (an HSM, a smart card, SoftHSM); the PIN comes from pin-source\n" +
			"            (file:/path or env:NAME) or a prompt, never from the command line.\n" +
			"  --tpm     a P-256 key in the TPM (blobs in <home>/tpm). No shipping TPM signs Ed25519.\n" +
			"  --software (the default) passphrase-encrypted key files in <home>/keys: development only.\n\n" +
			"--recovery names an offline keystore (a recovery key is made there) or an existing key; its digest is\n" +
			"committed in the inception event, so 'agentctl recover' can replace a lost key without changing the ID.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pkcs11", Usage: "keep the keys on the PKCS#11 token named by this keystore `URI` (RFC 7512, with module-path and pin-source)"},
			&cli.BoolFlag{Name: "tpm", Usage: "keep the key in the TPM 2.0 (P-256 only)"},
			&cli.StringFlag{Name: "tpm-device", Usage: "TPM `DEVICE`: a character device, unix:///path or tcp://host:port (swtpm)", EnvVars: []string{envTPMDevice}, Value: "/dev/tpmrm0"},
			&cli.BoolFlag{Name: "software", Usage: "keep the keys in passphrase-encrypted files under <home>/keys (development only; the default)"},
			&cli.StringFlag{Name: "alg", Usage: "key algorithm: ed25519 or p256 (default: p256 with --tpm, else ed25519)"},
			&cli.StringFlag{Name: "recovery", Usage: "recovery keystore or key `URI` (keep it offline); without it a lost key cannot be recovered"},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing identity in --home (its keys are not destroyed; their URIs are printed)"},
			passphraseFileFlag(),
			&cli.IntFlag{Name: "work-factor", Usage: fmt.Sprintf("scrypt cost of software key files, as log2 N (%d-%d); lower it only for tests", software.MinWorkFactor, software.MaxWorkFactor), EnvVars: []string{envWorkFactor}, Value: software.DefaultWorkFactor},
		},
		Action: runInit,
	}
}

func runInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("init takes no arguments (got %q)", c.Args().First())
	}
	n := 0
	for _, f := range []string{"pkcs11", "tpm", "software"} {
		if c.IsSet(f) {
			n++
		}
	}
	if n > 1 {
		return usagef("give at most one of --pkcs11, --tpm and --software")
	}
	algText := c.String("alg")
	if algText == "" {
		algText = string(keystore.Ed25519)
		if c.Bool("tpm") {
			algText = string(keystore.P256)
		}
	}
	alg, err := keystore.ParseAlgorithm(algText)
	if err != nil {
		return usagef("--alg %q: use ed25519 or p256", algText)
	}
	if c.Bool("tpm") && alg == keystore.Ed25519 {
		return usagef("--tpm with --alg ed25519: no shipping TPM signs Ed25519; use --alg p256")
	}
	wf := c.Int("work-factor")
	if wf < software.MinWorkFactor || wf > software.MaxWorkFactor {
		return usagef("--work-factor %d: use %d to %d", wf, software.MinWorkFactor, software.MaxWorkFactor)
	}
	s, err := newSession(c)
	if err != nil {
		return err
	}
	defer s.Close()
	s.Confirm = true
	_, statErr := os.Stat(filepath.Join(s.Home, custody.IdentityFile))
	replacing := statErr == nil
	var ksURI string
	switch {
	case c.IsSet("pkcs11"):
		ksURI = c.String("pkcs11")
		if !strings.HasPrefix(ksURI, "pkcs11:") {
			return usagef("--pkcs11 %q: want a pkcs11: URI like 'pkcs11:token=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path/pin'", redactURI(ksURI))
		}
	case c.Bool("tpm"):
		u := &keystore.URI{Scheme: "tpm"}
		u.SetQuery("device", c.String("tpm-device"))
		u.SetQuery("dir", filepath.Join(s.Home, custody.TPMDir))
		ksURI = u.String()
	default:
		if !c.Bool("software") {
			fmt.Fprintln(c.App.ErrWriter, "agentctl: no backend flag given: using the software backend (keys in "+filepath.Join(s.Home, custody.KeysDir)+")")
		}
		src := s.ExplicitPassSource()
		if src == "" {
			src = s.EnvPassSource()
		}
		if src == "" {
			ask := s.Prompt()
			if ask == nil {
				return fmt.Errorf("the software backend needs a passphrase: give --passphrase-file FILE or set %s (no terminal to ask on)", envPassphrase)
			}
			// Ask now, before anything is created; the backend's own request is then answered from the
			// confirmed passphrase (same wording as software.Keystore uses).
			p, err := ask(software.PromptText(filepath.Join(s.Home, custody.KeysDir)))
			if err != nil {
				return err
			}
			keystore.Wipe(p)
		}
		if wf == software.DefaultWorkFactor {
			wf = 0
		}
		ksURI = software.KeystoreURI(filepath.Join(s.Home, custody.KeysDir), src, wf)
		s.WarnSoftware()
	}
	id, err := custody.Init(c.Context, s.Home, custody.InitRequest{
		Keystore: ksURI, Algorithm: alg, Recovery: c.String("recovery"), Force: c.Bool("force"),
	}, s.Options())
	if err != nil {
		return err
	}
	defer id.Close()
	out := c.App.Writer
	writeOut(out, "created agent identity %s\n", id.ID())
	writeOut(out, "  generation: %d (next key pre-committed)\n", id.State().Generation)
	writeOut(out, "  keystore:   %s\n", displayURI(id.KeystoreURI()))
	if r := id.Recovery(); r != nil {
		writeOut(out, "  recovery:   %s (take it offline)\n", displayURI(r.Key))
	} else {
		writeOut(out, "  recovery:   none (a lost key cannot be recovered; see --recovery)\n")
	}
	writeOut(out, "  home:       %s\n", s.Home)
	for _, k := range id.ReplacedKeys() {
		fmt.Fprintf(c.App.ErrWriter, "agentctl: the replaced identity's key %s was not destroyed\n", redactURI(k))
	}
	if dir := filepath.Join(s.Home, api.AuditDir); replacing {
		// The audit log of the replaced identity has checkpoints the new key event log cannot check: keep it
		// aside, unchanged, and start a new one.
		if _, err := os.Stat(dir); err == nil {
			aside := dir + ".replaced-" + time.Now().UTC().Format("20060102T150405Z")
			if err := os.Rename(dir, aside); err != nil {
				return fmt.Errorf("the identity was replaced, but its audit log %s could not be moved aside: %w (move it by hand)", dir, err)
			}
			fmt.Fprintf(c.App.ErrWriter, "agentctl: the replaced identity's audit log was moved to %s\n", aside)
		}
	}
	s.RecordKeyEvents(c.Context, id, nil)
	return nil
}

// idJSON is the output of agentctl id --json.
type idJSON struct {
	ID             string             `json:"id"`
	Algorithm      keystore.Algorithm `json:"algorithm"`
	Generation     uint64             `json:"generation"`
	Keystore       string             `json:"keystore"`
	PublicKeyPEM   string             `json:"public_key_pem"`
	HardwareBacked bool               `json:"hardware_backed"`
}

func idCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "id",
		Usage:        "show the agent ID, the current generation and its public key",
		Description: "The agent ID is the generation 0 public key and never changes; the current key is the one the\n" +
			"verified key event log names (it changes at each rotation). --pem prints only the current public key,\n" +
			"for openssl.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print id, algorithm, generation, keystore, public_key_pem, hardware_backed as JSON"},
			&cli.BoolFlag{Name: "pem", Usage: "print only the current public key (SubjectPublicKeyInfo PEM)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the agent ID (for scripts: ID=$(agentctl id -q))"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("id takes no arguments")
			}
			return withIdentity(c, func(s *session, id *custody.Custody) error {
				st := id.State()
				info, err := id.KeystoreInfo(c.Context)
				if err != nil {
					return err
				}
				out := idJSON{
					ID: st.ID.String(), Algorithm: st.ID.PublicKey().Algorithm, Generation: st.Generation,
					Keystore: displayURI(id.KeystoreURI()), PublicKeyPEM: string(st.Current.PEM()), HardwareBacked: info.HardwareBacked,
				}
				switch {
				case c.Bool("quiet"):
					writeOut(c.App.Writer, "%s\n", out.ID)
					return nil
				case c.Bool("pem"):
					_, err = c.App.Writer.Write(st.Current.PEM())
					return err
				case c.Bool("json"):
					enc := json.NewEncoder(c.App.Writer)
					enc.SetEscapeHTML(false)
					enc.SetIndent("", "  ")
					return enc.Encode(out)
				}
				w := c.App.Writer
				writeOut(w, "id:              %s\n", out.ID)
				writeOut(w, "algorithm:       %s\n", out.Algorithm)
				writeOut(w, "generation:      %d\n", out.Generation)
				writeOut(w, "keystore:        %s\n", out.Keystore)
				writeOut(w, "hardware-backed: %v\n", out.HardwareBacked)
				writeOut(w, "%s", out.PublicKeyPEM)
				return nil
			})
		},
	}
}

func rotateCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "rotate",
		Usage:        "switch to the pre-committed next key and pre-commit a new one",
		Description: "Two-phase and crash-safe: the new next key is made and recorded, the rotation event (signed by the\n" +
			"current and the new key) is written to the key event log, then identity.json is updated. An\n" +
			"interruption at any point is completed or undone by the next command. The old key is retired and\n" +
			"destroyed once --grace has passed (by the running agent then, else by the first command run after\n" +
			"that), or at once with --destroy-old. The agent can also rotate on a schedule: rotation.interval.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "grace", Usage: "keep the old key this long before destroying it", Value: 24 * time.Hour},
			&cli.BoolFlag{Name: "destroy-old", Usage: "destroy the old key as soon as the rotation is committed"},
			passphraseFileFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("rotate takes no arguments")
			}
			if c.Duration("grace") < 0 {
				return usagef("--grace %v is negative", c.Duration("grace"))
			}
			return withIdentity(c, func(s *session, id *custody.Custody) error {
				before := id.Keys()
				g, err := id.Rotate(c.Context, custody.RotateRequest{Grace: c.Duration("grace"), DestroyOld: c.Bool("destroy-old")})
				if err != nil {
					return err
				}
				defer s.RecordKeyEvents(c.Context, id, before)
				writeOut(c.App.Writer, "rotated %s to generation %d\n", id.ID(), g.Generation)
				for _, k := range id.Keys() {
					if k.Generation == g.Generation-1 && k.Key != g.Key {
						switch k.State {
						case custody.Destroyed:
							writeOut(c.App.Writer, "  generation %d: destroyed\n", k.Generation)
						case custody.Retired:
							writeOut(c.App.Writer, "  generation %d: retired until %s\n", k.Generation, k.RetiredUntil.Local().Format(time.RFC3339))
						}
					}
				}
				return nil
			})
		},
	}
}

func recoverCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "recover",
		Usage:        "replace a lost current key using the recovery key committed at init (the agent ID does not change)",
		Description: "For when the current key is gone (TPM cleared, token dead). The recovery key signs a recovery event\n" +
			"for a new key; the old keys are retired and destroyed where they still exist.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "recovery", Usage: "the recovery key `URI`, or the keystore holding it (default: as recorded at init)"},
			&cli.StringFlag{Name: "keystore", Usage: "make the new keys in this keystore `URI` instead of the identity's (when that one is gone)"},
			passphraseFileFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("recover takes no arguments")
			}
			return withIdentity(c, func(s *session, id *custody.Custody) error {
				before := id.Keys()
				g, err := id.Recover(c.Context, custody.RecoverRequest{Recovery: c.String("recovery"), Keystore: c.String("keystore")})
				if err != nil {
					return err
				}
				defer s.RecordKeyEvents(c.Context, id, before)
				writeOut(c.App.Writer, "recovered %s: generation %d is a new key\n", id.ID(), g.Generation)
				return nil
			})
		},
	}
}

// keysJSON is the output of agentctl keys --json.
type keysJSON struct {
	ID          string               `json:"id"`
	Algorithm   keystore.Algorithm   `json:"algorithm"`
	Keystore    string               `json:"keystore"`
	Generations []custody.Generation `json:"generations"`
	Recovery    *custody.RecoveryKey `json:"recovery,omitempty"`
}

func keysCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "keys",
		Usage:        "list every generation's key and its state (active, next, retired until <time>, destroyed)",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print as JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("keys takes no arguments")
			}
			return withIdentity(c, func(s *session, id *custody.Custody) error {
				keys := id.Keys()
				if c.Bool("json") {
					enc := json.NewEncoder(c.App.Writer)
					enc.SetEscapeHTML(false)
					enc.SetIndent("", "  ")
					return enc.Encode(keysJSON{ID: id.ID().String(), Algorithm: id.ID().PublicKey().Algorithm, Keystore: displayURI(id.KeystoreURI()), Generations: keys, Recovery: id.Recovery()})
				}
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "GEN\tSTATE\tALG\tKEY\n")
				for _, k := range keys {
					state := string(k.State)
					switch {
					case k.State == custody.Retired:
						state = "retired until " + k.RetiredUntil.Local().Format(time.RFC3339)
					case k.State == custody.Destroyed && k.DestroyedAt != nil:
						state = "destroyed " + k.DestroyedAt.Local().Format(time.RFC3339)
					}
					if k.Note != "" {
						state += " (" + k.Note + ")"
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", k.Generation, state, k.Algorithm, redactURI(k.Key))
				}
				if r := id.Recovery(); r != nil {
					fmt.Fprintf(tw, "-\trecovery\t%s\t%s\n", r.Algorithm, redactURI(r.Key))
				}
				return tw.Flush()
			})
		},
	}
}

func logCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "log",
		Usage:        "the key event log",
		Subcommands: []*cli.Command{{
			OnUsageError: onUsageError,
			Name:         "verify",
			Usage:        "verify <home>/kel.jsonl from inception and its agreement with identity.json (exit 0 only when it verifies)",
			Description: "Reads only: no keystore is opened and nothing is changed. Checks every event's signatures, the\n" +
				"chain of digests and pre-committed keys, and that identity.json names the keys the log does.",
			Flags: []cli.Flag{jsonFlag()},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("log verify takes no arguments")
				}
				s, err := newSession(c)
				if err != nil {
					return err
				}
				defer s.Close()
				st, err := custody.VerifyHome(s.Home)
				if c.Bool("json") {
					v := struct {
						Verifies   bool   `json:"verifies"`
						ID         string `json:"id,omitempty"`
						Events     uint64 `json:"events,omitempty"`
						Generation uint64 `json:"generation"`
						Error      string `json:"error,omitempty"`
					}{Verifies: err == nil}
					if err != nil {
						v.Error = err.Error()
					} else {
						v.ID, v.Events, v.Generation = st.ID.String(), uint64(st.Generation)+1, uint64(st.Generation)
					}
					if perr := printJSON(c.App.Writer, v); perr != nil {
						return perr
					}
					return err
				}
				if err != nil {
					return err
				}
				writeOut(c.App.Writer, "key event log verifies: %s, %d events, generation %d\n", st.ID, st.Generation+1, st.Generation)
				return nil
			},
		}},
	}
}
