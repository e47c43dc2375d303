package agent

import (
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iamlet/iamlet/agent/creds"
)

// metrics are the agent's own series. Per-pod series carry namespace, pod, service_account and role_arn
// and are deleted when the pod or its role leaves the node, so cardinality follows the node's pods; with perPod off
// (--per-pod-metrics=false) there are none, and the per-node aggregates (earliest expiry, requests by outcome), which
// are always there, keep the alerts and the dashboard's node view working.
type metrics struct {
	perPod      bool
	expiry      *prometheus.GaugeVec
	lastRefresh *prometheus.GaugeVec
	podRequests *prometheus.CounterVec
	requests    *prometheus.CounterVec // by outcome only
	fetches     *prometheus.CounterVec
	stale       prometheus.Counter
	unrecorded  prometheus.Counter // issuance records the file did not take
	sts         *prometheus.CounterVec
	stsLatency  prometheus.Histogram
	tokens      *prometheus.CounterVec
	tokenLat    prometheus.Histogram
	rules       *prometheus.GaugeVec
	reconciles  prometheus.Counter
	repairs     prometheus.Counter

	mu       sync.Mutex
	podKeys  map[creds.Key]*podSeries // the cache's entries and their series' labels, for counting and deletion
	expiries map[creds.Key]int64      // each entry's expiry (Unix seconds), for the earliest
}

// podSeries is one cache entry's per-pod label values. Its own lock, not metrics.mu, orders counting against the
// entry's forgetting: counting may make a series, which must never happen under a lock a scrape waits on
// (earliestExpiry takes metrics.mu).
type podSeries struct {
	labels []string

	mu        sync.Mutex
	forgotten bool // the entry was forgotten: a request that raced with it must not make its series again
}

var podLabels = []string{"namespace", "pod", "service_account", "role_arn"}

func newMetrics(reg prometheus.Registerer, perPod bool) *metrics {
	m := &metrics{
		perPod: perPod,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iamlet_credential_requests_total",
			Help: "Credential requests from identified pods, by outcome (hit, miss, stale, error): the node's sum of iamlet_pod_credential_requests_total.",
		}, []string{"outcome"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "iamlet_credentials_expiry_timestamp_seconds",
			Help: "When the credentials held for a pod's role expire, as a Unix time.",
		}, podLabels),
		lastRefresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "iamlet_credentials_last_refresh_timestamp_seconds",
			Help: "When the credentials held for a pod's role were last obtained from STS, as a Unix time.",
		}, podLabels),
		podRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iamlet_pod_credential_requests_total",
			Help: "Credential requests from identified pods, by outcome (hit, miss, stale, error).",
		}, append(podLabels[:4:4], "outcome")),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iamlet_credentials_fetches_total",
			Help: "Credential fetches (token request then STS), by reason (prefetch, miss, refresh) and result.",
		}, []string{"reason", "result"}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_credentials_stale_serves_total",
			Help: "Answers served from older, still valid credentials because a fetch failed.",
		}),
		unrecorded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_issuance_write_errors_total",
			Help: "Credential sets issued whose record the issuance file (--issuance-file) did not take; each is in the agent's log all the same.",
		}),
		sts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iamlet_sts_requests_total",
			Help: "STS AssumeRoleWithWebIdentity calls by result (success, error) and error code.",
		}, []string{"result", "code"}),
		stsLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "iamlet_sts_request_duration_seconds",
			Help:    "Latency of STS AssumeRoleWithWebIdentity calls.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "iamlet_kube_token_requests_total",
			Help: "Kubernetes TokenRequest calls by result.",
		}, []string{"result"}),
		tokenLat: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "iamlet_kube_token_request_duration_seconds",
			Help:    "Latency of Kubernetes TokenRequest calls.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "iamlet_iptables_rules_present",
			Help: "1 when every interception rule of the family is in place after the last reconcile; 0 also when the agent manages none (--iptables=false).",
		}, []string{"family"}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_iptables_reconciles_total",
			Help: "Reconcile passes over the interception rules.",
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_iptables_drift_repairs_total",
			Help: "Interception rules found missing or out of place and restored.",
		}),
		podKeys:  make(map[creds.Key]*podSeries),
		expiries: make(map[creds.Key]int64),
	}
	reg.MustRegister(m.requests, m.fetches, m.stale, m.unrecorded, m.sts, m.stsLatency, m.tokens, m.tokenLat, m.rules, m.reconciles, m.repairs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "iamlet_credentials_earliest_expiry_timestamp_seconds",
			Help: "When the first of the credentials held for the node's pods expires, as a Unix time (0 when none are held).",
		}, m.earliestExpiry))
	if perPod {
		reg.MustRegister(m.expiry, m.lastRefresh, m.podRequests)
	}
	return m
}

