// Package replay refuses replayed and out-of-window messages: a timestamp window (default ±30 s) and a
// bounded cache of the message IDs seen inside it.
//
// The cache cannot be grown without bound by an attacker: only messages whose signature has verified are
// inserted (the caller's duty), each entry expires when its timestamp leaves the window (after which the
// message would be refused as stale anyway), the cache has a total capacity and a per-sender capacity, and
// when either is reached new messages are refused with replay_cache_full rather than evicting live entries
// (eviction would re-open the replay window for the evicted IDs). A sender that hits its own limit only
// blocks itself; with the default rate limits (100 msg/s, burst 200) an honest peer stays far below it.
//
// The cache lives in memory. After a restart it would not know the IDs accepted before. A session
// envelope cannot be replayed into a new session (it is bound to the session's keys and counters), so for
// those it is enough to refuse what is stamped before the cache was created. A store-and-forward envelope
// can: one accepted just before the restart may carry a timestamp up to the window ahead of that moment.
// CheckStored and CheckStoredTime therefore refuse every store-and-forward envelope stamped up to the
// start plus the window (the sender retries with a fresh timestamp, accepted once the window after the
// restart has passed).
package replay

import (
	"container/heap"
	"crypto/sha256"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/custos-agent/custos/reason"
)

// Defaults.
const (
	DefaultWindow    = 30 * time.Second
	DefaultCapacity  = 100_000
	DefaultPerSender = 10_000
)

// Config configures a Cache. Zero fields take the defaults.
type Config struct {
	// Window is how far a timestamp may be from now, either way.
	Window time.Duration
	// Capacity bounds the live entries of all senders together.
	Capacity int
	// PerSender bounds the live entries of one sender.
	PerSender int
	// Clock returns the time (default time.Now).
	Clock func() time.Time
	// Start is when the agent started, the restart barrier's base (zero: the clock's time at New). Only
	// a cache that really holds every ID accepted since Start may be given an earlier one (tests).
	Start time.Time
}

type entry struct {
	key    [32]byte
	sender string
	expiry int64 // Unix seconds: the entry is live while now <= expiry
}

type expiryHeap []entry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expiry < h[j].expiry }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// Cache is a replay cache. Safe for concurrent use.
type Cache struct {
	cfg     Config
	start   int64
	mu      sync.Mutex
	seen    map[[32]byte]struct{}
	senders map[string]int
	byTime  expiryHeap
}

// New makes a cache.
func New(cfg Config) *Cache {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.PerSender <= 0 {
		cfg.PerSender = min(DefaultPerSender, cfg.Capacity)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	start := cfg.Start
	if start.IsZero() {
		start = cfg.Clock()
	}
	return &Cache{cfg: cfg, start: start.Unix(), seen: map[[32]byte]struct{}{}, senders: map[string]int{}}
}

// Window is the configured timestamp window.
func (c *Cache) Window() time.Duration { return c.cfg.Window }

// Now is the cache's clock.
func (c *Cache) Now() time.Time { return c.cfg.Clock() }

// CheckTime checks a Unix-seconds timestamp against the window around now: stale_timestamp when it is
// older than the window (or older than the cache itself), future_timestamp when it is further ahead.
func (c *Cache) CheckTime(ts int64) error { return CheckTime(ts, c.cfg.Clock(), c.cfg.Window, c.start) }

// CheckStoredTime is CheckTime for a store-and-forward envelope: it also refuses any timestamp that a
// message accepted before this cache was created (before a restart) may carry.
func (c *Cache) CheckStoredTime(ts int64) error {
	return CheckTime(ts, c.cfg.Clock(), c.cfg.Window, c.storedBarrier())
}

// storedBarrier is the first timestamp no message accepted before the start can carry: one accepted at
// the latest just before start+1 s (start is truncated) had a timestamp at most the window ahead.
func (c *Cache) storedBarrier() int64 {
	return c.start + int64(math.Ceil(c.cfg.Window.Seconds())) + 1
}

// CheckTime checks ts against [now-window, now+window] and refuses anything stamped before notBefore
// (Unix seconds; 0 for no such bound).
func CheckTime(ts int64, now time.Time, window time.Duration, notBefore int64) error {
	t := time.Unix(ts, 0)
	if d := now.Sub(t); d > window {
		return reason.New(reason.StaleTimestamp, "timestamp %d is %s old, more than the %s window (check the sender's clock)", ts, d.Truncate(time.Second), window)
	}
	if d := t.Sub(now); d > window {
		return reason.New(reason.FutureTimestamp, "timestamp %d is %s in the future, more than the %s window (check the sender's clock)", ts, d.Truncate(time.Second), window)
	}
	if ts < notBefore {
		return reason.New(reason.StaleTimestamp, "timestamp %d is from before %d (this agent's restart barrier): its replay state is unknown; resend", ts, notBefore)
	}
	return nil
}

// Check checks ts (CheckTime) and records (sender, messageID), refusing a pair already seen with
// replayed_message and a full cache with replay_cache_full. Call it only after the message's signature
// has verified.
func (c *Cache) Check(sender, messageID string, ts int64) error {
	return c.check(sender, messageID, ts, c.start)
}

// CheckStored is Check for a store-and-forward envelope, with CheckStoredTime's restart barrier.
func (c *Cache) CheckStored(sender, messageID string, ts int64) error {
	return c.check(sender, messageID, ts, c.storedBarrier())
}

func (c *Cache) check(sender, messageID string, ts, notBefore int64) error {
	now := c.cfg.Clock()
	if err := CheckTime(ts, now, c.cfg.Window, notBefore); err != nil {
		return err
	}
	key := sha256.Sum256([]byte(sender + "\x00" + messageID))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(now.Unix())
	if _, dup := c.seen[key]; dup {
		return reason.New(reason.ReplayedMessage, "message %s from %s was already received", messageID, sender)
	}
	if len(c.seen) >= c.cfg.Capacity {
		return reason.New(reason.ReplayCacheFull, "the replay cache holds %d live message IDs (its capacity): message refused, retry later", len(c.seen))
	}
	if n := c.senders[sender]; n >= c.cfg.PerSender {
		return reason.New(reason.ReplayCacheFull, "%s has %d live message IDs in the replay cache (the per-sender limit): message refused, slow down", sender, n)
	}
	c.seen[key] = struct{}{}
	s := strings.Clone(sender)
	c.senders[s]++
	heap.Push(&c.byTime, entry{key: key, sender: s, expiry: ts + int64(c.cfg.Window/time.Second) + 1})
	return nil
}

func (c *Cache) sweepLocked(now int64) {
	for len(c.byTime) > 0 && c.byTime[0].expiry < now {
		e := heap.Pop(&c.byTime).(entry)
		delete(c.seen, e.key)
		if c.senders[e.sender]--; c.senders[e.sender] <= 0 {
			delete(c.senders, e.sender)
		}
	}
}

// Len is the number of live entries (after dropping expired ones).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked(c.cfg.Clock().Unix())
	return len(c.seen)
}
