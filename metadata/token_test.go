package metadata

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestTokenPUTTTL(t *testing.T) {
	tests := []struct {
		name   string
		ttl    []string // nil = header absent
		want   int
		wantTT string
	}{
		{"missing", nil, 400, ""},
		{"empty", []string{""}, 400, ""},
		{"zero", []string{"0"}, 400, ""},
		{"above max", []string{"21601"}, 400, ""},
		{"huge", []string{"99999999999999999999"}, 400, ""},
		{"non-numeric", []string{"abc"}, 400, ""},
		{"leading space", []string{" 5"}, 400, ""},
		{"trailing space", []string{"5 "}, 400, ""},
		{"negative", []string{"-1"}, 400, ""},
		{"plus sign", []string{"+5"}, 400, ""},
		{"fraction", []string{"1.5"}, 400, ""},
		{"two values", []string{"5", "6"}, 400, ""},
		{"one", []string{"1"}, 200, "1"},
		{"max", []string{"21600"}, 200, "21600"},
		{"leading zero", []string{"0300"}, 200, "300"},
		{"leading zeros", []string{"000060"}, 200, "60"},
		{"zeros", []string{"000000"}, 400, ""},
		{"too long", []string{"00000000000000060"}, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			h := http.Header{}
			if tt.ttl != nil {
				h[headerTokenTTL] = tt.ttl
			}
			w := e.do(t, http.MethodPut, pathToken, podAddr, h)
			if w.Code != tt.want {
				t.Fatalf("PUT %s ttl=%q = %d, want %d", pathToken, tt.ttl, w.Code, tt.want)
			}
			if got := w.Header().Get(headerTokenTTL); got != tt.wantTT {
				t.Errorf("PUT ttl=%q: %s = %q, want %q", tt.ttl, headerTokenTTL, got, tt.wantTT)
			}
			if tt.want != 200 {
				return
			}
			body := w.Body.String()
			if strings.ContainsAny(body, "\r\n \t") || len(body) != tokenLen {
				t.Errorf("PUT ttl=%q: token %q: want %d bytes without whitespace", tt.ttl, body, tokenLen)
			}
			if got := w.Header().Get("Content-Type"); got != "text/plain" {
				t.Errorf("PUT: Content-Type = %q, want text/plain", got)
			}
			if got := w.Header().Get("Content-Length"); got != fmt.Sprint(len(body)) {
				t.Errorf("PUT: Content-Length = %q, want %d", got, len(body))
			}
		})
	}
}

func TestTokenValidity(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.RequireV2 = true })
	const target = "/latest/meta-data/iam/security-credentials/"
	tokA := e.token(t, podAddr, 60)

	// Tamper with the decoded bytes so only the MAC can object: one MAC bit, and the expiry pushed out by a day.
	raw, err := base64.RawURLEncoding.DecodeString(tokA)
	if err != nil {
		t.Fatalf("token %q is not base64url: %v", tokA, err)
	}
	tamperedMAC := append([]byte(nil), raw...)
	tamperedMAC[len(raw)-1] ^= 1
	tamperedExpiry := append([]byte(nil), raw...)
	binary.BigEndian.PutUint64(tamperedExpiry[1:9], binary.BigEndian.Uint64(raw[1:9])+86400)
	tamperedVersion := append([]byte(nil), raw...)
	tamperedVersion[0]++
	otherKey := newTestEnv(t, func(c *Config) { c.TokenKey = []byte(strings.Repeat("x", 32)) })
	tokOtherKey := otherKey.token(t, podAddr, 60)

	tests := []struct {
		name   string
		caller string
		token  []string
		want   int
	}{
		{"own token", podAddr, []string{tokA}, 200},
		{"same IP as IPv4-mapped IPv6", "::ffff:" + podAddr, []string{tokA}, 200},
		{"token from another pod IP", otherPodAddr, []string{tokA}, 401},
		{"no token with RequireV2", podAddr, nil, 401},
		{"empty token with RequireV2", podAddr, []string{""}, 401},
		{"tampered MAC", podAddr, []string{base64.RawURLEncoding.EncodeToString(tamperedMAC)}, 401},
		{"tampered expiry", podAddr, []string{base64.RawURLEncoding.EncodeToString(tamperedExpiry)}, 401},
		{"tampered version", podAddr, []string{base64.RawURLEncoding.EncodeToString(tamperedVersion)}, 401},
		{"non-canonical base64 tail", podAddr, []string{tokA[:len(tokA)-1] + string(tokA[len(tokA)-1]^1)}, 401},
		{"truncated", podAddr, []string{tokA[:len(tokA)-1]}, 401},
		{"extended", podAddr, []string{tokA + "A"}, 401},
		{"garbage", podAddr, []string{strings.Repeat("!", tokenLen)}, 401},
		{"other key", podAddr, []string{tokOtherKey}, 401},
		{"two tokens", podAddr, []string{tokA, tokA}, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.token != nil {
				h[headerToken] = tt.token
			}
			w := e.do(t, http.MethodGet, target, tt.caller, h)
			if w.Code != tt.want {
				t.Errorf("GET %q from %s = %d, want %d", target, tt.caller, w.Code, tt.want)
			}
		})
	}
}

