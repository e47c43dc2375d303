package metadata

import (
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	e := newTestEnv(t, nil)
	requests := []struct {
		method, target, caller string
	}{
		{http.MethodGet, "/latest/meta-data/iam/security-credentials/", podAddr},
		{http.MethodGet, "/latest/meta-data/iam/security-credentials/" + podRole, podAddr},
		{http.MethodGet, "/latest/meta-data/iam/security-credentials-extended/" + podRole, podAddr},
		{http.MethodGet, "/latest/meta-data/iam/security-credentials/", strangerAddr},
		{http.MethodGet, "/latest/user-data", podAddr},
		{http.MethodGet, "/latest/%2575ser-data", podAddr},
		{http.MethodPost, "/latest/meta-data/instance-id", podAddr},
		{http.MethodGet, "/latest/meta-data/instance-id", podAddr},
		{http.MethodPut, pathToken, podAddr}, // no TTL
	}
	for _, r := range requests {
		e.do(t, r.method, r.target, r.caller, nil)
	}
	want := map[[2]string]float64{
		{"credentials", "served"}:           2,
		{"credentials_extended", "served"}:  1,
		{"credentials", "unknown_pod"}:      1,
		{"other", "node_path"}:              1,
		{"other", "bad_request"}:            1,
		{"node_fact", "method_not_allowed"}: 1,
		{"node_fact", "served"}:             1,
		{"token", "bad_request"}:            1,
	}
	got := counters(t, e.reg)
	if len(got) != int(numClasses)*int(numOutcomes) {
		t.Errorf("requests_total has %d series, want all %d pre-created", len(got), int(numClasses)*int(numOutcomes))
	}
	for k, v := range got {
		if v != want[k] {
			t.Errorf("iamlet_metadata_requests_total{class=%q,outcome=%q} = %v, want %v", k[0], k[1], v, want[k])
		}
	}
	if n := testutil.CollectAndCount(e.reg, "iamlet_metadata_request_duration_seconds"); n != int(numClasses) {
		t.Errorf("request_duration_seconds series = %d, want %d", n, numClasses)
	}
	problems, err := testutil.GatherAndLint(e.reg)
	if err != nil || len(problems) != 0 {
		t.Errorf("GatherAndLint = %v, %v; want no problems", problems, err)
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for i := 0; i < 2; i++ {
		if _, err := NewHandler(Config{TokenKey: testKey}, newFakeProvider(), reg); err != nil {
			t.Fatalf("NewHandler #%d on a shared registry: %v", i+1, err)
		}
		if _, err := NewContainerHandler(ContainerConfig{}, newFakeProvider(), reg); err != nil {
			t.Fatalf("NewContainerHandler #%d on a shared registry: %v", i+1, err)
		}
	}
}

func counters(t *testing.T, reg *prometheus.Registry) map[[2]string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[[2]string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "iamlet_metadata_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var key [2]string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "class":
					key[0] = l.GetValue()
				case "outcome":
					key[1] = l.GetValue()
				}
			}
			out[key] = m.GetCounter().GetValue()
		}
	}
	return out
}
