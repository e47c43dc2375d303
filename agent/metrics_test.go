package agent

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/iamlet/iamlet/agent/creds"
)

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, true)
	// Touch every vector so the linter sees each family.
	r := creds.Request{PodUID: "u1", Namespace: "ns", Pod: "p", ServiceAccount: "sa", RoleARN: "arn:aws:iam::123456789012:role/r"}
	m.stored(r, creds.Credentials{Expiration: time.Unix(2000, 0), Issued: time.Unix(1000, 0)})
	m.request(r, "hit")
	m.fetches.WithLabelValues("prefetch", "success").Inc()
	m.sts.WithLabelValues("success", "").Inc()
	m.tokens.WithLabelValues("success").Inc()
	m.rules.WithLabelValues("ipv4").Set(1)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

// TestPerPodSeriesFollowThePod: a pod's expiry, last-refresh and request series exist while its entry
// does and are deleted with it, so the node's pods bound the cardinality.
func TestPerPodSeriesFollowThePod(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, true)
	a, b := twoPods(m)
	m.request(a, "hit")
	m.request(a, "hit")
	m.request(b, "miss")

	const names = "iamlet_credentials_expiry_timestamp_seconds iamlet_pod_credential_requests_total"
	want := `
# HELP iamlet_credentials_expiry_timestamp_seconds When the credentials held for a pod's role expire, as a Unix time.
# TYPE iamlet_credentials_expiry_timestamp_seconds gauge
iamlet_credentials_expiry_timestamp_seconds{namespace="team",pod="a",role_arn="arn:aws:iam::123456789012:role/a",service_account="sa-a"} 7200
iamlet_credentials_expiry_timestamp_seconds{namespace="team",pod="b",role_arn="arn:aws:iam::123456789012:role/b",service_account="sa-b"} 9000
# HELP iamlet_pod_credential_requests_total Credential requests from identified pods, by outcome (hit, miss, stale, error).
# TYPE iamlet_pod_credential_requests_total counter
iamlet_pod_credential_requests_total{namespace="team",outcome="hit",pod="a",role_arn="arn:aws:iam::123456789012:role/a",service_account="sa-a"} 2
iamlet_pod_credential_requests_total{namespace="team",outcome="miss",pod="b",role_arn="arn:aws:iam::123456789012:role/b",service_account="sa-b"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), strings.Fields(names)...); err != nil {
		t.Fatalf("before deletion: %v", err)
	}

	m.forget(a)
	want = `
# HELP iamlet_credentials_expiry_timestamp_seconds When the credentials held for a pod's role expire, as a Unix time.
# TYPE iamlet_credentials_expiry_timestamp_seconds gauge
iamlet_credentials_expiry_timestamp_seconds{namespace="team",pod="b",role_arn="arn:aws:iam::123456789012:role/b",service_account="sa-b"} 9000
# HELP iamlet_pod_credential_requests_total Credential requests from identified pods, by outcome (hit, miss, stale, error).
# TYPE iamlet_pod_credential_requests_total counter
iamlet_pod_credential_requests_total{namespace="team",outcome="miss",pod="b",role_arn="arn:aws:iam::123456789012:role/b",service_account="sa-b"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), strings.Fields(names)...); err != nil {
		t.Fatalf("after pod a was forgotten: %v", err)
	}
	if n := testutil.CollectAndCount(m.lastRefresh); n != 1 {
		t.Errorf("last refresh series after deletion = %d, want 1", n)
	}

	// Asked again (a pod's entry comes back), it counts from zero on an exported series, not on the forgotten one.
	m.added(a)
	m.request(a, "hit")
	if got := testutil.ToFloat64(m.podRequests.WithLabelValues(append(labelsOf(a), "hit")...)); got != 1 {
		t.Errorf("pod a's hits after it came back = %v, want 1", got)
	}

	// A session policy changed: the pod's new entry shares the old one's series, and forgetting the old entry must
	// not leave the new one counting where no scrape sees it.
	narrowed := a
	narrowed.Narrowing = "policy-2"
	m.added(narrowed)
	m.request(narrowed, "hit")
	m.forget(a)
	m.request(narrowed, "hit")
	if n := testutil.CollectAndCount(m.podRequests); n != 2 { // b's miss, and the narrowed entry's hits
		t.Errorf("per-pod request series after the old entry was forgotten = %d, want 2", n)
	}
}

