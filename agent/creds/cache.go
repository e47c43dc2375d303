// Package creds holds each pod's role credentials before the pod asks: fetched when the pod appears,
// refreshed in the background well before SDKs would refresh, shared by concurrent misses, and dropped
// the moment the pod or its role goes. It knows neither Kubernetes nor AWS: a Fetcher does the work.
package creds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Key identifies a cache entry. Keying by pod UID, not IP or role alone, is what keeps one pod's
// credentials from ever reaching another pod, even one that reuses its IP or its role.
// Every field that shapes the session is in it, so that a changed annotation is a new session at once rather than at
// the next rotation: a session duration lowered to limit exposure must not leave hours of the old one served.
type Key struct {
	PodUID   string
	RoleARN  string
	Audience string
	Duration time.Duration
	Regional bool
	// Narrowing is a digest of the session policies and chained role; empty for a plain role.
	Narrowing string
}

// Request is everything a Fetcher needs for one pod and role.
type Request struct {
	PodUID         string
	Namespace      string
	Pod            string
	ServiceAccount string
	RoleARN        string
	Audience       string
	Duration       time.Duration
	Regional       bool
	// SessionPolicy (compact JSON) and SessionPolicyARNs narrow the session to their intersection with the role;
	// SessionPolicySHA256 identifies SessionPolicy in issuance records.
	SessionPolicy       string
	SessionPolicySHA256 string
	SessionPolicyARNs   []string
	// ChainRoleARN is a second role assumed with the first role's credentials (cross-account); ExternalID goes with it.
	ChainRoleARN string
	ExternalID   string
	// Narrowing digests the four fields above (see Key); the role mapper computes it once per annotation change.
	Narrowing string
}

// Key returns the request's cache key.
func (r Request) Key() Key {
	return Key{PodUID: r.PodUID, RoleARN: r.RoleARN, Audience: r.Audience, Duration: r.Duration, Regional: r.Regional, Narrowing: r.Narrowing}
}

// Credentials are one role session's credentials.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	Issued          time.Time // when the cache stored them
	AccountID       string
	SessionName     string
	// ServedRoleARN is the role the credentials are for: the chained role when there is one.
	ServedRoleARN string
	// PackedPolicySize is STS's report of how much of the packed session policy limit was used, in percent.
	PackedPolicySize int32
}

// Fetcher obtains fresh credentials (a TokenRequest, then STS).
type Fetcher interface {
	Fetch(ctx context.Context, r Request) (Credentials, error)
}

// Observer hears what the cache does; the agent turns it into metrics and audit lines. Its methods are
// called with the cache's lock held, so that a Forgot is never followed by a late Stored for the same
// entry: they must be quick and must not call back into the Cache.
type Observer interface {
	Added(r Request)                                // an entry for r now exists; Forgot(r) ends it
	Stored(r Request, c Credentials, reason string) // reason: "prefetch", "miss", "refresh"
	FetchFailed(r Request, reason string, err error)
	Stale(r Request, c Credentials)
	Forgot(r Request)
}

// ErrUnavailable wraps fetch failures the caller sees while there is nothing valid to serve.
var ErrUnavailable = errors.New("credentials unavailable")

// errForgotten answers a background fetch of an entry Retain dropped before the fetch began.
var errForgotten = errors.New("entry dropped: the pod or its role is gone")

// Serving rules, from the SDKs' refresh windows (imds-contract.md §3): rotate when under ~30 minutes
// remain, never serve under 15 (botocore would refresh on every call), and when STS is failing keep
// serving what we have while more than 5 minutes remain (under that, JS and Go v1 refresh in a tight loop).
// Shorter sessions scale these down (see schedule).
const (
	refreshBefore = 30 * time.Minute
	minServe      = 15 * time.Minute
	staleFloor    = 5 * time.Minute
)

// maxBackgroundFetches bounds Run's fetches in flight. A node filling up admits 110 prefetches at once; run all
// together, their requests and responses are held at the same time, and the memory they took stays with the process
// long after. Sixteen at ~10 ms each still fetch a full node within a tenth of a second.
const maxBackgroundFetches = 16

// maxSleep bounds how long Run sleeps: timers run on the monotonic clock, so a wall-clock step or a
// suspended VM would otherwise delay rotations that are due by the wall clock credentials expire by.
const maxSleep = time.Minute

