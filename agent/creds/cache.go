// Package creds holds each pod's role credentials before the pod asks: fetched when the pod appears,
// refreshed in the background well before SDKs would refresh, shared by concurrent misses, and dropped
// the moment the pod or its role goes. It knows neither Kubernetes nor AWS: a Fetcher does the work.
package creds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Key identifies a cache entry. Keying by pod UID, not IP or role alone, is what keeps one pod's
// credentials from ever reaching another pod, even one that reuses its IP or its role.
type Key struct {
	PodUID  string
	RoleARN string
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
}

// Key returns the request's cache key.
func (r Request) Key() Key { return Key{PodUID: r.PodUID, RoleARN: r.RoleARN} }

// Credentials are one role session's credentials.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	Issued          time.Time // when the cache stored them
	AccountID       string
	SessionName     string
}

// Fetcher obtains fresh credentials (a TokenRequest, then STS).
type Fetcher interface {
	Fetch(ctx context.Context, r Request) (Credentials, error)
}

// Observer hears what the cache does; the agent turns it into metrics and audit lines.
type Observer interface {
	Stored(r Request, c Credentials, reason string) // reason: "prefetch", "miss", "refresh"
	FetchFailed(r Request, reason string, err error)
	Stale(r Request, c Credentials)
	Forgot(r Request)
}

// ErrUnavailable wraps fetch failures the caller sees while there is nothing valid to serve.
var ErrUnavailable = errors.New("credentials unavailable")

// Serving rules, from the SDKs' refresh windows (imds-contract.md §3): rotate when under ~30 minutes
// remain, never serve under 15 (botocore would refresh on every call), and when STS is failing keep
// serving what we have while more than 5 minutes remain (under that, JS and Go v1 refresh in a tight loop).
const (
	refreshBefore = 30 * time.Minute
	minServe      = 15 * time.Minute
	staleFloor    = 5 * time.Minute
)

// Config tunes the cache.
type Config struct {
	Clock        clock.WithTicker // nil: the real clock
	RefreshQPS   float64          // background fetches per second (prefetch and refresh); default 10
	RefreshBurst int              // default 10
	FetchTimeout time.Duration    // one shared fetch; default 10 s
	Observer     Observer         // nil: none
}

type entry struct {
	req       Request
	creds     Credentials
	has       bool
	refreshAt time.Time // background rotation due
	minServe  time.Duration
	inflight  bool
	failures  int
	retryAt   time.Time // no fetch before this after a failure
	lastErr   error
}

// Cache is the per-pod credential cache.
type Cache struct {
	cfg     Config
	fetcher Fetcher
	limiter *rate.Limiter
	group   singleflight.Group

	mu      sync.Mutex
	entries map[Key]*entry
	wake    chan struct{}
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
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 10 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return &Cache{
		cfg:     cfg,
		fetcher: f,
		limiter: rate.NewLimiter(rate.Limit(cfg.RefreshQPS), cfg.RefreshBurst),
		entries: make(map[Key]*entry),
		wake:    make(chan struct{}, 1),
	}
}

// Outcome says how Get answered.
type Outcome int

// Get outcomes.
const (
	Hit   Outcome = iota // served from cache
	Miss                 // fetched now
	Stale                // fetch failed; still-valid older credentials served
)

// Get returns credentials for r with at least the minimum lifetime left, fetching them if needed.
func (c *Cache) Get(ctx context.Context, r Request) (Credentials, Outcome, error) {
	key := r.Key()
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	e := c.entries[key]
	if e == nil {
		e = &entry{req: r}
		c.entries[key] = e
	}
	if e.has && servable(e.creds, e.minServe, now) {
		creds := e.creds
		c.mu.Unlock()
		return creds, Hit, nil
	}
	if e.lastErr != nil && now.Before(e.retryAt) {
		// Backing off: answer at once rather than letting a pod's retries become STS calls.
		creds, ok, err := c.staleLocked(e, now)
		c.mu.Unlock()
		if ok {
			return creds, Stale, nil
		}
		return Credentials{}, Miss, err
	}
	c.mu.Unlock()

	creds, err := c.fetch(ctx, e, "miss")
	if err == nil {
		return creds, Miss, nil
	}
	if ctx.Err() != nil {
		return Credentials{}, Miss, err
	}
	c.mu.Lock()
	creds, ok, serr := c.staleLocked(e, c.cfg.Clock.Now())
	c.mu.Unlock()
	if ok {
		return creds, Stale, nil
	}
	return Credentials{}, Miss, serr
}

func (c *Cache) staleLocked(e *entry, now time.Time) (Credentials, bool, error) {
	if e.has && now.Add(staleFloor).Before(e.creds.Expiration) {
		c.cfg.Observer.Stale(e.req, e.creds)
		return e.creds, true, nil
	}
	return Credentials{}, false, fmt.Errorf("%w: %w", ErrUnavailable, e.lastErr)
}

func servable(cr Credentials, minLeft time.Duration, now time.Time) bool {
	return !now.Add(minLeft).After(cr.Expiration)
}