// TestPerPodSeriesSurviveARekey: a session policy changed, so the cache stores the pod's new entry, then forgets the
// old one; the pod's series (same labels) stay, with the new entry's values.
func TestPerPodSeriesSurviveARekey(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, true)
	a, _ := twoPods(m)
	m.request(a, "hit")
	narrowed := a
	narrowed.Narrowing = "policy-2"
	m.stored(narrowed, creds.Credentials{Expiration: time.Unix(8000, 0), Issued: time.Unix(4000, 0)})
	m.forget(a)
	m.request(narrowed, "hit")
	if got := testutil.ToFloat64(m.expiry.WithLabelValues(labelsOf(a)...)); got != 8000 {
		t.Errorf("pod a's expiry after the re-key = %v, want the new entry's 8000", got)
	}
	if got := testutil.ToFloat64(m.podRequests.WithLabelValues(append(labelsOf(a), "hit")...)); got != 2 {
		t.Errorf("pod a's hits across the re-key = %v, want 2", got)
	}
	m.forget(narrowed)
	if n := testutil.CollectAndCount(m.expiry); n != 1 { // b's
		t.Errorf("expiry series once both entries are forgotten = %d, want 1", n)
	}
}

// TestPerPodSeriesOff: with per-pod series off the agent exports none, however many pods it serves, and the node's
// aggregates (earliest expiry, requests by outcome) say what the alerts and the node view need.
func TestPerPodSeriesOff(t *testing.T) {
	for _, perPod := range []bool{false, true} {
		reg := prometheus.NewRegistry()
		m := newMetrics(reg, perPod)
		a, b := twoPods(m)
		m.request(a, "hit")
		m.request(b, "hit")
		m.request(b, "miss")
		want := `
# HELP iamlet_credential_requests_total Credential requests from identified pods, by outcome (hit, miss, stale, error): the node's sum of iamlet_pod_credential_requests_total.
# TYPE iamlet_credential_requests_total counter
iamlet_credential_requests_total{outcome="hit"} 2
iamlet_credential_requests_total{outcome="miss"} 1
# HELP iamlet_credentials_earliest_expiry_timestamp_seconds When the first of the credentials held for the node's pods expires, as a Unix time (0 when none are held).
# TYPE iamlet_credentials_earliest_expiry_timestamp_seconds gauge
iamlet_credentials_earliest_expiry_timestamp_seconds 7200
`
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "iamlet_credential_requests_total", "iamlet_credentials_earliest_expiry_timestamp_seconds"); err != nil {
			t.Errorf("perPod=%v: %v", perPod, err)
		}
		perPodSeries, err := testutil.GatherAndCount(reg, "iamlet_credentials_expiry_timestamp_seconds", "iamlet_credentials_last_refresh_timestamp_seconds", "iamlet_pod_credential_requests_total")
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{false: 0, true: 7}[perPod]; perPodSeries != want {
			t.Errorf("perPod=%v: %d per-pod series, want %d", perPod, perPodSeries, want)
		}
		m.forget(a)
		if got := testutil.ToFloat64(prometheus.Collector(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x", Help: "x"}, m.earliestExpiry))); got != 9000 {
			t.Errorf("perPod=%v: earliest expiry after the first pod left = %v, want 9000", perPod, got)
		}
	}
}

