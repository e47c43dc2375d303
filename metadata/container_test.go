package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type verifierFunc func(ctx context.Context, caller netip.Addr, token string) error

func (f verifierFunc) Verify(ctx context.Context, caller netip.Addr, token string) error {
	return f(ctx, caller, token)
}

func newTestContainer(t testing.TB, v TokenVerifier) (*ContainerHandler, *fakeProvider) {
	t.Helper()
	prov := newFakeProvider()
	h, err := NewContainerHandler(ContainerConfig{Verifier: v, Clock: newFakeClock().Now}, prov, prometheus.NewRegistry())
	if err != nil {
		t.Fatalf("NewContainerHandler: %v", err)
	}
	return h, prov
}

func TestContainerDocument(t *testing.T) {
	h, _ := newTestContainer(t, nil)
	w := serve(t, h, http.MethodGet, "/v1/credentials", podAddr, http.Header{"Authorization": {"pod-token"}})
	const want = `{"AccessKeyId":"ASIAPODEXAMPLE00001","SecretAccessKey":"pod/secret+key=EXAMPLE",` +
		`"Token":"FwoGZXIvYXdzEPOD//////////session+token=","AccountId":"123456789012","Expiration":"2026-08-20T23:00:00Z"}`
	if w.Code != 200 || w.Body.String() != want {
		t.Fatalf("GET /v1/credentials = %d %q, want 200 %q", w.Code, w.Body.String(), want)
	}
	if got := w.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", got)
	}
}

func TestContainerRefusals(t *testing.T) {
	rejectAll := verifierFunc(func(context.Context, netip.Addr, string) error { return errors.New("bad signature") })
	forbid := verifierFunc(func(context.Context, netip.Addr, string) error {
		return fmt.Errorf("%w: token is for another pod", ErrForbidden)
	})
	onlyGood := verifierFunc(func(_ context.Context, caller netip.Addr, token string) error {
		if caller != netip.MustParseAddr(podAddr) || token != "good" {
			return errors.New("mismatch")
		}
		return nil
	})
	tests := []struct {
		name     string
		verifier TokenVerifier
		method   string
		target   string
		caller   string
		auth     []string
		provErr  error
		want     int
		wantCode string
	}{
		{"no authorization", nil, "GET", "/v1/credentials", podAddr, nil, nil, 401, "InvalidToken"},
		{"empty authorization", nil, "GET", "/v1/credentials", podAddr, []string{""}, nil, 401, "InvalidToken"},
		{"two authorization headers", nil, "GET", "/v1/credentials", podAddr, []string{"a", "b"}, nil, 401, "InvalidToken"},
		{"verifier rejects", rejectAll, "GET", "/v1/credentials", podAddr, []string{"tok"}, nil, 401, "InvalidToken"},
		{"verifier forbids", forbid, "GET", "/v1/credentials", podAddr, []string{"tok"}, nil, 403, "AccessDenied"},
		{"verifier accepts", onlyGood, "GET", "/v1/credentials", podAddr, []string{"good"}, nil, 200, ""},
		{"verifier sees caller", onlyGood, "GET", "/v1/credentials", otherPodAddr, []string{"good"}, nil, 401, "InvalidToken"},
		{"wrong path", nil, "GET", "/v1/credential", podAddr, []string{"tok"}, nil, 404, "NotFound"},
		{"imds path", nil, "GET", "/latest/user-data", podAddr, []string{"tok"}, nil, 404, "NotFound"},
		{"double encoding", nil, "GET", "/v1/%2563redentials", podAddr, []string{"tok"}, nil, 400, "BadRequest"},
		{"dot segments", nil, "GET", "/v2/../v1/./credentials", podAddr, []string{"tok"}, nil, 200, ""},
		{"POST", nil, "POST", "/v1/credentials", podAddr, []string{"tok"}, nil, 405, "MethodNotAllowed"},
		{"unknown caller", nil, "GET", "/v1/credentials", strangerAddr, []string{"tok"}, nil, 403, "UnknownCaller"},
		{"no role", nil, "GET", "/v1/credentials", podAddr, []string{"tok"}, ErrNoRole, 404, "NoRole"},
		{"unavailable", nil, "GET", "/v1/credentials", podAddr, []string{"tok"}, ErrUnavailable, 503, "ServiceUnavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, prov := newTestContainer(t, tt.verifier)
			prov.fail(tt.provErr)
			hdr := http.Header{}
			if tt.auth != nil {
				hdr["Authorization"] = tt.auth
			}
			w := serve(t, h, tt.method, tt.target, tt.caller, hdr)
			if w.Code != tt.want {
				t.Fatalf("%s %q from %s = %d %q, want %d", tt.method, tt.target, tt.caller, w.Code, w.Body.String(), tt.want)
			}
			if tt.want == 200 {
				return
			}
			if tt.provErr != nil && RefusalStatus(tt.provErr) != w.Code {
				t.Errorf("RefusalStatus(%q) = %d, want %d (the container face's answer)", tt.provErr, RefusalStatus(tt.provErr), w.Code)
			}
			var doc struct{ Code, Message string }
			if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
				t.Fatalf("%s %q: error body %q is not JSON: %v", tt.method, tt.target, w.Body.String(), err)
			}
			if doc.Code != tt.wantCode || doc.Message == "" {
				t.Errorf("%s %q: error = %+v, want Code %q and a message", tt.method, tt.target, doc, tt.wantCode)
			}
		})
	}
}

// TestContainerRefusesRelayed: a request a proxy relayed comes from the proxy pod's address, and would get its role.
func TestContainerRefusesRelayed(t *testing.T) {
	for _, relay := range []string{"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip"} {
		h, _ := newTestContainer(t, nil)
		w := serve(t, h, "GET", "/v1/credentials", podAddr, http.Header{"Authorization": {"tok"}, relay: {"10.9.9.9"}})
		if w.Code != http.StatusForbidden || strings.Contains(w.Body.String(), "AccessKeyId") {
			t.Errorf("GET /v1/credentials with %s = %d %q, want 403 and no credentials", relay, w.Code, w.Body.String())
		}
	}
}

func TestNewContainerHandlerPath(t *testing.T) {
	for _, p := range []string{"/", "v1/credentials", "/v1/../x", "/v1/credentials/", "/v1//credentials", "/a%2fb"} {
		if _, err := NewContainerHandler(ContainerConfig{Path: p}, newFakeProvider(), nil); err == nil {
			t.Errorf("NewContainerHandler(Path %q) = nil error, want an error", p)
		}
	}
	h, err := NewContainerHandler(ContainerConfig{Path: "/iamlet/creds", Clock: newFakeClock().Now}, newFakeProvider(), nil)
	if err != nil {
		t.Fatalf("NewContainerHandler(/iamlet/creds): %v", err)
	}
	if w := serve(t, h, "GET", "/iamlet/creds", podAddr, http.Header{"Authorization": {"x"}}); w.Code != 200 {
		t.Errorf("GET /iamlet/creds = %d, want 200", w.Code)
	}
}
