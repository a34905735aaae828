package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Report describes a log that Verify checked.
type Report struct {
	Dir          string
	Segments     int
	Records      uint64
	FirstSeq     uint64   // 1, or later when retention removed older segments
	LastSeq      uint64   // seq of the last record
	Head         string   // base64url hash of the last record: note it to detect a later rollback
	Checkpoints  int      // signed checkpoints (audit.checkpoint and audit.pruned) verified
	CoveredSeq   uint64   // highest seq covered by a verified checkpoint signature
	Generations  []uint64 // key generations that signed checkpoints
	Anchored     bool     // the log starts after removed segments, vouched for by a signed audit.pruned record
	Sealed       bool     // the last record is the closing checkpoint (the writer closed the log)
	WriterActive bool     // someone held the log's lock while it was checked (informational: it relaxes nothing)
	Live         bool     // checked against the running writer's head (VerifyRunning)
	Pending      uint64   // records not yet covered by a checkpoint (accepted only by VerifyRunning)
	// Unsealed: the only fault found is the tail (Verify returned ErrUnsigned, its last check, after every
	// record, link and checkpoint before verified): records after the last checkpoint, or no closing seal.
	// A killed writer leaves exactly this, and so does a cut tail; agentctl audit verify warns (exit 0).
	Unsealed bool
	Warnings []string // findings that do not fail verification (file modes, an in-progress last line)
}

// VerifyError names the first bad record and why. It wraps one of ErrMalformed, ErrTorn,
// ErrBrokenChain, ErrBadCheckpoint, ErrUnsigned or ErrNoLog.
type VerifyError struct {
	Segment  string // segment file name ("00000000000000000001.jsonl"); "" for the log as a whole
	Line     int    // line in the segment, from 1; 0 for the log as a whole
	Seq      uint64 // the record's seq, or the expected one when Expected is true
	Expected bool   // Seq is the expected seq (the line could not be read as a record)
	Err      error
}

