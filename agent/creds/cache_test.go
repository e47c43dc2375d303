package creds_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/iamlet/iamlet/agent/creds"
)

var t0 = time.Date(2026, 8, 20, 17, 0, 0, 0, time.UTC)

// fetcher counts calls and answers with fn, by default credentials of lifetime life from the clock's now.
type fetcher struct {
	clock clock.PassiveClock
	life  time.Duration
	fn    func(ctx context.Context, r creds.Request, call int) (creds.Credentials, error) // nil: issue

	mu    sync.Mutex
	calls int
	reqs  []creds.Request
}

func newFetcher(clk clock.PassiveClock, life time.Duration) *fetcher {
	return &fetcher{clock: clk, life: life}
}

func (f *fetcher) Fetch(ctx context.Context, r creds.Request) (creds.Credentials, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.reqs = append(f.reqs, r)
	f.mu.Unlock()
	if f.fn != nil {
		return f.fn(ctx, r, n)
	}
	return f.issue(n), nil
}

func (f *fetcher) issue(n int) creds.Credentials {
	return creds.Credentials{
		AccessKeyID:     fmt.Sprintf("ASIA%04d", n),
		SecretAccessKey: fmt.Sprintf("secret-%d", n),
		SessionToken:    fmt.Sprintf("session-token-%d", n),
		Expiration:      f.clock.Now().Add(f.life),
		AccountID:       "123456789012",
	}
}

func (f *fetcher) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// observer records the cache's events as "stored:REASON:POD", "failed:REASON:POD", "stale:POD", "forgot:POD", and
// apart from them the entries it was told of (Added, not yet Forgot).
type observer struct {
	mu     sync.Mutex
	events []string
	live   map[creds.Key]int
}

func (o *observer) Added(r creds.Request) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.live == nil {
		o.live = make(map[creds.Key]int)
	}
	o.live[r.Key()]++
}

// Live are the entries added and not forgotten, and how many times each was added.
func (o *observer) Live() map[creds.Key]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.live)
}

func (o *observer) add(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, s)
}

func (o *observer) Stored(r creds.Request, _ creds.Credentials, reason string) {
	o.add("stored:" + reason + ":" + r.Pod)
}
func (o *observer) FetchFailed(r creds.Request, reason string, _ error) {
	o.add("failed:" + reason + ":" + r.Pod)
}
func (o *observer) Stale(r creds.Request, _ creds.Credentials) { o.add("stale:" + r.Pod) }
func (o *observer) Forgot(r creds.Request) {
	o.add("forgot:" + r.Pod)
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.live, r.Key())
}

func (o *observer) Events() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.events)
}