const (
	reasonPrefetch = "prefetch"
	reasonMiss     = "miss"
	reasonRefresh  = "refresh"
)

// Config tunes the cache.
type Config struct {
	Clock clock.WithTicker // nil: the real clock
	// PrefetchQPS and PrefetchBurst limit the fetches for entries never fetched: new pods, whose first request is
	// their deadline. The burst covers a node filling up at once (110 pods, the kubelet's default maximum).
	PrefetchQPS   float64 // default 50
	PrefetchBurst int     // default 110
	// RefreshQPS and RefreshBurst limit rotations, which have 15 minutes or more of validity left to wait in.
	RefreshQPS   float64       // default 10
	RefreshBurst int           // default 10
	FetchTimeout time.Duration // one shared fetch; default 10 s
	Observer     Observer      // nil: none
	// Idle, if set, is called from Run when a run of its fetches has ended: none in flight and none due. A node's
	// pods filling up at once end in one call; the agent hands back the memory the run took.
	Idle func()
}

// state is what an entry's last finished fetch left it with; record moves any state to valid or failing.
//
//	pending: never fetched; Get fetches at once, Run prefetches it ahead of rotations
//	valid:   served down to minLeft, rotated from refreshAt
//	failing: no fetch until retryAt; older credentials, if any, served while over staleFloor remains
//
// Across states, an entry is fetching from when Get or pick decides to fetch it until fetchOnce or record ends
// that; retained once Retain asks for it (Run fetches only those); dropped, for good, once Retain lets it go.
type state uint8

const (
	pending state = iota
	valid
	failing
)

func (s state) String() string { return [...]string{"pending", "valid", "failing"}[s] }

type entry struct {
	req Request
	// flight names the entry's shared fetch. It is unique to the entry, not its Key, so that an entry
	// created after Retain dropped one with the same Key never joins the dropped one's fetch.
	flight                      string
	state                       state
	fetching, retained, dropped bool
	creds                       Credentials // zero until the first store; kept while failing
	refreshAt                   time.Time   // valid, and failing with older credentials: rotation due
	minLeft                     time.Duration
	failures                    int // failing: fetches failed in a row, err the last one's error
	err                         error
	retryAt                     time.Time
}

// has reports whether e holds credentials, however old: store never keeps ones without an Expiration.
func (e *entry) has() bool { return !e.creds.Expiration.IsZero() }

// canServe reports whether e's credentials have at least their minimum lifetime left.
func (e *entry) canServe(now time.Time) bool {
	return e.has() && !now.Add(e.minLeft).After(e.creds.Expiration)
}

// canServeStale reports whether, fetches failing, e's older credentials have more than staleFloor left.
func (e *entry) canServeStale(now time.Time) bool {
	return e.has() && now.Add(staleFloor).Before(e.creds.Expiration)
}

// backingOff reports whether a failure forbids fetching e now.
func (e *entry) backingOff(now time.Time) bool { return e.state == failing && now.Before(e.retryAt) }

// due is when e next wants a background fetch: its rotation, or its backoff's end if later (zero: at once).
func (e *entry) due() time.Time {
	if e.state == failing && e.retryAt.After(e.refreshAt) {
		return e.retryAt
	}
	return e.refreshAt
}

// store moves e to valid with creds, which have more than staleFloor left, and schedules their rotation.
func (e *entry) store(creds Credentials, now time.Time) {
	before, minLeft := schedule(creds.Expiration.Sub(now))
	e.state, e.creds, e.minLeft, e.failures, e.err = valid, creds, minLeft, 0, nil
	e.refreshAt = creds.Expiration.Add(-before - jitter(before, creds.Expiration.Sub(now)))
}

// fail moves e to failing, keeping its older credentials, and backs off the longer the more failures in a row.
func (e *entry) fail(err error, now time.Time) {
	e.state, e.failures, e.err = failing, e.failures+1, err
	e.retryAt = now.Add(backoff(e.failures, Retryable(err)))
}

// Cache is the per-pod credential cache.
type Cache struct {
	cfg        Config
	fetcher    Fetcher
	prefetches *rate.Limiter
	refreshes  *rate.Limiter
	group      singleflight.Group

	mu      sync.Mutex
	entries map[Key]*entry
	nextID  uint64
	wake    chan struct{}
	// size is len(entries), kept beside it so that Len takes no lock: a metrics scrape reads it, and the cache calls
	// its Observer, whose metrics wait on the scrape, with mu held.
	size atomic.Int64
}