// twoPods stores credentials for two pods: a's expire at 7200, b's at 9000.
func twoPods(m *metrics) (a, b creds.Request) {
	a = creds.Request{PodUID: "ua", Namespace: "team", Pod: "a", ServiceAccount: "sa-a", RoleARN: "arn:aws:iam::123456789012:role/a"}
	b = creds.Request{PodUID: "ub", Namespace: "team", Pod: "b", ServiceAccount: "sa-b", RoleARN: "arn:aws:iam::123456789012:role/b"}
	m.stored(a, creds.Credentials{Expiration: time.Unix(7200, 0), Issued: time.Unix(3600, 0)})
	m.stored(b, creds.Credentials{Expiration: time.Unix(9000, 0), Issued: time.Unix(5400, 0)})
	return a, b
}

// BenchmarkRequestMetrics is what each answered request costs in metrics: the node's count and the pod's.
func BenchmarkRequestMetrics(b *testing.B) {
	m := newMetrics(prometheus.NewRegistry(), true)
	a, _ := twoPods(m)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.request(a, "hit")
		}
	})
}

// TestScrapeWhilePodsComeAndGo: a scrape runs while pods' series are made and deleted. A collector blocks on a full
// scrape buffer holding its vector's lock, so series must never be changed while holding a lock a scrape waits on
// (earliestExpiry's): that froze the credential cache, every request and /metrics at a few hundred pods.
func TestScrapeWhilePodsComeAndGo(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, true)
	reqs := manyPods(m, 400) // hit and miss series each: more than a scrape's buffer of metrics
	done := make(chan struct{})
	go func() {
		defer close(done)
		for round := range 20 {
			for _, r := range reqs {
				if round%2 == 0 {
					m.forget(r)
				} else {
					m.stored(r, creds.Credentials{Expiration: time.Unix(7200, 0), Issued: time.Unix(3600, 0)})
					m.request(r, "hit")
				}
			}
		}
	}()
	scrapeUntil(t, reg, done)
}

// TestScrapeWhileTheCacheForgets: the same through the credential cache, which tells the metrics an entry is gone
// while holding its lock; the scrape must not wait on that lock (the cache-entries gauge).
func TestScrapeWhileTheCacheForgets(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, true)
	cache := creds.New(nil, creds.Config{Observer: observer{metrics: m, log: slog.New(slog.DiscardHandler)}})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_credentials_cache_entries", Help: "Entries."},
		func() float64 { return float64(cache.Len()) }))
	reqs := manyPods(m, 400)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			manyPods(m, len(reqs))
			cache.Retain(reqs)
			cache.Retain(nil) // forgets each entry with the cache's lock held
		}
	}()
	scrapeUntil(t, reg, done)
	if n := cache.Len(); n != 0 {
		t.Errorf("cache.Len() = %d after Retain(nil), want 0", n)
	}
}

// manyPods makes n pods' per-pod series: expiry, last refresh, hits and misses.
func manyPods(m *metrics, n int) []creds.Request {
	reqs := make([]creds.Request, n)
	for i := range reqs {
		reqs[i] = creds.Request{PodUID: fmt.Sprint("uid-", i), Namespace: "team", Pod: fmt.Sprint("pod-", i), ServiceAccount: "sa",
			RoleARN: "arn:aws:iam::123456789012:role/r"}
		m.stored(reqs[i], creds.Credentials{Expiration: time.Unix(7200, 0), Issued: time.Unix(3600, 0)})
		m.request(reqs[i], "hit")
		m.request(reqs[i], "miss")
	}
	return reqs
}

// scrapeUntil scrapes reg until done is closed, and fails the test if the two deadlock.
func scrapeUntil(t *testing.T, reg *prometheus.Registry, done <-chan struct{}) {
	t.Helper()
	scraped := make(chan error, 1)
	go func() {
		for {
			if _, err := reg.Gather(); err != nil {
				scraped <- err
				return
			}
			select {
			case <-done:
				scraped <- nil
				return
			default:
			}
		}
	}()
	select {
	case err := <-scraped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute): // where both loops take well under a second: only a deadlock
		t.Fatal("series changes and scrapes deadlocked")
	}
}