func (o *observer) Count(prefix string) int {
	n := 0
	for _, e := range o.Events() {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// requests are n pods' requests for role reader, named prefix0, prefix1, ...
func requests(prefix string, n int) []creds.Request {
	var rs []creds.Request
	for i := range n {
		rs = append(rs, request(fmt.Sprint(prefix, i), "reader"))
	}
	return rs
}

func request(pod, role string) creds.Request {
	return creds.Request{
		PodUID:         "uid-" + pod,
		Namespace:      "ns",
		Pod:            pod,
		ServiceAccount: "sa",
		RoleARN:        "arn:aws:iam::123456789012:role/" + role,
		Audience:       "sts.amazonaws.com",
		Duration:       time.Hour,
		Regional:       true,
	}
}

// retryableErr and terminalErr classify themselves the way sts.Error does.
type retryableErr struct{}

func (retryableErr) Error() string   { return "sts Throttling: rate exceeded" }
func (retryableErr) Retryable() bool { return true }

type terminalErr struct{}

func (terminalErr) Error() string   { return "sts AccessDenied: not authorized" }
func (terminalErr) Retryable() bool { return false }

type env struct {
	clock   *clocktesting.FakeClock
	fetcher *fetcher
	obs     *observer
	cache   *creds.Cache
}

func newEnv(t *testing.T, life time.Duration, cfg creds.Config) *env {
	t.Helper()
	e := &env{clock: clocktesting.NewFakeClock(t0), obs: &observer{}}
	e.fetcher = newFetcher(e.clock, life)
	cfg.Clock, cfg.Observer = e.clock, e.obs
	e.cache = creds.New(e.fetcher, cfg)
	return e
}

// run starts the cache's background loop and stops it, waiting for it, when the test ends.
func (e *env) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.cache.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func (e *env) get(t *testing.T, r creds.Request) (creds.Credentials, creds.Outcome, error) {
	t.Helper()
	return e.cache.Get(context.Background(), r)
}

func (e *env) entry(t *testing.T, r creds.Request) creds.Entry {
	t.Helper()
	for _, en := range e.cache.Snapshot() {
		if en.Request.Key() == r.Key() {
			return en
		}
	}
	t.Fatalf("Snapshot() has no entry for %v", r.Key())
	return creds.Entry{}
}

func outcomeName(o creds.Outcome) string {
	return [...]string{"Hit", "Miss", "Stale"}[o]
}

func TestGetNeverServesUnderMinimumLifetime(t *testing.T) {
	// A 1 h credential is served while at least 15 min remain; after that Get fetches anew, at once.
	tests := []struct {
		after     time.Duration
		want      creds.Outcome
		wantCalls int
	}{
		{0, creds.Hit, 1},
		{30 * time.Minute, creds.Hit, 1},
		{45 * time.Minute, creds.Hit, 1},
		{45*time.Minute + time.Second, creds.Miss, 2},
		{46 * time.Minute, creds.Miss, 2},
		{59 * time.Minute, creds.Miss, 2},
		{2 * time.Hour, creds.Miss, 2},
	}
	for _, tt := range tests {
		t.Run(tt.after.String(), func(t *testing.T) {
			e := newEnv(t, time.Hour, creds.Config{})
			r := request("web", "reader")
			first, out, err := e.get(t, r)
			if err != nil || out != creds.Miss {
				t.Fatalf("first Get() = %v, %v, want Miss, nil", outcomeName(out), err)
			}
			if !first.Issued.Equal(t0) {
				t.Errorf("first Get().Issued = %v, want %v", first.Issued, t0)
			}
			e.clock.Step(tt.after)
			got, out, err := e.get(t, r)
			if err != nil {
				t.Fatalf("Get() error = %v", err)
			}
			if out != tt.want {
				t.Errorf("Get() outcome = %v, want %v", outcomeName(out), outcomeName(tt.want))
			}
			if n := e.fetcher.Calls(); n != tt.wantCalls {
				t.Errorf("fetches = %d, want %d", n, tt.wantCalls)
			}
			if left := got.Expiration.Sub(e.clock.Now()); left < 15*time.Minute {
				t.Errorf("Get() served credentials with %v left, want >= 15m", left)
			}
			if !got.Issued.Equal(e.clock.Now()) && tt.want == creds.Miss {
				t.Errorf("Get().Issued = %v, want %v", got.Issued, e.clock.Now())
			}
		})
	}
}

func TestShortSessionsScaleThresholds(t *testing.T) {
	// Rotation at min(30m, life/2) before expiry (earlier by up to a fifth of that, for jitter); served
	// down to max(5m, min(15m, life/4)); rotation always falls while the credentials are still served.
	tests := []struct {
		life, before, minLeft time.Duration
	}{
		{8 * time.Minute, 6*time.Minute + 30*time.Second, 5 * time.Minute}, // shorter than STS grants: clock skew
		{15 * time.Minute, 7*time.Minute + 30*time.Second, 5 * time.Minute},
		{20 * time.Minute, 10 * time.Minute, 5 * time.Minute},
		{30 * time.Minute, 15 * time.Minute, 7*time.Minute + 30*time.Second},
		{time.Hour, 30 * time.Minute, 15 * time.Minute},
		{2 * time.Hour, 30 * time.Minute, 15 * time.Minute},
		{12 * time.Hour, 30 * time.Minute, 15 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.life.String(), func(t *testing.T) {
			e := newEnv(t, tt.life, creds.Config{})
			r := request("web", "reader")
			c, _, err := e.get(t, r)
			if err != nil {
				t.Fatalf("Get() error = %v", err)
			}
			got := e.entry(t, r)
			latest, earliest := c.Expiration.Add(-tt.before), c.Expiration.Add(-tt.before-tt.before/5)
			if got.RefreshAt.After(latest) || got.RefreshAt.Before(earliest) {
				t.Errorf("RefreshAt = expiry-%v, want between expiry-%v and expiry-%v",
					c.Expiration.Sub(got.RefreshAt), tt.before, tt.before+tt.before/5)
			}
			if !got.RefreshAt.After(t0) || !got.RefreshAt.Before(c.Expiration.Add(-tt.minLeft)) {
				t.Errorf("RefreshAt = expiry-%v, want after issue and before expiry-%v (last served)",
					c.Expiration.Sub(got.RefreshAt), tt.minLeft)
			}

			e.clock.SetTime(c.Expiration.Add(-tt.minLeft))
			if _, out, _ := e.get(t, r); out != creds.Hit {
				t.Errorf("Get() with %v left = %v, want Hit", tt.minLeft, outcomeName(out))
			}
			e.clock.Step(time.Second)
			if _, out, _ := e.get(t, r); out != creds.Miss {
				t.Errorf("Get() with %v left = %v, want Miss", tt.minLeft-time.Second, outcomeName(out))
			}
		})
	}
}

func TestGetServesStaleWhileFailing(t *testing.T) {
	errSTS := retryableErr{}
	tests := []struct {
		after time.Duration
		want  creds.Outcome // Stale, or Miss with an error
	}{
		{46 * time.Minute, creds.Stale},
		{54*time.Minute + 59*time.Second, creds.Stale},
		{55 * time.Minute, creds.Miss}, // exactly 5 min left: no longer
		{57 * time.Minute, creds.Miss},
		{61 * time.Minute, creds.Miss},
	}
	for _, tt := range tests {
		t.Run(tt.after.String(), func(t *testing.T) {
			e := newEnv(t, time.Hour, creds.Config{})
			e.fetcher.fn = func(_ context.Context, _ creds.Request, n int) (creds.Credentials, error) {
				if n == 1 {
					return e.fetcher.issue(n), nil
				}
				return creds.Credentials{}, errSTS
			}
			r := request("web", "reader")
			old, _, err := e.get(t, r)
			if err != nil {
				t.Fatalf("first Get() error = %v", err)
			}
			e.clock.Step(tt.after)
			got, out, err := e.get(t, r)
			if n := e.fetcher.Calls(); n != 2 {
				t.Errorf("fetches = %d, want 2", n)
			}
			if out != tt.want {
				t.Fatalf("Get() = %v, %v, want %v", outcomeName(out), err, outcomeName(tt.want))
			}
			if tt.want == creds.Stale {
				if err != nil || got != old {
					t.Errorf("Get() = %+v, %v, want the older credentials %+v", got, err, old)
				}
				if n := e.obs.Count("stale:"); n != 1 {
					t.Errorf("Observer.Stale calls = %d, want 1", n)
				}
				return
			}
			if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, errSTS) {
				t.Errorf("Get() error = %v, want one wrapping ErrUnavailable and the fetch error", err)
			}
			if got != (creds.Credentials{}) {
				t.Errorf("Get() = %+v with an error, want zero credentials", got)
			}
		})
	}
}

func TestGetBacksOff(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		nominal func(failures int) time.Duration // backoff lies in [nominal/2, nominal)
	}{
		{"retryable", retryableErr{}, func(n int) time.Duration { return min(time.Second<<(n-1), 2*time.Minute) }},
		{"unclassified", errors.New("connection reset"), func(n int) time.Duration { return min(time.Second<<(n-1), 2*time.Minute) }},
		{"terminal", terminalErr{}, func(n int) time.Duration { return min(time.Minute<<(n-1), 10*time.Minute) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, time.Hour, creds.Config{})
			e.fetcher.fn = func(context.Context, creds.Request, int) (creds.Credentials, error) {
				return creds.Credentials{}, tt.err
			}
			r := request("web", "reader")
			for failures := 1; failures <= 10; failures++ {
				_, _, err := e.get(t, r) // fails, and starts backoff number failures
				if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, tt.err) {
					t.Fatalf("Get() error = %v, want one wrapping ErrUnavailable and %v", err, tt.err)
				}
				d := tt.nominal(failures)
				e.clock.Step(d/2 - time.Millisecond)
				_, _, err = e.get(t, r)
				if n := e.fetcher.Calls(); n != failures {
					t.Fatalf("after failure %d: a Get %v later fetched (fetches = %d), want it to answer from backoff", failures, d/2-time.Millisecond, n)
				}
				if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, tt.err) {
					t.Errorf("Get() during backoff error = %v, want one wrapping ErrUnavailable and %v", err, tt.err)
				}
				e.clock.Step(d/2 + time.Millisecond) // now d after the failure: the backoff is over
			}
		})
	}
}