func (e *VerifyError) Error() string {
	if e.Segment == "" {
		return e.Err.Error()
	}
	seq := fmt.Sprintf("seq %d", e.Seq)
	if e.Expected {
		seq = fmt.Sprintf("expected seq %d", e.Seq)
	}
	return fmt.Sprintf("%s line %d (%s): %v", e.Segment, e.Line, seq, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

type loc struct {
	seg  string
	line int
	cp   bool
}

type claim struct {
	head [32]byte
	at   loc
	seq  uint64
}

type verifier struct {
	dir    string
	id     string
	keys   []keystore.PublicKey
	kids   []string
	active bool  // live != nil: the writer is running and vouched for its head
	live   *Head // the running writer's head (VerifyRunning), nil for Verify
	seen   bool  // the log holds the live head
	rep    Report

	have     bool
	prevSeq  uint64
	prevHash [32]byte
	first    loc
	firstPrv string

	base    uint64 // seq of hashes[0]
	hashes  [][32]byte
	locs    []loc
	lastGen int64

	lastData uint64
	lastW    *wire
	deferred map[uint64]claim
}

// Verify checks the whole log in dir against the agent's key event log (which it verifies first):
// every record's form and hash, the chain from the first record to the last, every checkpoint's
// signature with the key of the generation it names (taken from kel), that the log starts at seq 1 or
// at a point a signed audit.pruned record vouches for, and that every record is covered by a checkpoint
// and the log ends with the closing seal. It is this strict whoever holds the log's lock: for a log
// whose writer is running, use VerifyRunning with the head the writer reports. The error is a
// *VerifyError naming the first bad record.
func Verify(dir string, kel identity.Log) (Report, error) { return verify(dir, kel, nil) }

// Head is a running writer's head: the seq and hash (base64url) of its last durable record.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// VerifyRunning is Verify for a log whose writer is running, given the head that writer reported
// (ask it first, then verify: the daemon answers the control operation audit.head). The log must hold
// that head, record for record: then the records after the last checkpoint are reported as Pending
// instead of failing, the log need not end with the seal, and an incomplete last line after the head
// is taken as being written. A log cut or rewritten below the head fails.
func VerifyRunning(dir string, kel identity.Log, head Head) (Report, error) {
	return verify(dir, kel, &head)
}

func verify(dir string, kel identity.Log, live *Head) (Report, error) {
	st, err := kel.Verify()
	if err != nil {
		return Report{}, fmt.Errorf("the key event log does not verify, so checkpoints cannot be checked: %w", err)
	}
	var keys []keystore.PublicKey
	var kids []string
	for i := range kel.Events {
		pub, err := kel.Events[i].PublicKey()
		if err != nil {
			return Report{}, err
		}
		keys = append(keys, pub)
		kids = append(kids, kid(pub))
	}
	for attempt := 0; ; attempt++ {
		v := &verifier{dir: dir, id: st.ID.String(), keys: keys, kids: kids, lastGen: -1, deferred: map[uint64]claim{},
			live: live, active: live != nil}
		v.rep.Dir = dir
		rep, err := v.run()
		// A running writer's retention may remove a segment between listing and reading: start again.
		if attempt < 2 && v.active && errors.Is(err, os.ErrNotExist) {
			continue
		}
		return rep, err
	}
}

func (v *verifier) fail(at loc, seq uint64, expected bool, err error) error {
	return &VerifyError{Segment: at.seg, Line: at.line, Seq: seq, Expected: expected, Err: err}
}

func (v *verifier) run() (Report, error) {
	segs, err := listSegments(v.dir)
	if err != nil {
		return v.rep, err
	}
	v.rep.WriterActive = writerActive(v.dir)
	v.rep.Live = v.active
	if len(segs) == 0 {
		return v.rep, fmt.Errorf("%w: %s holds no segments (the log is empty or was deleted)", ErrNoLog, v.dir)
	}
	v.rep.Segments = len(segs)
	for i, sf := range segs {
		if err := v.segment(sf, i == len(segs)-1); err != nil {
			return v.rep, err
		}
	}
	if !v.have {
		return v.rep, fmt.Errorf("%w: %s holds no records", ErrNoLog, v.dir)
	}
	v.rep.LastSeq = v.prevSeq
	v.rep.Head = b64.EncodeToString(v.prevHash[:])
	if v.live != nil && !v.seen {
		return v.rep, v.fail(loc{seg: segs[len(segs)-1].name}, v.live.Seq, true, fmt.Errorf("%w: the log ends at seq %d and "+
			"does not hold the running agent's head seq %d: records were cut off", ErrBrokenChain, v.prevSeq, v.live.Seq))
	}
	if !v.rep.Anchored && v.rep.FirstSeq != 1 {
		return v.rep, v.fail(v.first, v.rep.FirstSeq, false, fmt.Errorf("%w: the log starts at seq %d, but no signed audit.pruned "+
			"record accounts for seq 1-%d: segments were removed outside retention", ErrBrokenChain, v.rep.FirstSeq, v.rep.FirstSeq-1))
	}
	v.rep.Anchored = v.rep.FirstSeq != 1
	if len(v.deferred) > 0 {
		if err := v.checkDeferred(segs); err != nil {
			return v.rep, err
		}
	}
	v.rep.Sealed = v.lastW != nil && isSeal(v.lastW)
	if v.lastData > v.rep.CoveredSeq {
		at, seq := v.firstUncovered()
		if v.active { // and the log holds the writer's head (checked above)
			for i, l := range v.locs {
				if v.base+uint64(i) > v.rep.CoveredSeq && !l.cp {
					v.rep.Pending++
				}
			}
			return v.rep, nil
		}
		v.rep.Unsealed = true
		return v.rep, v.fail(at, seq, false, fmt.Errorf("%w: records from seq %d to %d are not covered by a signed checkpoint and "+
			"the running agent did not vouch for them (a held LOCK is not enough: verify through the running agent): the agent stopped without closing the log (opening it repairs and signs it) or "+
			"the tail after the last checkpoint was cut off", ErrUnsigned, seq, v.lastData))
	}
	if !v.rep.Sealed && !v.active {
		at := loc{seg: v.first.seg}
		if n := len(v.locs); n > 0 {
			at = v.locs[n-1]
		}
		v.rep.Unsealed = true
		return v.rep, v.fail(at, v.prevSeq, false, fmt.Errorf("%w: the log ends at seq %d without the closing seal and the "+
			"running agent did not vouch for its head: the agent stopped without closing the log (opening it repairs and signs it) or records after "+
			"seq %d were cut off", ErrUnsigned, v.prevSeq, v.prevSeq))
	}
	return v.rep, nil
}

func (v *verifier) segment(sf segFile, last bool) error {
	path := filepath.Join(v.dir, sf.name)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open segment %s: %w", sf.name, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm() != 0o600 {
		v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("segment %s has mode %04o (want 0600)", sf.name, fi.Mode().Perm()))
	}
	lr := newLineReader(f)
	n := 0
	for {
		line, complete, err := lr.read()
		if errors.Is(err, io.EOF) {
			break
		}
		at := loc{seg: sf.name, line: lr.line}
		if err != nil {
			return v.fail(at, v.prevSeq+1, true, err)
		}
		if !complete {
			if last && v.active && v.seen { // after the running writer's head: being written
				v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s line %d is being written", sf.name, lr.line))
				break
			}
			return v.fail(at, v.prevSeq+1, true, fmt.Errorf("%w: the last line is incomplete (a write cut short, or the tail "+
				"was truncated); opening the log with the agent cuts it off and records that it did", ErrTorn))
		}
		w, d, err := decodeLine(line)
		if err != nil {
			if w != nil && w.Seq != 0 {
				return v.fail(at, w.Seq, false, err)
			}
			return v.fail(at, v.prevSeq+1, true, err)
		}
		n++
		if n == 1 && w.Seq != sf.first {
			return v.fail(at, w.Seq, false, fmt.Errorf("%w: the segment is named for seq %d but starts with seq %d "+
				"(renamed, or swapped in from another log)", ErrBrokenChain, sf.first, w.Seq))
		}
		if err := v.link(w, at); err != nil {
			return err
		}
		if v.live != nil && w.Seq == v.live.Seq {
			if b64.EncodeToString(d[:]) != v.live.Hash {
				return v.fail(at, w.Seq, false, fmt.Errorf("%w: the log does not hold the running agent's head: its seq %d "+
					"has another hash (records up to it were rewritten)", ErrBrokenChain, w.Seq))
			}
			v.seen = true
		}
		at.cp = w.CP != nil
		if len(v.hashes) == 0 {
			v.base = w.Seq
		}
		v.hashes = append(v.hashes, d)
		v.locs = append(v.locs, at)
		v.rep.Records++
		if w.CP != nil {
			if err := v.checkpoint(w, at); err != nil {
				return err
			}
		} else {
			v.lastData = w.Seq
		}
		v.prevSeq, v.prevHash, v.lastW = w.Seq, d, w
	}
	if n == 0 {
		if !last {
			return v.fail(loc{seg: sf.name}, sf.first, true, fmt.Errorf("%w: the segment is empty but is not the last", ErrBrokenChain))
		}
		if v.have && sf.first != v.prevSeq+1 {
			return v.fail(loc{seg: sf.name}, sf.first, true, fmt.Errorf("%w: the empty last segment does not follow seq %d", ErrBrokenChain, v.prevSeq))
		}
	}
	return nil
}