// fetch runs one shared fetch for e's key on a context no single caller owns; the caller waits on its own.
func (c *Cache) fetch(ctx context.Context, e *entry, reason string) (Credentials, error) {
	key := e.req.Key()
	ch := c.group.DoChan(key.PodUID+"\x00"+key.RoleARN, func() (any, error) {
		c.mu.Lock()
		e.inflight = true
		req := e.req
		c.mu.Unlock()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FetchTimeout)
		defer cancel()
		creds, err := c.fetcher.Fetch(fctx, req)
		c.record(e, creds, err, reason)
		return creds, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Credentials{}, res.Err
		}
		return res.Val.(Credentials), nil
	case <-ctx.Done():
		return Credentials{}, ctx.Err()
	}
}

func (c *Cache) record(e *entry, creds Credentials, err error, reason string) {
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e.inflight = false
	if c.entries[e.req.Key()] != e {
		return // forgotten while fetching: the pod or its role is gone
	}
	if !e.has && reason == "refresh" {
		reason = "prefetch"
	}
	if err != nil {
		e.failures++
		e.lastErr = err
		e.retryAt = now.Add(backoff(e.failures, isRetryable(err)))
		c.cfg.Observer.FetchFailed(e.req, reason, err)
		c.signal()
		return
	}
	creds.Issued = now
	life := creds.Expiration.Sub(now)
	before := min(refreshBefore, life/2)
	// Jitter spreads the rotations of pods that started together.
	jitter := time.Duration(rand.Float64() * float64(before) / 5)
	e.creds, e.has = creds, true
	e.minServe = max(staleFloor, min(minServe, life/4))
	e.refreshAt = creds.Expiration.Add(-before - jitter)
	e.failures, e.lastErr, e.retryAt = 0, nil, time.Time{}
	c.cfg.Observer.Stored(e.req, creds, reason)
	c.signal()
}

// backoff is exponential with jitter for retryable errors (1 s .. 2 min) and slower for terminal ones
// (1 .. 10 min): a terminal error may clear when someone fixes a trust policy, so it is retried, rarely.
func backoff(failures int, retryable bool) time.Duration {
	base, ceiling := time.Second, 2*time.Minute
	if !retryable {
		base, ceiling = time.Minute, 10*time.Minute
	}
	d := base << min(failures-1, 20)
	if d > ceiling || d <= 0 {
		d = ceiling
	}
	return d/2 + time.Duration(rand.Float64()*float64(d/2))
}

func isRetryable(err error) bool {
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
			c.cfg.Observer.Forgot(e.req)
		}
	}
	added := false
	for k, r := range keep {
		if e, ok := c.entries[k]; ok {
			e.req = r
			continue
		}
		c.entries[k] = &entry{req: r}
		added = true
	}
	if added {
		c.signal()
	}
}

// Run prefetches and refreshes in the background until ctx is done, at most RefreshQPS fetches a second.
func (c *Cache) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		due, next := c.due(c.cfg.Clock.Now())
		for _, e := range due {
			if err := c.waitLimiter(ctx); err != nil {
				c.release(due)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = c.fetch(ctx, e, "refresh")
			}()
		}
		if len(due) > 0 {
			continue
		}
		if !c.sleep(ctx, next) {
			return
		}
	}
}

// sleep waits until next (zero: until woken) or a wake-up; false when ctx is done.
func (c *Cache) sleep(ctx context.Context, next time.Time) bool {
	var timer <-chan time.Time
	if !next.IsZero() {
		t := c.cfg.Clock.NewTimer(next.Sub(c.cfg.Clock.Now()))
		defer t.Stop()
		timer = t.C()
	}
	select {
	case <-ctx.Done():
		return false
	case <-c.wake:
	case <-timer:
	}
	return true
}

func (c *Cache) release(es []*entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range es {
		e.inflight = false
	}
}

// due returns the entries to fetch now (marking them in flight) and when the next one falls due.
func (c *Cache) due(now time.Time) ([]*entry, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var due []*entry
	var next time.Time
	for _, e := range c.entries {
		if e.inflight {
			continue
		}
		at := e.refreshAt // zero for entries never fetched: due now
		if e.lastErr != nil && e.retryAt.After(at) {
			at = e.retryAt
		}
		if !at.After(now) {
			e.inflight = true // the fetch clears it; keeps the next pass from queuing it again
			due = append(due, e)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return due, next
}

func (c *Cache) waitLimiter(ctx context.Context) error {
	res := c.limiter.ReserveN(c.cfg.Clock.Now(), 1)
	d := res.DelayFrom(c.cfg.Clock.Now())
	if d <= 0 {
		return nil
	}
	t := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		res.Cancel()
		return ctx.Err()
	case <-t.C():
		return nil
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
}

// Snapshot lists the entries.
func (c *Cache) Snapshot() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		v := Entry{Request: e.req, Has: e.has, Expiration: e.creds.Expiration, Issued: e.creds.Issued, RefreshAt: e.refreshAt}
		if e.lastErr != nil {
			v.LastError = e.lastErr.Error()
		}
		out = append(out, v)
	}
	return out
}

type nopObserver struct{}

func (nopObserver) Stored(Request, Credentials, string) {}
func (nopObserver) FetchFailed(Request, string, error)  {}
func (nopObserver) Stale(Request, Credentials)          {}
func (nopObserver) Forgot(Request)                      {}