func TestGetShortLivedCredentialsAreNotServed(t *testing.T) {
	for _, life := range []time.Duration{-time.Hour, 0, 4 * time.Minute, 5 * time.Minute} {
		t.Run(life.String(), func(t *testing.T) {
			e := newEnv(t, life, creds.Config{})
			_, _, err := e.get(t, request("web", "reader"))
			if !errors.Is(err, creds.ErrUnavailable) {
				t.Errorf("Get() error = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestGetSharesOneFetchAmongConcurrentMisses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		release := make(chan struct{})
		e.fetcher.fn = func(ctx context.Context, _ creds.Request, n int) (creds.Credentials, error) {
			<-release
			return e.fetcher.issue(n), nil
		}
		r := request("web", "reader")
		const callers = 1000
		got := make([]creds.Credentials, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() { got[i], _, errs[i] = e.cache.Get(context.Background(), r) })
		}
		synctest.Wait() // every caller is waiting on the one fetch
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches with %d callers waiting = %d, want 1", callers, n)
		}
		close(release)
		wg.Wait()
		for i := range callers {
			if errs[i] != nil || got[i] != got[0] || got[i].AccessKeyID == "" {
				t.Fatalf("Get() #%d = %v, %v, want %v, nil", i, got[i].AccessKeyID, errs[i], got[0].AccessKeyID)
			}
		}
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches = %d, want 1", n)
		}
	})
}