// link checks w against the record before it (or takes it as the first).
func (v *verifier) link(w *wire, at loc) error {
	if !v.have {
		v.have = true
		v.first, v.firstPrv = at, w.Prev
		v.rep.FirstSeq = w.Seq
		if w.Seq == 1 && w.Prev != "" {
			return v.fail(at, w.Seq, false, fmt.Errorf("%w: the first record of the log has a prev hash", ErrBrokenChain))
		}
		return nil
	}
	want := v.prevSeq + 1
	switch {
	case w.Seq > want:
		return v.fail(at, w.Seq, false, fmt.Errorf("%w: expected seq %d, found %d: %s missing here (deleted or moved)",
			ErrBrokenChain, want, w.Seq, span(want, w.Seq-1)))
	case w.Seq < want:
		return v.fail(at, w.Seq, false, fmt.Errorf("%w: expected seq %d, found %d: records are out of order or repeated",
			ErrBrokenChain, want, w.Seq))
	}
	if w.Prev != b64.EncodeToString(v.prevHash[:]) {
		return v.fail(at, w.Seq, false, fmt.Errorf("%w: prev does not match the hash of seq %d (that record was altered, "+
			"or this one comes from another log)", ErrBrokenChain, v.prevSeq))
	}
	return nil
}

func span(a, b uint64) string {
	if a == b {
		return fmt.Sprintf("record %d is", a)
	}
	return fmt.Sprintf("records %d-%d are", a, b)
}

