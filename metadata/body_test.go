package metadata

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRequestsWithABodyAreRefused: no metadata request carries a body; one that does is refused before
// any route is served, so a pod cannot make the agent read large bodies.
func TestRequestsWithABodyAreRefused(t *testing.T) {
	e := newTestEnv(t, nil)
	cases := []struct {
		method, target string
		header         http.Header
	}{
		{http.MethodPut, "/latest/api/token", http.Header{"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {"60"}}},
		{http.MethodGet, "/latest/meta-data/iam/security-credentials/", nil},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.target, strings.NewReader(strings.Repeat("x", 1<<20)))
		r.RemoteAddr = "10.0.0.1:4000"
		for k, v := range c.header {
			r.Header[k] = v
		}
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%s %s with a 1 MiB body = %d, want 400", c.method, c.target, w.Code)
		}
	}
}