func TestGetCancelledCallerLeavesFetchToComplete(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		release := make(chan struct{})
		e.fetcher.fn = func(ctx context.Context, _ creds.Request, n int) (creds.Credentials, error) {
			select {
			case <-release:
				return e.fetcher.issue(n), nil
			case <-ctx.Done():
				return creds.Credentials{}, ctx.Err()
			}
		}
		r := request("web", "reader")
		ctx, cancel := context.WithCancel(context.Background())
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _, err = e.cache.Get(ctx, r)
		}()
		synctest.Wait()
		cancel()
		<-done
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Get() with its context cancelled error = %v, want %v", err, context.Canceled)
		}
		close(release)
		synctest.Wait() // the shared fetch completes and stores
		if en := e.entry(t, r); !en.Has {
			t.Errorf("Snapshot() entry Has = false, want the fetch the cancelled caller started stored")
		}
		if _, out, err := e.get(t, r); out != creds.Hit || err != nil {
			t.Errorf("Get() = %v, %v, want Hit, nil", outcomeName(out), err)
		}
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches = %d, want 1", n)
		}
	})
}

func TestRunPrefetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		e.run(t)
		r := request("web", "reader")
		e.cache.Retain([]creds.Request{r})
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 1 {
			t.Fatalf("fetches after Retain = %d, want 1", n)
		}
		if got, want := e.obs.Events(), []string{"stored:prefetch:web"}; !slices.Equal(got, want) {
			t.Errorf("events = %q, want %q", got, want)
		}
		if _, out, err := e.get(t, r); out != creds.Hit || err != nil {
			t.Errorf("Get() = %v, %v, want Hit, nil", outcomeName(out), err)
		}
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches after Get = %d, want 1", n)
		}
	})
}

func TestRunRefreshesBeforeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{RefreshBurst: 100})
		e.run(t)
		want := requests("pod-", 50)
		e.cache.Retain(want)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != len(want) {
			t.Fatalf("prefetches = %d, want %d", n, len(want))
		}
		// Rotation with 30 min left, up to 6 min earlier for jitter: 24..30 min after issue.
		refreshAt := map[time.Time]bool{}
		var first time.Time
		for _, en := range e.cache.Snapshot() {
			if en.RefreshAt.Before(t0.Add(24*time.Minute)) || en.RefreshAt.After(t0.Add(30*time.Minute)) {
				t.Errorf("RefreshAt = issue+%v, want issue+24m..30m", en.RefreshAt.Sub(t0))
			}
			refreshAt[en.RefreshAt] = true
			if first.IsZero() || en.RefreshAt.Before(first) {
				first = en.RefreshAt
			}
		}
		if len(refreshAt) < 2 {
			t.Errorf("50 entries share %d refresh times, want jitter to spread them", len(refreshAt))
		}

		e.clock.SetTime(first.Add(-time.Second))
		synctest.Wait()
		if n := e.fetcher.Calls(); n != len(want) {
			t.Errorf("fetches just before the first rotation = %d, want %d", n, len(want))
		}
		e.clock.SetTime(t0.Add(30 * time.Minute))
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 2*len(want) {
			t.Errorf("fetches at issue+30m = %d, want %d", n, 2*len(want))
		}
		if n := e.obs.Count("stored:refresh:"); n != len(want) {
			t.Errorf("refreshes stored = %d, want %d", n, len(want))
		}
		c, out, err := e.get(t, want[0])
		if out != creds.Hit || err != nil || !c.Expiration.After(t0.Add(time.Hour)) {
			t.Errorf("Get() = %v, %v, %v, want Hit of the rotated credentials", c.Expiration, outcomeName(out), err)
		}
	})
}

func TestRunRetriesFailedRefreshAfterBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		e.fetcher.fn = func(_ context.Context, _ creds.Request, n int) (creds.Credentials, error) {
			if n == 1 {
				return creds.Credentials{}, retryableErr{}
			}
			return e.fetcher.issue(n), nil
		}
		e.run(t)
		r := request("web", "reader")
		e.cache.Retain([]creds.Request{r})
		synctest.Wait()
		e.clock.Step(500*time.Millisecond - time.Millisecond)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches before the first backoff ends = %d, want 1", n)
		}
		e.clock.Step(500 * time.Millisecond)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 2 {
			t.Errorf("fetches after the first backoff = %d, want 2", n)
		}
		if got, want := e.obs.Events(), []string{"failed:prefetch:web", "stored:prefetch:web"}; !slices.Equal(got, want) {
			t.Errorf("events = %q, want %q", got, want)
		}
	})
}

// TestRunRateLimitsBackgroundFetches: new entries are fetched under the prefetch limiter, rotations under the
// refresh limiter, each at its own rate after its own burst.
func TestRunRateLimitsBackgroundFetches(t *testing.T) {
	tests := []struct {
		class string
		qps   float64
		burst int
		n     int
	}{
		{class: "prefetch", qps: 1, burst: 1, n: 5},
		{class: "prefetch", qps: 2, burst: 3, n: 9},
		{class: "refresh", qps: 1, burst: 1, n: 5},
		{class: "refresh", qps: 2, burst: 3, n: 9},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s,qps=%v,burst=%d", tt.class, tt.qps, tt.burst), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := creds.Config{PrefetchQPS: tt.qps, PrefetchBurst: tt.burst}
				if tt.class == "refresh" {
					cfg = creds.Config{RefreshQPS: tt.qps, RefreshBurst: tt.burst, PrefetchBurst: tt.n}
				}
				e := newEnv(t, time.Hour, cfg)
				e.run(t)
				want := requests("pod-", tt.n)
				e.cache.Retain(want)
				synctest.Wait()
				base := 0
				if tt.class == "refresh" {
					if n := e.fetcher.Calls(); n != tt.n {
						t.Fatalf("prefetches at once = %d, want all %d (prefetch burst)", n, tt.n)
					}
					base = tt.n
					e.clock.SetTime(t0.Add(31 * time.Minute)) // every entry due for rotation
					synctest.Wait()
				}
				if n := e.fetcher.Calls() - base; n != tt.burst {
					t.Fatalf("%s fetches at once = %d, want the burst, %d", tt.class, n, tt.burst)
				}
				every := time.Duration(float64(time.Second) / tt.qps)
				for wantCalls := tt.burst + 1; wantCalls <= tt.n; wantCalls++ {
					e.clock.Step(every - time.Millisecond)
					synctest.Wait()
					if n := e.fetcher.Calls() - base; n != wantCalls-1 {
						t.Fatalf("%s fetches %v later = %d, want %d", tt.class, every-time.Millisecond, n, wantCalls-1)
					}
					e.clock.Step(time.Millisecond)
					synctest.Wait()
					if n := e.fetcher.Calls() - base; n != wantCalls {
						t.Fatalf("%s fetches after %v = %d, want %d", tt.class, every, n, wantCalls)
					}
				}
			})
		})
	}
}

