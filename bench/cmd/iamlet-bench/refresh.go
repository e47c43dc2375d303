package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/iamlet/iamlet/agent/creds"
)

// RefreshSim is the steady-state refresh economy measured on the agent's own cache (agent/creds) under
// a fake clock: pods' credentials held for simulated hours, every fetch counted.
type RefreshSim struct {
	Session       float64 `json:"session_seconds"`
	Pods          int     `json:"pods"`
	Hours         float64 `json:"hours"`        // simulated, after the first session (warm-up) is over
	Calls         int     `json:"calls"`        // fetches in those hours
	PerPodHour    float64 `json:"per_pod_hour"` // Calls / Pods / Hours
	MinPeriodSecs float64 `json:"min_period_s"` // shortest time between two fetches of one pod
	MaxPeriodSecs float64 `json:"max_period_s"` // longest
	Lapses        int     `json:"lapses"`       // gaps between a pod's fetches as long as a session: credentials would have expired
}

// simFetcher answers at once with credentials of lifetime life from the fake clock, recording when.
type simFetcher struct {
	clock *clocktesting.FakeClock
	life  time.Duration
	busy  atomic.Int64

	mu    sync.Mutex
	times map[string][]time.Time
}

func (f *simFetcher) Fetch(_ context.Context, r creds.Request) (creds.Credentials, error) {
	f.busy.Add(1)
	defer f.busy.Add(-1)
	now := f.clock.Now()
	f.mu.Lock()
	f.times[r.PodUID] = append(f.times[r.PodUID], now)
	f.mu.Unlock()
	return creds.Credentials{AccessKeyID: "ASIASIM", SecretAccessKey: "sim", SessionToken: "sim", Expiration: now.Add(f.life)}, nil
}

// simulateRefresh runs the cache's background loop for pods with sessions of life, over warm-up plus
// hours of fake time in 20 s steps, and counts the fetches once the first sessions have been replaced.
func simulateRefresh(ctx context.Context, pods int, life time.Duration, hours float64) (RefreshSim, error) {
	start := time.Unix(1_800_000_000, 0)
	fc := clocktesting.NewFakeClock(start)
	f := &simFetcher{clock: fc, life: life, times: map[string][]time.Time{}}
	c := creds.New(f, creds.Config{Clock: fc})
	var want []creds.Request
	for i := range pods {
		want = append(want, creds.Request{PodUID: fmt.Sprintf("uid-%d", i), Namespace: "sim", Pod: fmt.Sprintf("pod-%d", i),
			ServiceAccount: "sa", RoleARN: "arn:aws:iam::123456789012:role/sim", Audience: "sts.amazonaws.com", Duration: life})
	}
	rest := runtime.NumGoroutine() + 1 // and the loop's
	c.Retain(want)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(runCtx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	// idle waits until the loop is parked on a timer with no fetch running or about to run, so each step of
	// the clock is seen by a loop at rest: a fetch's goroutines show in the goroutine count before it
	// reaches the fetcher. Bounded: a loop that never parks fails the simulation.
	idle := func() error {
		deadline := time.Now().Add(5 * time.Second)
		weak := time.Now().Add(200 * time.Millisecond) // then accept a count above rest (another goroutine of this process)
		for stable := 0; stable < 5; {
			if fc.HasWaiters() && f.busy.Load() == 0 && (runtime.NumGoroutine() <= rest || time.Now().After(weak)) {
				stable++
			} else {
				stable = 0
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the cache's loop did not settle at %s", fc.Now().Sub(start))
			}
			time.Sleep(20 * time.Microsecond)
		}
		return nil
	}
	step := 20 * time.Second
	warm := life // by then every first session has been rotated at least once
	total := warm + time.Duration(hours*float64(time.Hour))
	res := RefreshSim{Session: life.Seconds(), Pods: pods, Hours: hours}
	for el := time.Duration(0); el < total; el += step {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if err := idle(); err != nil {
			return res, err
		}
		fc.Step(step)
	}
	if err := idle(); err != nil {
		return res, err
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	from := start.Add(warm)
	res.MinPeriodSecs = life.Seconds()
	for i := range pods {
		ts := f.times[fmt.Sprintf("uid-%d", i)]
		for j, t := range ts {
			if !t.Before(from) {
				res.Calls++
			}
			if j > 0 {
				d := t.Sub(ts[j-1]).Seconds()
				res.MinPeriodSecs = min(res.MinPeriodSecs, d)
				res.MaxPeriodSecs = max(res.MaxPeriodSecs, d)
			}
		}
		// Held credentials must never lapse: the gap between fetches stays under the session's life.
		for j := 1; j < len(ts); j++ {
			if ts[j].Sub(ts[j-1]) >= life {
				res.Lapses++
			}
		}
	}
	res.PerPodHour = float64(res.Calls) / float64(pods) / hours
	return res, nil
}

// refresh is the steady-state part of workload 5, on the agent's cache under a fake clock: 110 pods with
// the default 1 h sessions over 8 simulated hours, and with the shortest allowed sessions (15 min) over 3.
func (b *bench) refresh(ctx context.Context) error {
	for _, cfg := range []struct {
		life  time.Duration
		hours float64
	}{{time.Hour, 8}, {15 * time.Minute, 3}} {
		t0 := time.Now()
		sim, err := simulateRefresh(ctx, 110, cfg.life, cfg.hours)
		if err != nil {
			return err
		}
		logf("refresh: %s sessions, %d pods, %.0f h simulated in %s: %.2f fetches per pod per hour, periods %.0f–%.0f s, %d lapses",
			cfg.life, sim.Pods, sim.Hours, time.Since(t0).Round(time.Millisecond), sim.PerPodHour, sim.MinPeriodSecs, sim.MaxPeriodSecs, sim.Lapses)
		b.res.Refresh = append(b.res.Refresh, sim)
	}
	return nil
}