// TestRequestRacingForgetMakesNoSeries: a request that took its entry's series just before the entry was forgotten
// (the pod left) counts nothing once it is: a series made again then would stay, for a pod gone, until a restart.
func TestRequestRacingForgetMakesNoSeries(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry(), true)
	a, b := twoPods(m)
	m.request(b, "hit")
	m.mu.Lock()
	s := m.podKeys[a.Key()] // the request has its entry's series ...
	m.mu.Unlock()
	m.forget(a) // ... when the pod leaves
	m.countPod(s, "hit")
	if n := testutil.CollectAndCount(m.podRequests); n != 1 {
		t.Errorf("per-pod request series after a request raced with its pod's forgetting = %d, want 1 (pod b's)", n)
	}
}

// TestRequestAfterForgetMakesNoSeries: the cache answered, then forgot the entry (the pod left) before the request was
// counted: the node counts it, and no per-pod series is made for the pod gone.
func TestRequestAfterForgetMakesNoSeries(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry(), true)
	a, _ := twoPods(m)
	m.forget(a)
	m.request(a, "hit")
	if n := testutil.CollectAndCount(m.podRequests); n != 0 {
		t.Errorf("per-pod request series after a request counted once its entry was forgotten = %d, want 0", n)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("hit")); got != 1 {
		t.Errorf("node's hits = %v, want 1", got)
	}
}

// TestCountingAfterAnotherEntrysDeletion: a deletion can take away series another entry with the same labels already
// resolved (an entry made while its predecessor was being forgotten); that entry's requests must land on an exported
// series.
func TestCountingAfterAnotherEntrysDeletion(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry(), true)
	a, _ := twoPods(m)
	narrowed := a
	narrowed.Narrowing = "policy-2"
	m.added(narrowed)
	m.request(narrowed, "hit")
	m.deleteSeries(labelsOf(a)) // a's forgetting, which found no other entry with its labels yet
	m.request(narrowed, "hit")
	if got := testutil.ToFloat64(m.podRequests.WithLabelValues(append(labelsOf(a), "hit")...)); got != 1 {
		t.Errorf("the narrowed entry's hits after a's series were deleted = %v, want 1 on the exported series", got)
	}
}

// TestStaleSaidOncePerFailure: while fetches fail, an SDK in its refresh window asks on every call and is answered
// from older credentials. Every answer is counted, but the log says so once per entry until it is stored again (or
// forgotten), not once per answer.
func TestStaleSaidOncePerFailure(t *testing.T) {
	log, buf := logBuffer()
	m := newMetrics(prometheus.NewRegistry(), true)
	o := observer{metrics: m, log: log, stale: &staleLines{}}
	web, api := requestFor(testPod, testRole), requestFor(testPod, testRole)
	api.PodUID, api.Pod = "uid-api", "api"
	older := creds.Credentials{Expiration: time.Now().Add(10 * time.Minute)}
	lines := func() int { return strings.Count(buf.String(), "serving older credentials") }

	for range 3 {
		o.Stale(web, older)
	}
	o.Stale(api, older)
	if n := lines(); n != 2 {
		t.Errorf("3 stale answers for one pod and 1 for another logged %d lines, want 2 (one each)", n)
	}
	if got := testutil.ToFloat64(m.stale); got != 4 {
		t.Errorf("iamlet_credentials_stale_serves_total = %v, want 4 (every answer)", got)
	}

	o.Stored(web, creds.Credentials{Expiration: time.Now().Add(time.Hour)}, "refresh")
	o.Stale(web, older) // failing again after a success: said again
	o.Forgot(api)
	o.Stale(api, older) // a new entry for the same pod: said again
	if n := lines(); n != 4 {
		t.Errorf("after a store and a forget, %d lines, want 4", n)
	}
}