func TestTokenExpiry(t *testing.T) {
	e := newTestEnv(t, nil)
	const target = "/latest/meta-data/instance-id"
	tok := e.token(t, podAddr, 300)
	get := func() int {
		return e.do(t, http.MethodGet, target, podAddr, http.Header{headerToken: {tok}}).Code
	}
	if got := get(); got != 200 {
		t.Fatalf("GET %q with fresh token = %d, want 200", target, got)
	}
	e.clock.Advance(299 * time.Second)
	if got := get(); got != 200 {
		t.Fatalf("GET %q at ttl-1s = %d, want 200", target, got)
	}
	e.clock.Advance(time.Second)
	if got := get(); got != 401 {
		t.Fatalf("GET %q at ttl = %d, want 401", target, got)
	}
	// v1 is allowed here, so dropping the token (what SDKs do after a 401) works again.
	if got := e.do(t, http.MethodGet, target, podAddr, nil).Code; got != 200 {
		t.Fatalf("GET %q without token = %d, want 200", target, got)
	}
}

func TestTokenSurvivesRestart(t *testing.T) {
	first := newTestEnv(t, nil)
	tok := first.token(t, podAddr, 21600)
	restarted := newTestEnv(t, nil) // a new handler with the same key
	const target = "/latest/meta-data/iam/security-credentials"
	if got := restarted.do(t, http.MethodGet, target, podAddr, http.Header{headerToken: {tok}}).Code; got != 200 {
		t.Errorf("GET %q with a token from before the restart = %d, want 200", target, got)
	}
}

func TestTokenPUTRefusals(t *testing.T) {
	e := newTestEnv(t, nil)
	tests := []struct {
		name   string
		method string
		header http.Header
		want   int
		allow  string
	}{
		{"X-Forwarded-For", http.MethodPut, http.Header{headerTokenTTL: {"60"}, "X-Forwarded-For": {"10.0.0.5"}}, 403, ""},
		{"empty X-Forwarded-For", http.MethodPut, http.Header{headerTokenTTL: {"60"}, "X-Forwarded-For": {""}}, 403, ""},
		{"Forwarded", http.MethodPut, http.Header{headerTokenTTL: {"60"}, "Forwarded": {"for=10.0.0.5"}}, 403, ""},
		{"GET", http.MethodGet, http.Header{headerTokenTTL: {"60"}}, 405, "PUT"},
		{"POST", http.MethodPost, http.Header{headerTokenTTL: {"60"}}, 405, "PUT"},
		{"DELETE", http.MethodDelete, nil, 405, "PUT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := e.do(t, tt.method, pathToken, podAddr, tt.header)
			if w.Code != tt.want {
				t.Fatalf("%s %s = %d, want %d", tt.method, pathToken, w.Code, tt.want)
			}
			if got := w.Header().Get("Allow"); got != tt.allow {
				t.Errorf("%s %s: Allow = %q, want %q", tt.method, pathToken, got, tt.allow)
			}
			if w.Header().Get(headerTokenTTL) != "" {
				t.Errorf("%s %s: refusal carries %s", tt.method, pathToken, headerTokenTTL)
			}
		})
	}
}

