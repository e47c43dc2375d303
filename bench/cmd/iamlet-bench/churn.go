package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

// churnLoads are workload 3's loads: pods arriving at 50 a second, and a node's scale-up, 110 pods (a
// node's maximum) landing within 2 s. Both fit the agent's default new-pod limiter (--prefetch-qps 50
// after --prefetch-burst 110), so every first request should be a hit.
var churnLoads = []churnLoad{
	{label: "50 pods/s", rate: 50, pods: 100},
	{label: "burst: 110 pods in 2 s", rate: 55, pods: 110},
}

type churnLoad struct {
	label      string
	rate, pods int
}

// firstRequestPods of each churn run get a network namespace and make their first request 1 s after
// their address reached the API.
const firstRequestPods = 20

// churnRuns is how many runs each load gets.
const churnRuns = 3

// churn is workload 3: pods appear on the node at a fixed rate; for each, the time from its address
// reaching the API to its credentials being cached, and for some, whether their first request, made a
// second later from the pod's own network namespace, was a cache hit. The agent runs with its
// production defaults.
func (b *bench) churn(ctx context.Context) error {
	return phase(func(t *tb) error {
		ag, err := b.startAgent("iamlet-churn")
		if err != nil {
			return err
		}
		t.Cleanup(ag.stop)
		pool := make([]*netPod, 0, firstRequestPods)
		for i := range firstRequestPods {
			p, err := newNetPod(b.s.Run, i+2)
			if err != nil {
				return err
			}
			t.Cleanup(p.remove)
			pool = append(pool, p)
		}
		for _, cr := range churnLoads {
			for r := range churnRuns {
				res, err := b.churnRun(ctx, cr, r, pool)
				if err != nil {
					return err
				}
				logf("churn %s run %d: %d pods in %.1fs; to cached p50 %.0fms p99 %.0fms max %.0fms, %d not cached; first requests %d hit %d miss %d failed of %d (sent up to %.0fms late); %v STS calls",
					cr.label, r+1, res.Pods, res.CreateSecs, percentile(res.ToCachedMS, .5), percentile(res.ToCachedMS, .99),
					percentile(res.ToCachedMS, 1), res.NotCached, res.Hits, res.Misses, res.Failed, res.Checked, res.LateMS, res.STSCalls)
				b.res.Churn = append(b.res.Churn, res)
				b.res.Economy.ChurnPods += res.Pods
				b.res.Economy.ChurnSTSCalls += res.STSCalls
			}
		}
		return nil
	})
}

func (b *bench) churnRun(ctx context.Context, load churnLoad, run int, pool []*netPod) (ChurnRun, error) {
	rate, count := load.rate, load.pods
	res := ChurnRun{Label: load.label, Rate: rate, Pods: count}
	names := make([]string, count)
	ipAt := make([]statusUpdate, count)
	netOf := make([]*netPod, count)
	every := max(1, count/len(pool))
	for i := range count {
		names[i] = fmt.Sprintf("churn-%d-%d-%03d", rate, run, i)
		if i%every == 0 && i/every < len(pool) {
			netOf[i] = pool[i/every]
		}
	}
	m0, err := scrape()
	if err != nil {
		return res, err
	}

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		firstOK  = make([]bool, count)
		interval = time.Second / time.Duration(rate)
		start    = time.Now()
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for i := range count {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(d):
			}
		}
		wg.Go(func() {
			ip := b.ips.get()
			if netOf[i] != nil {
				ip = netOf[i].IP
			}
			_, su, err := b.createPod(ctx, "default", names[i], stack.NodeName, stack.SAA, ip)
			if err != nil {
				fail(err)
				return
			}
			ipAt[i] = su
			if netOf[i] == nil {
				return
			}
			// Running for at least 1 s: counted from the status update's answer.
			time.Sleep(time.Until(su.Answered.Add(time.Second)))
			late := time.Since(su.Answered.Add(time.Second))
			mu.Lock()
			res.LateMS = max(res.LateMS, float64(late.Microseconds())/1000)
			mu.Unlock()
			l, err := b.loadgen(ctx, netOf[i].NetNS, "-url", "http://"+stack.IMDSv4+credsPath(), "-c", "1", "-n", "1", "-warmup", "0", "-token", "-expect", credsExpect)
			firstOK[i] = err == nil && l.Requests == 1
		})
	}

	// Credentials are cached when /status first shows them valid; the cache's own store time says when.
	cachedAt := make(map[string]time.Time, count)
	deadline := time.Now().Add(45 * time.Second)
	for len(cachedAt) < count && time.Now().Before(deadline) {
		if st, err := status(); err == nil {
			states := podStates(st)
			for _, n := range names {
				if p, ok := states["default/"+n]; ok && p.State == "valid" && p.LastRefresh != nil {
					if _, seen := cachedAt[n]; !seen {
						cachedAt[n] = *p.LastRefresh
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	if len(errs) > 0 {
		return res, errors.Join(errs...)
	}
	// From the moment the status update was sent: the address is stored at some point before its answer,
	// so this never understates the agent's delay (by at most StatusMS).
	last := start
	for i, su := range ipAt {
		last = maxTime(last, su.Answered)
		res.StatusMS = append(res.StatusMS, ms(su.Answered.Sub(su.Sent)))
		if c, ok := cachedAt[names[i]]; ok {
			res.ToCachedMS = append(res.ToCachedMS, ms(c.Sub(su.Sent)))
		} else {
			res.NotCached++
		}
	}
	res.CreateSecs = last.Sub(start).Seconds()

	m1, err := scrape()
	if err != nil {
		return res, err
	}
	res.STSCalls = stsCalls(m1) - stsCalls(m0)
	res.AgentCPUSecs = m1.Sum("process_cpu_seconds_total", nil) - m0.Sum("process_cpu_seconds_total", nil)
	res.GCCycles = gcCycles(m1) - gcCycles(m0)
	for i, np := range netOf {
		if np == nil {
			continue
		}
		res.Checked++
		l := map[string]string{"namespace": "default", "pod": names[i]}
		l["outcome"] = "hit"
		hits, _ := m1.Value("iamlet_pod_credential_requests_total", l)
		l["outcome"] = "miss"
		misses, _ := m1.Value("iamlet_pod_credential_requests_total", l)
		switch {
		case !firstOK[i]:
			res.Failed++
		case hits >= 1 && misses == 0:
			res.Hits++
		default:
			res.Misses++
		}
	}

	// Gone from the agent before the next run reuses the namespaces' addresses.
	if err := b.deletePods(ctx, "default", names); err != nil {
		return res, err
	}
	err = waitStatus(ctx, "the churn pods to leave the agent", 30*time.Second, func(st agentStatus) bool {
		states := podStates(st)
		for _, n := range names {
			if _, ok := states["default/"+n]; ok {
				return false
			}
		}
		return true
	})
	return res, err
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
