package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/iamlet/iamlet/agent/creds"
)

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
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
	m := newMetrics(reg)
	a := creds.Request{PodUID: "ua", Namespace: "team", Pod: "a", ServiceAccount: "sa-a", RoleARN: "arn:aws:iam::123456789012:role/a"}
	b := creds.Request{PodUID: "ub", Namespace: "team", Pod: "b", ServiceAccount: "sa-b", RoleARN: "arn:aws:iam::123456789012:role/b"}
	m.stored(a, creds.Credentials{Expiration: time.Unix(7200, 0), Issued: time.Unix(3600, 0)})
	m.stored(b, creds.Credentials{Expiration: time.Unix(9000, 0), Issued: time.Unix(5400, 0)})
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
}