// TestTokenOverTheWire checks what only a real server shows: header names in any case, and PUT with and without
// Content-Length: 0.
func TestTokenOverTheWire(t *testing.T) {
	e := newTestEnv(t, nil)
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	tests := []struct {
		name string
		req  string
	}{
		{"canonical, Content-Length 0", "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 60\r\nContent-Length: 0\r\n\r\n"},
		{"lower case, no Content-Length", "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"},
		{"EC2 docs spelling", "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"},
		{"shouting", "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-AWS-EC2-METADATA-TOKEN-TTL-SECONDS: 60\r\nContent-Length: 0\r\n\r\n"},
		{"HTTP/1.0", "PUT /latest/api/token HTTP/1.0\r\nx-aws-EC2-metadata-token-ttl-SECONDS: 60\r\n\r\n"},
		// A body of unknown length that turned out empty (Go's client with a Body reader, Python requests with a generator).
		{"chunked, empty", "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, tok := rawRequest(t, addr, tt.req)
			if resp.StatusCode != 200 {
				t.Fatalf("%q = %d, want 200", firstLine(tt.req), resp.StatusCode)
			}
			if got := resp.Header.Get(headerTokenTTL); got != "60" {
				t.Errorf("%q: %s = %q, want 60", firstLine(tt.req), headerTokenTTL, got)
			}
			if strings.HasSuffix(tok, "\n") {
				t.Errorf("%q: token %q ends in a newline", firstLine(tt.req), tok)
			}
			get := "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\nx-AWS-ec2-METADATA-token: " + tok + "\r\nConnection: close\r\n\r\n"
			resp, body := rawRequest(t, addr, get)
			if resp.StatusCode != 200 || body != podRole {
				t.Errorf("GET listing with mixed-case token header = %d %q, want 200 %q", resp.StatusCode, body, podRole)
			}
		})
	}
}

// TestTokenScope: callers that share an address (hostNetwork pods share the node's) are told apart by the token's
// scope: one's token is refused from another, and a token without a scope is not one with.
func TestTokenScope(t *testing.T) {
	const scopeHeader = "X-Test-Scope" // stands in for what the agent reads from the connection
	e := newTestEnv(t, func(c *Config) { c.TokenScope = func(r *http.Request) string { return r.Header.Get(scopeHeader) } })
	plain := newTestEnv(t, nil) // the same key, no scope
	put := func(scope string) string {
		w := e.do(t, http.MethodPut, pathToken, podAddr, http.Header{headerTokenTTL: {"60"}, scopeHeader: {scope}})
		if w.Code != http.StatusOK {
			t.Fatalf("PUT %s with scope %q = %d, want 200", pathToken, scope, w.Code)
		}
		return w.Body.String()
	}
	get := func(tok, scope string) int {
		return e.do(t, http.MethodGet, "/latest/meta-data/iam/security-credentials/", podAddr,
			http.Header{headerToken: {tok}, scopeHeader: {scope}}).Code
	}
	shipper, cni, none := put("pod/uid-shipper"), put("pod/uid-cni"), put("")
	for _, c := range []struct {
		name, token, scope string
		want               int
	}{
		{"own scope", shipper, "pod/uid-shipper", 200},
		{"another pod's token", cni, "pod/uid-shipper", 401},
		{"a scoped token without its scope", shipper, "", 401},
		{"an unscoped token with a scope", none, "pod/uid-shipper", 401},
		{"unscoped", none, "", 200},
		{"an unscoped token of a handler without scopes", plain.token(t, podAddr, 60), "", 200},
	} {
		if got := get(c.token, c.scope); got != c.want {
			t.Errorf("%s: GET with scope %q = %d, want %d", c.name, c.scope, got, c.want)
		}
	}
}
