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

// TestChunkedBodiesAreRefused: over the wire, a chunked body with data is refused as any body is; only one that ends at
// once counts as none (TestTokenOverTheWire).
func TestChunkedBodiesAreRefused(t *testing.T) {
	e := newTestEnv(t, nil)
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	for _, body := range []string{"1\r\nx\r\n0\r\n\r\n", "400\r\n" + strings.Repeat("x", 1024) + "\r\n0\r\n\r\n"} {
		req := "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 60\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
		if resp, _ := rawRequest(t, srv.Listener.Addr().String(), req); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("token PUT with a chunked body of %d bytes = %d, want 400", len(body), resp.StatusCode)
		}
	}
}