// TestRunBoundsFetchesInFlight: a node filling up at once is fetched at most maxBackgroundFetches at a time, and
// every pod still is, as fetches end; Idle is called once, when the last has ended.
func TestRunBoundsFetchesInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		release := make(chan struct{})
		var inFlight, most atomic.Int32
		e.fetcher.fn = func(ctx context.Context, _ creds.Request, call int) (creds.Credentials, error) {
			n := inFlight.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			defer inFlight.Add(-1)
			select {
			case <-release:
			case <-ctx.Done():
				return creds.Credentials{}, ctx.Err()
			}
			return e.fetcher.issue(call), nil
		}
		idle := 0
		e.cache = creds.New(e.fetcher, creds.Config{Clock: e.clock, Observer: e.obs, Idle: func() { idle++ }})
		e.run(t)
		want := requests("pod-", 110)
		e.cache.Retain(want)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != creds.MaxBackgroundFetches {
			t.Fatalf("fetches started with none ended = %d, want %d", n, creds.MaxBackgroundFetches)
		}
		if idle != 0 {
			t.Errorf("Idle called %d times with fetches in flight, want none", idle)
		}
		close(release)
		synctest.Wait()
		if idle != 1 {
			t.Errorf("Idle called %d times once the run of fetches ended, want once", idle)
		}
		if n := e.fetcher.Calls(); n != 110 {
			t.Errorf("fetches once they end = %d, want every pod's, 110", n)
		}
		if m := most.Load(); m != creds.MaxBackgroundFetches {
			t.Errorf("most fetches in flight = %d, want %d", m, creds.MaxBackgroundFetches)
		}
		for _, r := range want {
			if _, out, err := e.get(t, r); out != creds.Hit || err != nil {
				t.Fatalf("Get(%s) = %v, %v, want Hit, nil", r.Pod, outcomeName(out), err)
			}
		}
	})
}

// TestRunPrefetchesNewPodsWhileRefreshesQueue: a node filling up (110 pods at once, then more at 50 a second) while
// every held entry is due for rotation and the refresh limiter admits one a second: every new pod is fetched at once,
// without the clock moving for the rotations, once each.
func TestRunPrefetchesNewPodsWhileRefreshesQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{RefreshQPS: 1, RefreshBurst: 1})
		e.run(t)
		want := requests("old-", 110)
		e.cache.Retain(want)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != len(want) {
			t.Fatalf("a burst of %d new pods: %d fetched at once, want all", len(want), n)
		}
		e.clock.SetTime(t0.Add(31 * time.Minute)) // all 110 due for rotation, one a second admitted
		synctest.Wait()
		refreshes := e.fetcher.Calls() - len(want)
		// 50 new pods a second for two seconds: each appears 20 ms after the last.
		for i := range 100 {
			want = append(want, request(fmt.Sprint("new-", i), "reader"))
			e.cache.Retain(want)
			synctest.Wait()
			if en := e.entry(t, want[len(want)-1]); !en.Has {
				t.Fatalf("new pod %d not fetched on arrival, with %d rotations queued", i, 110-refreshes)
			}
			e.clock.Step(20 * time.Millisecond)
		}
		e.fetcher.mu.Lock()
		defer e.fetcher.mu.Unlock()
		fetched := map[string]int{}
		for _, r := range e.fetcher.reqs {
			fetched[r.Pod]++
		}
		for i := range 100 {
			if n := fetched[fmt.Sprint("new-", i)]; n != 1 {
				t.Errorf("new-%d fetched %d times, want once", i, n)
			}
		}
		if rot := len(e.fetcher.reqs) - 210; rot > 3 {
			t.Errorf("%d rotations in two seconds at RefreshQPS 1 (burst 1), want at most 3", rot)
		}
	})
}