// checkpoint verifies a record that carries a checkpoint.
func (v *verifier) checkpoint(w *wire, at loc) error {
	cp := w.CP
	t := EventType(w.Type)
	bad := func(format string, args ...any) error {
		return v.fail(at, w.Seq, false, fmt.Errorf("%w: %s", ErrBadCheckpoint, fmt.Sprintf(format, args...)))
	}
	if t != LogCheckpoint && t != LogPruned {
		return bad("a %s record may not carry a checkpoint", t)
	}
	if cp.Gen >= uint64(len(v.keys)) {
		return bad("it names key generation %d but kel.jsonl has generations 0-%d", cp.Gen, len(v.keys)-1)
	}
	if int64(cp.Gen) < v.lastGen {
		return bad("key generation %d after a checkpoint of generation %d", cp.Gen, v.lastGen)
	}
	if cp.Kid != v.kids[cp.Gen] {
		for g, k := range v.kids {
			if k == cp.Kid {
				return bad("it names generation %d but was made with the key of generation %d", cp.Gen, g)
			}
		}
		return bad("it was made with a key that is not in kel.jsonl of %s (a record from another agent?)", v.id)
	}
	if cp.HeadSeq >= w.Seq {
		return bad("its head seq %d is not before the checkpoint itself", cp.HeadSeq)
	}
	head, err := b64.DecodeString(cp.Head)
	if err != nil || len(head) != 32 {
		return bad("the head is not a base64url SHA-256 hash")
	}
	sig, err := b64.DecodeString(cp.Sig)
	if err != nil {
		return bad("the signature is not base64url")
	}
	b, err := bindingOf(w)
	if err != nil {
		return bad("%v", err)
	}
	if err := v.keys[cp.Gen].Verify(checkpointInput(v.id, cp.Gen, b, cp.HeadSeq, head).Message(), sig); err != nil {
		return bad("the signature does not verify with the generation %d key of %s: %v", cp.Gen, v.id, err)
	}
	var h [32]byte
	copy(h[:], head)
	switch {
	case cp.HeadSeq >= v.base && cp.HeadSeq < v.base+uint64(len(v.hashes)):
		if v.hashes[cp.HeadSeq-v.base] != h {
			return bad("its head does not match the hash of seq %d (that record was altered)", cp.HeadSeq)
		}
	case cp.HeadSeq >= v.rep.FirstSeq:
		v.deferred[cp.HeadSeq] = claim{head: h, at: at, seq: w.Seq}
	case t == LogPruned && cp.HeadSeq == v.rep.FirstSeq-1:
		if b64.EncodeToString(head) != v.firstPrv {
			return bad("it vouches for removed records up to seq %d, but its head is not the prev of seq %d", cp.HeadSeq, v.rep.FirstSeq)
		}
		v.rep.Anchored = true
	}
	v.rep.Checkpoints++
	v.lastGen = int64(cp.Gen)
	if n := len(v.rep.Generations); n == 0 || v.rep.Generations[n-1] != cp.Gen {
		v.rep.Generations = append(v.rep.Generations, cp.Gen)
	}
	if cp.HeadSeq > v.rep.CoveredSeq && cp.HeadSeq >= v.rep.FirstSeq {
		v.rep.CoveredSeq = cp.HeadSeq
		// Hashes up to the covered head are no longer needed (a later claim on one is deferred).
		if cp.HeadSeq >= v.base {
			drop := min(cp.HeadSeq-v.base, uint64(len(v.hashes)))
			v.hashes = v.hashes[drop:]
			v.locs = v.locs[drop:]
			v.base += drop
		}
	}
	return nil
}

// firstUncovered is the location of the first non-checkpoint record after CoveredSeq.
func (v *verifier) firstUncovered() (loc, uint64) {
	for i, l := range v.locs {
		seq := v.base + uint64(i)
		if seq > v.rep.CoveredSeq && !l.cp {
			return l, seq
		}
	}
	return v.first, v.rep.FirstSeq
}

// checkDeferred re-reads the log to check checkpoint heads that were older than the hashes kept.
func (v *verifier) checkDeferred(segs []segFile) error {
	for _, sf := range segs {
		f, err := os.Open(filepath.Join(v.dir, sf.name))
		if err != nil {
			return err
		}
		lr := newLineReader(f)
		for {
			line, complete, err := lr.read()
			if err != nil || !complete {
				break
			}
			w, d, err := decodeLine(bytes.Clone(line))
			if err != nil {
				break
			}
			if c, ok := v.deferred[w.Seq]; ok {
				if c.head != d {
					f.Close()
					return v.fail(c.at, c.seq, false, fmt.Errorf("%w: its head does not match the hash of seq %d (that record was altered)",
						ErrBadCheckpoint, w.Seq))
				}
				delete(v.deferred, w.Seq)
			}
		}
		f.Close()
	}
	if len(v.deferred) > 0 {
		seqs := make([]uint64, 0, len(v.deferred))
		for s := range v.deferred {
			seqs = append(seqs, s)
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		c := v.deferred[seqs[0]]
		return v.fail(c.at, c.seq, false, fmt.Errorf("%w: its head seq %d is not in the log", ErrBadCheckpoint, seqs[0]))
	}
	return nil
}
