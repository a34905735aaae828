package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
)

// fakeTPM is a unit-test stand-in for the logic around the transport (framing, resends, Startup): it
// answers each command frame with whatever answer returns, written in 3-byte pieces so that every
// response arrives in several reads. Real TPM behaviour is tested against swtpm elsewhere.
type fakeTPM struct {
	t      *testing.T
	path   string
	mu     sync.Mutex
	seen   []tpm2.TPMCC
	answer func(cc tpm2.TPMCC, n int) tpm2.TPMRC // n counts commands with this code so far
}

func startFake(t *testing.T, answer func(cc tpm2.TPMCC, n int) tpm2.TPMRC) *fakeTPM {
	dir, err := os.MkdirTemp("", "tpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeTPM{t: t, path: filepath.Join(dir, "s"), answer: answer}
	l, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeTPM) serve(c net.Conn) {
	defer c.Close()
	counts := map[tpm2.TPMCC]int{}
	for {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		rest := make([]byte, binary.BigEndian.Uint32(hdr[2:6])-10)
		if _, err := io.ReadFull(c, rest); err != nil {
			return
		}
		cc := tpm2.TPMCC(binary.BigEndian.Uint32(hdr[6:10]))
		f.mu.Lock()
		f.seen = append(f.seen, cc)
		f.mu.Unlock()
		rc := f.answer(cc, counts[cc])
		counts[cc]++
		rsp := []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(rsp[6:], uint32(rc))
		if rc == 0 && cc == tpm2.TPMCCGetRandom {
			rsp = append(rsp, 0, 4, 1, 2, 3, 4)
			binary.BigEndian.PutUint32(rsp[2:], uint32(len(rsp)))
		}
		for i := 0; i < len(rsp); i += 3 {
			if _, err := c.Write(rsp[i:min(i+3, len(rsp))]); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func (f *fakeTPM) commands() []tpm2.TPMCC {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tpm2.TPMCC(nil), f.seen...)
}

func fakeDevice(t *testing.T, f *fakeTPM) *device {
	spec, err := parseDevice("unix://" + f.path)
	if err != nil {
		t.Fatal(err)
	}
	return newDevice(spec, slog.New(slog.NewTextHandler(tlog{t}, nil)))
}

func getRandom(ctx context.Context, d *device) ([]byte, error) {
	var out []byte
	err := d.do(ctx, func(c *conn) error {
		r, err := tpm2.GetRandom{BytesRequested: 4}.Execute(c)
		if err == nil {
			out = r.RandomBytes.Buffer
		}
		return err
	})
	return out, err
}

func TestTransportResendsAndStartup(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(cc tpm2.TPMCC, n int) tpm2.TPMRC
		want   []tpm2.TPMCC
	}{
		{"retry, yielded, testing", func(cc tpm2.TPMCC, n int) tpm2.TPMRC {
			return []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting, 0}[min(n, 3)]
		}, []tpm2.TPMCC{tpm2.TPMCCGetRandom, tpm2.TPMCCGetRandom, tpm2.TPMCCGetRandom, tpm2.TPMCCGetRandom}},
		{"not started", func(cc tpm2.TPMCC, n int) tpm2.TPMRC {
			if cc == tpm2.TPMCCGetRandom && n == 0 {
				return tpm2.TPMRCInitialize
			}
			return 0
		}, []tpm2.TPMCC{tpm2.TPMCCGetRandom, tpm2.TPMCCStartup, tpm2.TPMCCGetRandom}},
		{"started meanwhile", func(cc tpm2.TPMCC, n int) tpm2.TPMRC {
			if n == 0 {
				return tpm2.TPMRCInitialize // also the answer to Startup on a started TPM
			}
			return 0
		}, []tpm2.TPMCC{tpm2.TPMCCGetRandom, tpm2.TPMCCStartup, tpm2.TPMCCGetRandom}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, tc.answer)
			d := fakeDevice(t, f)
			got, err := getRandom(context.Background(), d)
			if err != nil || len(got) != 4 {
				t.Fatalf("GetRandom: %x, %v", got, err)
			}
			if cmds := f.commands(); !equalCC(cmds, tc.want) {
				t.Fatalf("commands sent %v, want %v", cmds, tc.want)
			}
			_ = d.close(context.Background())
		})
	}
}

func equalCC(a, b []tpm2.TPMCC) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A TPM that stays busy past the retry budget gives a sentence, not a hang; a cancelled context stops the
// resends.
func TestTransportBusyTooLong(t *testing.T) {
	f := startFake(t, func(tpm2.TPMCC, int) tpm2.TPMRC { return tpm2.TPMRCRetry })
	d := fakeDevice(t, f)
	d.retryBudget = 300 * time.Millisecond
	ks := &Keystore{dev: d, log: d.log}
	start := time.Now()
	_, err := getRandom(context.Background(), d)
	if !isRC(err, tpm2.TPMRCRetry) {
		t.Fatalf("got %v, want TPM_RC_RETRY after the budget", err)
	}
	if el := time.Since(start); el < d.retryBudget || el > d.retryBudget+2*time.Second {
		t.Fatalf("gave up after %v, budget %v", el, d.retryBudget)
	}
	wantErr(t, ks.describe("get random", err), keystore.ErrUnavailable, "stayed busy", "try again")

	d.retryBudget = retryBudget
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = getRandom(ctx, d)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("got %v, want the deadline", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("the deadline was ignored for %v", el)
	}
}

// Other codes that reach a user become sentences.
func TestDescribe(t *testing.T) {
	ks := &Keystore{dev: newDevice(deviceSpec{kind: kindUnix, raw: "unix:///x"}, slog.Default())}
	for _, tc := range []struct {
		rc    tpm2.TPMRC
		kind  error
		words string
	}{
		{tpm2.TPMRCFailure, keystore.ErrUnavailable, "failure mode"},
		{tpm2.TPMRCLockout, keystore.ErrUnavailable, "dictionary-attack lockout"},
		{tpm2.TPMRCObjectMemory, keystore.ErrUnavailable, "no free slot"},
		{tpm2.TPMRCNVRate, keystore.ErrUnavailable, "NV memory"},
		{tpm2.TPMRCHierarchy + 0x100, keystore.ErrUnavailable, "owner (storage) hierarchy disabled"},
		{tpm2.TPMRCScheme, nil, "refused the command: TPM_RC_SCHEME"},
	} {
		err := ks.describe("do it", tc.rc)
		wantErr(t, err, tc.kind, "do it", "unix:///x", tc.words)
		if !isRC(err, tc.rc) && tc.kind == nil {
			t.Fatalf("%v: the response code is not kept for errors.As", err)
		}
	}
}