func TestRetainEvicts(t *testing.T) {
	web, reader, writer := request("web", "reader"), request("web", "reader"), request("web", "writer")
	shorter, otherAudience, regional := reader, reader, reader
	shorter.Duration = reader.Duration / 4
	otherAudience.Audience = "sts.example"
	regional.Regional = !reader.Regional
	tests := []struct {
		name       string
		retain     [][]creds.Request // successive Retain calls, each after the prefetches settle
		wantKeys   []creds.Key
		wantForgot []string
	}{
		{"pod deleted", [][]creds.Request{{web}, {}}, nil, []string{"forgot:web"}},
		{"role changed", [][]creds.Request{{reader}, {writer}}, []creds.Key{writer.Key()}, []string{"forgot:web"}},
		{"unchanged", [][]creds.Request{{reader}, {reader}}, []creds.Key{reader.Key()}, nil},
		// A session shaped otherwise is a new session at once, not at the next rotation.
		{"duration lowered", [][]creds.Request{{reader}, {shorter}}, []creds.Key{shorter.Key()}, []string{"forgot:web"}},
		{"audience changed", [][]creds.Request{{reader}, {otherAudience}}, []creds.Key{otherAudience.Key()}, []string{"forgot:web"}},
		{"regional endpoint changed", [][]creds.Request{{reader}, {regional}}, []creds.Key{regional.Key()}, []string{"forgot:web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, time.Hour, creds.Config{})
				e.run(t)
				for _, want := range tt.retain {
					e.cache.Retain(want)
					synctest.Wait()
				}
				var keys []creds.Key
				for _, en := range e.cache.Snapshot() {
					keys = append(keys, en.Request.Key())
					if !en.Has {
						t.Errorf("entry %v not prefetched", en.Request.Key())
					}
				}
				if !slices.Equal(keys, tt.wantKeys) {
					t.Errorf("Snapshot() keys = %v, want %v", keys, tt.wantKeys)
				}
				var forgot []string
				for _, ev := range e.obs.Events() {
					if strings.HasPrefix(ev, "forgot:") {
						forgot = append(forgot, ev)
					}
				}
				if !slices.Equal(forgot, tt.wantForgot) {
					t.Errorf("Forgot events = %q, want %q", forgot, tt.wantForgot)
				}
			})
		})
	}
}

func TestRetainDropsEntryWhoseFetchIsInFlight(t *testing.T) {
	tests := []struct {
		name  string
		start func(e *env, r creds.Request) // starts a fetch of r that blocks
	}{
		{"background", func(e *env, r creds.Request) { e.cache.Retain([]creds.Request{r}) }},
		{"get", func(e *env, r creds.Request) { go func() { _, _, _ = e.cache.Get(context.Background(), r) }() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, time.Hour, creds.Config{})
				release := make(chan struct{})
				e.fetcher.fn = func(_ context.Context, _ creds.Request, n int) (creds.Credentials, error) {
					<-release
					return e.fetcher.issue(n), nil
				}
				e.run(t)
				r := request("web", "reader")
				tt.start(e, r)
				synctest.Wait()
				e.cache.Retain(nil)
				close(release)
				synctest.Wait()
				if got := e.cache.Snapshot(); len(got) != 0 {
					t.Errorf("Snapshot() = %+v, want empty: a fetch finishing after Retain dropped its key re-inserted it", got)
				}
				if n := e.obs.Count("stored:"); n != 0 {
					t.Errorf("Observer.Stored calls = %d, want 0", n)
				}
			})
		})
	}
}

func TestRetainRoleBackWhileOldFetchInFlight(t *testing.T) {
	// Role A -> B -> A while A's first fetch is still running: the new A entry must get a fetch of its
	// own (not join the dropped one's, whose result is discarded) and be refreshed afterwards.
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		release := make(chan struct{})
		e.fetcher.fn = func(_ context.Context, _ creds.Request, n int) (creds.Credentials, error) {
			if n == 1 {
				<-release
			}
			return e.fetcher.issue(n), nil
		}
		e.run(t)
		a, b := request("web", "a"), request("web", "b")
		e.cache.Retain([]creds.Request{a})
		synctest.Wait()
		e.cache.Retain([]creds.Request{b})
		synctest.Wait()
		e.cache.Retain([]creds.Request{a})
		synctest.Wait()
		close(release)
		synctest.Wait()
		en := e.entry(t, a)
		if !en.Has {
			t.Fatalf("entry for role a after A->B->A: Has = false, want its own prefetch stored")
		}
		calls := e.fetcher.Calls()
		e.clock.SetTime(en.RefreshAt)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != calls+1 {
			t.Errorf("fetches at RefreshAt = %d, want %d: the entry is never refreshed", n, calls+1)
		}
	})
}

func TestRunRefreshesOnlyRetainedEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		e.run(t)
		r := request("web", "reader")
		if _, _, err := e.get(t, r); err != nil {
			t.Fatalf("Get() error = %v", err)
		}
		e.clock.Step(31 * time.Minute)
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 1 {
			t.Errorf("fetches of an entry only Get made = %d, want 1: Retain has not asked for it", n)
		}
		e.cache.Retain([]creds.Request{r})
		synctest.Wait()
		if n := e.fetcher.Calls(); n != 2 {
			t.Errorf("fetches once Retain adopts the due entry = %d, want 2", n)
		}
	})
}

