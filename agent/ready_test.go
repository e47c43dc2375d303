package agent

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/satoken"
)

// TestReadyzSaysWhatIsMissing: /readyz answers 200 only with the informers synced, the listener up, the rules in
// place, no watch refused by the apiserver and minting confined; otherwise 503 and the first reason, a refusal before
// all: it is why the informers never sync when the agent's RBAC is wrong from the start.
func TestReadyzSaysWhatIsMissing(t *testing.T) {
	refusal := fmt.Errorf("%w of Namespaces, so what the agent holds of them may be stale: namespaces is forbidden", kube.ErrRefused)
	for _, c := range []struct {
		name    string
		change  func(*state)
		code    int
		message string
	}{
		{"ready", func(*state) {}, http.StatusOK, "ok: "},
		{"informers", func(s *state) { s.synced.Store(false) }, http.StatusServiceUnavailable, "informers not synced"},
		{"listener", func(s *state) { s.listening.Store(false) }, http.StatusServiceUnavailable, "metadata listener not up"},
		{"rules", func(s *state) { s.rulesOK.Store(false) }, http.StatusServiceUnavailable, "interception rules not in place"},
		{"watch refused", func(s *state) { s.stale = func() error { return refusal } }, http.StatusServiceUnavailable, "list or watch of Namespaces"},
		{"refused from the start", func(s *state) {
			s.stale = func() error { return refusal }
			s.synced.Store(false)
		}, http.StatusServiceUnavailable, "list or watch of Namespaces"},
		{"minting", func(s *state) { s.confinement.Store(nil) }, http.StatusServiceUnavailable, errNotChecked.Error()},
	} {
		st := &state{minting: satoken.AsNode, hostNetwork: func() string { return "covered" }, stale: func() error { return nil }}
		st.synced.Store(true)
		st.listening.Store(true)
		st.rulesOK.Store(true)
		var ok error
		st.confinement.Store(&ok)
		c.change(st)

		rec := httptest.NewRecorder()
		opsHandler(prometheus.NewRegistry(), st).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != c.code || !strings.Contains(string(body), c.message) {
			t.Errorf("%s: /readyz = %d %q, want %d containing %q", c.name, rec.Code, body, c.code, c.message)
		}
	}
}