// New returns a cache that fetches with f.
func New(f Fetcher, cfg Config) *Cache {
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.RefreshQPS <= 0 {
		cfg.RefreshQPS = 10
	}
	if cfg.RefreshBurst <= 0 {
		cfg.RefreshBurst = 10
	}
	if cfg.PrefetchQPS <= 0 {
		cfg.PrefetchQPS = 50
	}
	if cfg.PrefetchBurst <= 0 {
		cfg.PrefetchBurst = 110
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 10 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return &Cache{
		cfg:        cfg,
		fetcher:    f,
		prefetches: rate.NewLimiter(rate.Limit(cfg.PrefetchQPS), cfg.PrefetchBurst),
		refreshes:  rate.NewLimiter(rate.Limit(cfg.RefreshQPS), cfg.RefreshBurst),
		entries:    make(map[Key]*entry),
		wake:       make(chan struct{}, 1),
	}
}

// addLocked adds a pending entry for r.
func (c *Cache) addLocked(r Request) *entry {
	c.nextID++
	e := &entry{req: r, flight: strconv.FormatUint(c.nextID, 10)}
	c.entries[r.Key()] = e
	c.cfg.Observer.Added(r)
	c.size.Store(int64(len(c.entries)))
	return e
}

// Outcome says how Get answered.
type Outcome int

// Get outcomes.
const (
	Hit   Outcome = iota // served from cache
	Miss                 // fetched now
	Stale                // fetch failed; still-valid older credentials served
)

// Get returns credentials for r with at least the minimum lifetime left, fetching them if needed, or older
// ones while fetches fail. When ctx ends first Get returns ctx.Err(); the fetch it started completes and is stored.
func (c *Cache) Get(ctx context.Context, r Request) (Credentials, Outcome, error) {
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	e := c.entries[r.Key()]
	if e == nil {
		e = c.addLocked(r)
	}
	if e.canServe(now) {
		creds := e.creds
		c.mu.Unlock()
		return creds, Hit, nil
	}
	cause := e.err
	if !e.backingOff(now) { // else answer at once rather than let a pod's retries become STS calls
		e.fetching = true
		c.mu.Unlock()
		var res singleflight.Result
		select {
		case res = <-c.shared(ctx, e, reasonMiss):
		case <-ctx.Done():
			return Credentials{}, Miss, ctx.Err()
		}
		if res.Err == nil {
			return res.Val.(Credentials), Miss, nil
		}
		c.mu.Lock()
		now, cause = c.cfg.Clock.Now(), res.Err
	}
	defer c.mu.Unlock()
	if !e.canServeStale(now) {
		return Credentials{}, Miss, fmt.Errorf("%w: %w", ErrUnavailable, cause)
	}
	c.cfg.Observer.Stale(e.req, e.creds)
	return e.creds, Stale, nil
}

// shared starts, or joins, e's one fetch. The fetch runs on a context no single caller owns: a miss's
// outlives the caller who started it (bounded by FetchTimeout) so that the others waiting still get
// an answer and it is stored; a background fetch ends with Run.
func (c *Cache) shared(ctx context.Context, e *entry, reason string) <-chan singleflight.Result {
	return c.group.DoChan(e.flight, func() (any, error) {
		fctx := ctx
		if reason == reasonMiss {
			fctx = context.WithoutCancel(ctx)
		}
		fctx, cancel := context.WithTimeout(fctx, c.cfg.FetchTimeout)
		defer cancel()
		return c.fetchOnce(fctx, e, reason)
	})
}

// fetchOnce fetches and records e's credentials unless another fetch made that unnecessary since the
// caller looked: a Get racing a fetch that has just finished, or a background pass for an entry a miss
// refreshed or Retain dropped, must not cost another STS call.
func (c *Cache) fetchOnce(ctx context.Context, e *entry, reason string) (Credentials, error) {
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	req, creds, err, needless := e.req, e.creds, e.err, true
	switch background := reason != reasonMiss; {
	case background && e.dropped:
		err = errForgotten
	case !background && e.canServe(now):
		err = nil
	case background && !e.due().After(now), !background && !e.backingOff(now):
		needless = false
	}
	e.fetching = !needless
	c.mu.Unlock()
	if !needless {
		creds, err = c.fetcher.Fetch(ctx, req)
		creds, err = c.record(e, creds, err, reason)
	}
	if err != nil {
		return Credentials{}, err
	}
	return creds, nil
}

// record stores a fetch's result in e, unless e was dropped meanwhile.
func (c *Cache) record(e *entry, creds Credentials, err error, reason string) (Credentials, error) {
	now := c.cfg.Clock.Now()
	if err == nil {
		creds.Issued = now
		if life := creds.Expiration.Sub(now); life <= staleFloor {
			// Serving them would put SDKs in a refresh loop, and rotating them would put us in one.
			err = fmt.Errorf("credentials expire in %s, too soon to serve (is this node's clock right?)", life.Round(time.Second))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e.fetching = false
	if !e.dropped { // else the pod or its role went while fetching: answer the callers, store nothing
		if !e.has() && reason == reasonRefresh {
			reason = reasonPrefetch
		}
		if err != nil {
			e.fail(err, now)
			c.cfg.Observer.FetchFailed(e.req, reason, err)
		} else {
			e.store(creds, now)
			c.cfg.Observer.Stored(e.req, creds, reason)
		}
		c.signal()
	}
	return creds, err
}

// schedule returns, for credentials with life left, how long before expiry to rotate them and the
// least lifetime they are served with. A 1 h session rotates with 30 min left and is served down to
// 15; shorter ones scale down (rotate at half-life, serve down to a quarter of it, never under
// staleFloor), and the rotation always falls while they are still served, so a background refresh,
// not a pod's request, replaces them. life must exceed staleFloor.
func schedule(life time.Duration) (before, minLeft time.Duration) {
	minLeft = max(staleFloor, min(minServe, life/4))
	before = min(refreshBefore, life/2)
	if before <= minLeft {
		before = (life + minLeft) / 2
	}
	return before, minLeft
}

// jitter spreads the rotations of pods that started together: up to a fifth of before, earlier, never
// so much that the rotation falls due at once.
func jitter(before, life time.Duration) time.Duration {
	return time.Duration(rand.Float64() * float64(min(before/5, (life-before)/2)))
}

// backoff is exponential with jitter for retryable errors (1 s .. 2 min) and slower for terminal ones
// (1 .. 10 min): a terminal error may clear when someone fixes a trust policy, so it is retried, rarely.
// The result lies in [d/2, d) for the nominal delay d.
func backoff(failures int, retryable bool) time.Duration {
	base, ceiling := time.Second, 2*time.Minute
	if !retryable {
		base, ceiling = time.Minute, 10*time.Minute
	}
	d := base << min(max(failures, 1)-1, 20)
	if d > ceiling || d <= 0 {
		d = ceiling
	}
	return d/2 + time.Duration(rand.Float64()*float64(d/2))
}

// Retryable reports whether a fetch error may clear if tried again: errors say so with a Retryable
// method (STS and TokenRequest errors do); anything else is assumed transient.
func Retryable(err error) bool {
	var r interface{ Retryable() bool }
	if errors.As(err, &r) {
		return r.Retryable()
	}
	return true
}

func (c *Cache) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Retain makes the cache hold exactly the given requests: entries for pods or roles not in want are
// dropped at once, and new ones are queued for prefetch.
func (c *Cache) Retain(want []Request) {
	keep := make(map[Key]Request, len(want))
	for _, r := range want {
		keep[r.Key()] = r
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if _, ok := keep[k]; !ok {
			delete(c.entries, k)
			c.size.Store(int64(len(c.entries)))
			e.dropped = true
			c.cfg.Observer.Forgot(e.req)
		}
	}
	wake := false
	for k, r := range keep {
		e := c.entries[k]
		if e == nil {
			e = c.addLocked(r)
		}
		e.req = r
		if !e.retained {
			e.retained, wake = true, true
		}
	}
	if wake {
		c.signal()
	}
}

// Run prefetches and refreshes in the background until ctx is done: new entries at most PrefetchQPS fetches a
// second, rotations at most RefreshQPS, each under its own limiter so that new pods never queue behind rotations.
// It returns once the fetches it started have returned.
func (c *Cache) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	inFlight := make(chan struct{}, maxBackgroundFetches)
	busy := false // fetches started since the last Idle
	for {
		e, next := c.pick(c.cfg.Clock.Now(), false, nil)
		if e == nil {
			if busy && len(inFlight) == 0 && c.cfg.Idle != nil {
				busy = false
				c.cfg.Idle()
			}
			if !c.sleep(ctx, next) {
				return
			}
			continue
		}
		prefetch, lim := !e.has(), c.refreshes
		if prefetch {
			lim = c.prefetches
		}
		woken, err := c.waitLimiter(ctx, lim)
		if err != nil {
			return
		}
		if woken {
			continue // a pod may have appeared: choose again, and wait on its limiter if it is the one
		}
		select {
		case inFlight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		// Choose again after the waits, within the class the limiter admitted: the entry chosen may have been
		// fetched by a pod's request meanwhile, and a newer one of the class may be more urgent.
		if e, _ := c.pick(c.cfg.Clock.Now(), true, func(x *entry) bool { return x.has() != prefetch }); e != nil {
			busy = true
			wg.Go(func() {
				<-c.shared(ctx, e, reasonRefresh)
				<-inFlight
				c.signal() // the last to end wakes Run to see the run over
			})
		} else {
			<-inFlight
		}
	}
}

// sleep waits until next (zero: until woken), maxSleep at most, or a wake-up; false when ctx is done.
func (c *Cache) sleep(ctx context.Context, next time.Time) bool {
	d := maxSleep
	if !next.IsZero() {
		d = min(d, next.Sub(c.cfg.Clock.Now()))
	}
	t := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-c.wake:
	case <-t.C():
	}
	return true
}

// pick returns the entry to fetch next among those in accepts (nil: any), marked fetching if mark is set, and when
// the next one falls due. One at a time, re-chosen after every limiter wait, so that a pod appearing during a long
// run of refreshes is not queued behind them: entries without credentials (a pod about to make its first request)
// come first, then the most overdue.
func (c *Cache) pick(now time.Time, mark bool, in func(*entry) bool) (*entry, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *entry
	var bestAt, next time.Time
	for _, e := range c.entries {
		if e.fetching || !e.retained || in != nil && !in(e) {
			continue
		}
		at := e.due()
		if at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		if best == nil || !e.has() && best.has() || e.has() == best.has() && at.Before(bestAt) {
			best, bestAt = e, at
		}
	}
	if best != nil && mark {
		best.fetching = true // keeps the next pass from choosing it again
	}
	return best, next
}

// waitLimiter waits for lim to admit one fetch. It returns early, with woken set and the reservation given back,
// when the cache is signalled (an entry was added or a fetch ended), so that Run can choose again.
func (c *Cache) waitLimiter(ctx context.Context, lim *rate.Limiter) (woken bool, err error) {
	now := c.cfg.Clock.Now()
	res := lim.ReserveN(now, 1)
	d := res.DelayFrom(now)
	if d <= 0 {
		return false, nil
	}
	t := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		res.CancelAt(c.cfg.Clock.Now())
		return false, ctx.Err()
	case <-c.wake:
		res.CancelAt(c.cfg.Clock.Now())
		return true, nil
	case <-t.C():
		return false, nil
	}
}

// Entry is a read-only view of one cache entry, without secrets, for status and metrics.
type Entry struct {
	Request    Request
	Has        bool
	Expiration time.Time
	Issued     time.Time
	RefreshAt  time.Time
	LastError  string
	// AccessKeyID identifies the credentials served (an identifier CloudTrail logs, not a secret).
	AccessKeyID   string
	ServedRoleARN string
}

// Len is the number of entries.
func (c *Cache) Len() int { return int(c.size.Load()) }

// Snapshot lists the entries.
func (c *Cache) Snapshot() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		v := Entry{Request: e.req, Has: e.has(), Expiration: e.creds.Expiration, Issued: e.creds.Issued, RefreshAt: e.refreshAt,
			AccessKeyID: e.creds.AccessKeyID, ServedRoleARN: e.creds.ServedRoleARN}
		if e.state == failing {
			v.LastError = e.err.Error()
		}
		out = append(out, v)
	}
	return out
}

type nopObserver struct{}

func (nopObserver) Added(Request)                       {}
func (nopObserver) Stored(Request, Credentials, string) {}
func (nopObserver) FetchFailed(Request, string, error)  {}
func (nopObserver) Stale(Request, Credentials)          {}
func (nopObserver) Forgot(Request)                      {}