func TestClockJumpForward(t *testing.T) {
	t.Run("background", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, time.Hour, creds.Config{})
			e.run(t)
			r := request("web", "reader")
			e.cache.Retain([]creds.Request{r})
			synctest.Wait()
			e.clock.SetTime(t0.Add(time.Hour))
			synctest.Wait()
			if n := e.fetcher.Calls(); n != 2 {
				t.Errorf("fetches after the clock jumped an hour = %d, want 2", n)
			}
			c, out, err := e.get(t, r)
			if out != creds.Hit || err != nil || c.Expiration.Sub(e.clock.Now()) < 15*time.Minute {
				t.Errorf("Get() = %v, %v with %v left, want Hit with >= 15m left", outcomeName(out), err, c.Expiration.Sub(e.clock.Now()))
			}
		})
	})
	for _, jump := range []time.Duration{50 * time.Minute, time.Hour, 3 * time.Hour} {
		t.Run("get/"+jump.String(), func(t *testing.T) {
			e := newEnv(t, time.Hour, creds.Config{})
			r := request("web", "reader")
			if _, _, err := e.get(t, r); err != nil {
				t.Fatalf("Get() error = %v", err)
			}
			e.clock.SetTime(t0.Add(jump))
			c, out, err := e.get(t, r)
			if out != creds.Miss || err != nil || c.Expiration.Sub(e.clock.Now()) < 15*time.Minute {
				t.Errorf("Get() = %v, %v with %v left, want Miss with fresh credentials", outcomeName(out), err, c.Expiration.Sub(e.clock.Now()))
			}
		})
	}
}

func TestRunDoesNotAccumulateTimers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{RefreshQPS: 1000, RefreshBurst: 1000})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.cache.Run(ctx)
		}()
		r := request("web", "reader")
		for i := range 100 {
			if i%2 == 0 {
				e.cache.Retain([]creds.Request{r})
			} else {
				e.cache.Retain(nil)
			}
			synctest.Wait()
			if n := e.clock.Waiters(); n > 1 {
				t.Fatalf("after %d wake-ups Run holds %d timers, want at most 1", i+1, n)
			}
		}
		cancel()
		<-done
		if n := e.clock.Waiters(); n != 0 {
			t.Errorf("after Run returned, %d timers remain, want 0", n)
		}
	})
}

func TestGetFailingAfterRetainDroppedEntryReportsCause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		release := make(chan struct{})
		e.fetcher.fn = func(context.Context, creds.Request, int) (creds.Credentials, error) {
			<-release
			return creds.Credentials{}, terminalErr{}
		}
		r := request("web", "reader")
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _, err = e.cache.Get(context.Background(), r)
		}()
		synctest.Wait()
		e.cache.Retain(nil)
		close(release)
		<-done
		if !errors.Is(err, creds.ErrUnavailable) || !errors.Is(err, terminalErr{}) || strings.Contains(err.Error(), "%!") {
			t.Errorf("Get() error = %v, want one wrapping ErrUnavailable and the fetch error", err)
		}
		if n := e.obs.Count("failed:"); n != 0 {
			t.Errorf("Observer.FetchFailed calls = %d, want 0 for a dropped entry", n)
		}
	})
}

// TestObserverHearsEveryEntry: Added and Forgot bracket every entry, whether a request or Retain made it, so an observer
// can keep per-entry state (the agent's per-pod series) that never outlives the entry.
func TestObserverHearsEveryEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, time.Hour, creds.Config{})
		web, api, batch := request("web", "reader"), request("api", "writer"), request("batch", "reader")
		if _, _, err := e.get(t, web); err != nil { // made by a request
			t.Fatal(err)
		}
		e.cache.Retain([]creds.Request{web, api}) // api made by Retain, web kept
		e.cache.Retain([]creds.Request{api, batch})
		want := map[creds.Key]int{api.Key(): 1, batch.Key(): 1}
		if got := e.obs.Live(); !maps.Equal(got, want) {
			t.Errorf("entries added and not forgotten = %v, want %v", got, want)
		}
	})
}
