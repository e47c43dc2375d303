package metadata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// TestRefusalLogging: a refusal the face decides is logged once, as "refused" with the request's path and status; a
// refusal the CredentialProvider returns is not logged by the face at all (the provider logs it, knowing the pod,
// the role and the reason), so each refused request has one line.
func TestRefusalLogging(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	e := newTestEnv(t, func(c *Config) { c.Logger = log })
	tok := e.token(t, podAddr, 60)
	ch, cprov := newTestContainer(t, nil)
	ch.log = log
	cprov.fail(fmt.Errorf("%w: default/sa has no annotation", ErrNoRole))

	tests := []struct {
		h                      http.Handler
		method, target, caller string
		header                 http.Header
		want                   map[string]any // nil: no line
	}{
		{e.h, "GET", "/latest/meta-data/../user-data", podAddr, http.Header{headerToken: {tok}},
			map[string]any{"level": "WARN", "reason": "node_path", "method": "GET", "path": "/latest/user-data", "caller": podAddr}},
		{e.h, "GET", "/latest/meta-data/iam/security-credentials/", strangerAddr, nil, nil},
		{e.h, "GET", "/latest/%2575ser-data", podAddr, nil,
			map[string]any{"level": "INFO", "reason": "bad_request", "raw_path": "/latest/%2575ser-data", "status": float64(400)}},
		{e.h, "GET", "/latest/meta-data/iam/security-credentials/", otherPodAddr, http.Header{headerToken: {tok}},
			map[string]any{"reason": "bad_token", "status": float64(401)}},
		{ch, "GET", DefaultContainerPath, podAddr, nil,
			map[string]any{"reason": "bad_token", "path": DefaultContainerPath, "caller": podAddr, "status": float64(401)}},
		{ch, "GET", DefaultContainerPath, podAddr, http.Header{"Authorization": {"pod-token"}}, nil},
		// Another role's credentials, the node's most likely: a warning, as a path outside the allow-list is.
		{e.h, "GET", "/latest/meta-data/iam/security-credentials/node-role", podAddr, http.Header{headerToken: {tok}},
			map[string]any{"level": "WARN", "reason": "not_found", "path": "/latest/meta-data/iam/security-credentials/node-role", "status": float64(404)}},
		// What the client chose is cut to 256 bytes, and a right-to-left override is escaped, not written raw.
		{e.h, "GET", "/latest/user-data/" + strings.Repeat("a", 4000), podAddr, http.Header{headerToken: {tok}},
			map[string]any{"reason": "node_path", "path": ("/latest/user-data/" + strings.Repeat("a", 4000))[:256]}},
		{e.h, "GET", "/latest/user-data/%E2%80%AEtxt.exe", podAddr, http.Header{headerToken: {tok}},
			map[string]any{"reason": "node_path", "path": `/latest/user-data/\u202etxt.exe`}},
	}
	for _, tt := range tests {
		before := len(buf.lines(t))
		serve(t, tt.h, tt.method, tt.target, tt.caller, tt.header)
		lines := buf.lines(t)[before:]
		if tt.want == nil {
			if len(lines) != 0 {
				t.Errorf("%s %q, refused by the provider, logged %v, want no line (the provider logs it)", tt.method, tt.target, lines)
			}
			continue
		}
		if len(lines) != 1 {
			t.Errorf("%s %q logged %d lines, want 1", tt.method, tt.target, len(lines))
			continue
		}
		tt.want["msg"], tt.want["outcome"] = "refused", "refused" // the provider's vocabulary
		for k, v := range tt.want {
			if lines[0][k] != v {
				t.Errorf("%s %q: log %s = %v, want %v", tt.method, tt.target, k, lines[0][k], v)
			}
		}
	}
	// Served requests are not logged here (the agent audits issuance), and nothing secret is ever logged.
	before := len(buf.lines(t))
	e.do(t, "GET", "/latest/meta-data/iam/security-credentials/"+podRole, podAddr, http.Header{headerToken: {tok}})
	if n := len(buf.lines(t)) - before; n != 0 {
		t.Errorf("a served credential request logged %d lines, want 0", n)
	}
	all := buf.b.String()
	c := podCredentials()
	for _, secret := range []string{tok, c.SecretAccessKey, c.SessionToken, c.AccessKeyID} {
		if strings.Contains(all, secret) {
			t.Errorf("log contains a secret %q:\n%s", secret, all)
		}
	}
}

func TestUnparseableRemoteAddr(t *testing.T) {
	e := newTestEnv(t, nil)
	r := httptest.NewRequest("GET", "/latest/meta-data/iam/security-credentials/", nil)
	r.RemoteAddr = "@"
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	if w.Code != 400 {
		t.Errorf("GET from RemoteAddr %q = %d, want 400", r.RemoteAddr, w.Code)
	}
}

func TestUpstreamTokenRejectedOnce(t *testing.T) {
	node := newFakeNodeIMDS(t)
	e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
	e.do(t, "GET", pathInstanceID, podAddr, nil) // caches a token
	node.set(func(f *fakeNodeIMDS) { f.status = http.StatusUnauthorized })
	e.do(t, "GET", pathInstanceType, podAddr, nil)
	node.set(func(f *fakeNodeIMDS) { f.status = 0 })
	var puts, gets int
	for _, r := range node.seen() {
		switch {
		case strings.HasPrefix(r, "PUT "):
			puts++
		case r == "GET "+pathInstanceType:
			gets++
		}
	}
	if puts != 2 || gets != 2 {
		t.Errorf("after a 401 from the node IMDS: %d token PUTs and %d GETs, want 2 and 2 (re-token, retry once)", puts, gets)
	}
	if w := e.do(t, "GET", pathInstanceType, podAddr, nil); w.Code != 200 {
		t.Errorf("GET %q after the node IMDS recovered = %d, want 200", pathInstanceType, w.Code)
	}
	assertUpstreamCanonical(t, node)
}

func TestEC2Architecture(t *testing.T) {
	for goarch, want := range map[string]string{"amd64": "x86_64", "arm64": "arm64", "386": "i386"} {
		if got := ec2Architecture(goarch); got != want {
			t.Errorf("ec2Architecture(%q) = %q, want %q", goarch, got, want)
		}
	}
}