func (m *metrics) earliestExpiry() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first int64
	for _, e := range m.expiries {
		if first == 0 || e < first {
			first = e
		}
	}
	return float64(first)
}

func labelsOf(r creds.Request) []string {
	return []string{r.Namespace, r.Pod, r.ServiceAccount, r.RoleARN}
}

func (m *metrics) stored(r creds.Request, c creds.Credentials) {
	m.mu.Lock()
	l := m.seriesLocked(r).labels
	m.expiries[r.Key()] = c.Expiration.Unix()
	m.mu.Unlock()
	if !m.perPod {
		return
	}
	m.expiry.WithLabelValues(l...).Set(float64(c.Expiration.Unix()))
	m.lastRefresh.WithLabelValues(l...).Set(float64(c.Issued.Unix()))
}

// request counts an answered request, on the node and on its entry's per-pod series.
func (m *metrics) request(r creds.Request, outcome string) {
	m.requests.WithLabelValues(outcome).Inc()
	m.mu.Lock()
	s := m.podKeys[r.Key()]
	m.mu.Unlock()
	// No entry: the cache forgot it since it answered (the pod left); a series made now would outlive the pod.
	if m.perPod && s != nil {
		m.countPod(s, outcome)
	}
}

// countPod counts a request on s, unless s's entry was forgotten meanwhile: its series are being deleted, and one made
// again now would stay, for a pod that left, until the agent restarts.
func (m *metrics) countPod(s *podSeries, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.forgotten {
		m.podRequests.WithLabelValues(append(s.labels[:len(podLabels):len(podLabels)], outcome)...).Inc()
	}
}

// added makes the podSeries of the cache's new entry for r. The cache's Added and Forgot bracket each entry, so the
// podSeries are exactly the cache's entries: a request never makes one.
func (m *metrics) added(r creds.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seriesLocked(r)
}

func (m *metrics) seriesLocked(r creds.Request) *podSeries {
	k := r.Key()
	s := m.podKeys[k]
	if s == nil {
		s = &podSeries{labels: labelsOf(r)}
		m.podKeys[k] = s
	}
	return s
}

// forget deletes every per-pod series of the entry, unless another entry has the same labels: the same pod and role
// under a new session policy, stored before the old entry is forgotten, whose series these now are.
func (m *metrics) forget(r creds.Request) {
	l := labelsOf(r)
	m.mu.Lock()
	forgotten := m.podKeys[r.Key()]
	delete(m.podKeys, r.Key())
	delete(m.expiries, r.Key())
	shared := false
	for _, other := range m.podKeys {
		if slices.Equal(other.labels, l) {
			shared = true
			break
		}
	}
	m.mu.Unlock()
	// A request still holding the entry's series either counted before this (what it made is deleted below) or sees
	// them forgotten. Not under m.mu: counting can wait on a scrape, and a scrape on m.mu.
	if forgotten != nil {
		forgotten.mu.Lock()
		forgotten.forgotten = true
		forgotten.mu.Unlock()
	}
	if !m.perPod || shared {
		return
	}
	m.deleteSeries(l)
}

// deleteSeries deletes the per-pod series with label values l.
func (m *metrics) deleteSeries(l []string) {
	m.expiry.DeleteLabelValues(l...)
	m.lastRefresh.DeleteLabelValues(l...)
	m.podRequests.DeletePartialMatch(prometheus.Labels{"namespace": l[0], "pod": l[1], "service_account": l[2], "role_arn": l[3]})
}
