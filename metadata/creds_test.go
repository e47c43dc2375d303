package metadata

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestCredentialDocument(t *testing.T) {
	e := newTestEnv(t, nil)
	c := podCredentials()
	// Fractions and a non-UTC zone must not reach the wire.
	c.LastUpdated = time.Date(2026, 8, 20, 19, 0, 0, 123456789, time.FixedZone("CEST", 2*3600))
	c.Expiration = time.Date(2026, 8, 20, 23, 0, 0, 999999999, time.UTC)
	e.prov.set(podAddr, c)

	const (
		legacy = `{"Code":"Success","LastUpdated":"2026-08-20T17:00:00Z","Type":"AWS-HMAC",` +
			`"AccessKeyId":"ASIAPODEXAMPLE00001","SecretAccessKey":"pod/secret+key=EXAMPLE",` +
			`"Token":"FwoGZXIvYXdzEPOD//////////session+token=","Expiration":"2026-08-20T23:00:00Z"}`
		extended = `{"Code":"Success","LastUpdated":"2026-08-20T17:00:00Z","Type":"AWS-HMAC",` +
			`"AccessKeyId":"ASIAPODEXAMPLE00001","SecretAccessKey":"pod/secret+key=EXAMPLE",` +
			`"Token":"FwoGZXIvYXdzEPOD//////////session+token=","Expiration":"2026-08-20T23:00:00Z",` +
			`"AccountId":"123456789012"}`
	)
	tests := []struct {
		target string
		want   string
	}{
		{"/latest/meta-data/iam/security-credentials", podRole},
		{"/latest/meta-data/iam/security-credentials/", podRole},
		{"/latest/meta-data/iam/security-credentials//", podRole},
		{"/latest//meta-data/iam/security-credentials/", podRole},
		{"/latest/meta-data/iam/security-credentials/" + podRole, legacy},
		{"/latest/meta-data/iam/security-credentials/POD-Role", legacy},
		{"/latest/meta-data/iam/security-credentials//" + podRole, legacy},
		{"/latest/meta-data/iam/security-credentials/" + podRole + "/", legacy},
		{"/latest/meta-data/iam/security-credentials-extended", podRole},
		{"/latest/meta-data/iam/security-credentials-extended/", podRole},
		{"/latest/meta-data/iam/security-credentials-extended/" + podRole, extended},
		{"/latest/meta-data/iam/security-credentials-extended/Pod-Role", extended},
	}
	for _, tt := range tests {
		w := e.do(t, http.MethodGet, tt.target, podAddr, nil)
		if w.Code != 200 || w.Body.String() != tt.want {
			t.Errorf("GET %q = %d %q, want 200 %q", tt.target, w.Code, w.Body.String(), tt.want)
			continue
		}
		if got := w.Header().Get("Content-Type"); got != "text/plain" {
			t.Errorf("GET %q: Content-Type = %q, want text/plain", tt.target, got)
		}
		if got := w.Header().Get("Content-Length"); got != fmt.Sprint(len(tt.want)) {
			t.Errorf("GET %q: Content-Length = %q, want %d", tt.target, got, len(tt.want))
		}
	}
	// HEAD: same headers, no body.
	w := e.do(t, http.MethodHead, "/latest/meta-data/iam/security-credentials/"+podRole, podAddr, nil)
	if w.Code != 200 || w.Header().Get("Content-Length") != fmt.Sprint(len(legacy)) {
		t.Errorf("HEAD credential document = %d, Content-Length %q, want 200, %d", w.Code, w.Header().Get("Content-Length"), len(legacy))
	}
}

func TestCredentialDocumentEscaping(t *testing.T) {
	e := newTestEnv(t, nil)
	c := podCredentials()
	c.SecretAccessKey = "quote\" backslash\\ newline\n tab\t nul\x00 <&> \u2028 bad\xff é"
	c.AccountID = ""
	e.prov.set(podAddr, c)
	w := e.do(t, http.MethodGet, "/latest/meta-data/iam/security-credentials-extended/"+podRole, podAddr, nil)
	var doc map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("credential document %q is not JSON: %v", w.Body.String(), err)
	}
	if want := "quote\" backslash\\ newline\n tab\t nul\x00 <&> \u2028 bad\ufffd é"; doc["SecretAccessKey"] != want {
		t.Errorf("SecretAccessKey = %q, want %q", doc["SecretAccessKey"], want)
	}
	// An unknown account is left out rather than served as "" (which SDKs could take for an account).
	if got, ok := doc["AccountId"]; ok {
		t.Errorf("AccountId = %q, want absent when STS named no account", got)
	}
}

func TestCredentialRefusals(t *testing.T) {
	paths := []string{
		"/latest/meta-data/iam/security-credentials/",
		"/latest/meta-data/iam/security-credentials/" + podRole,
		"/latest/meta-data/iam/security-credentials-extended/",
		"/latest/meta-data/iam/security-credentials-extended/" + podRole,
	}
	expired := podCredentials()
	expired.Expiration = testNow
	badName := podCredentials()
	badName.RoleName = "role/with/slash"
	noName := podCredentials()
	noName.RoleName = ""
	noToken := podCredentials()
	noToken.SessionToken = ""
	tests := []struct {
		name  string
		err   error
		creds *Credentials
		want  int
	}{
		{"unknown caller", fmt.Errorf("%w: 10.0.0.5 is hostNetwork", ErrUnknownCaller), nil, 403},
		{"no role", fmt.Errorf("%w: default/sa has no annotation", ErrNoRole), nil, 404},
		{"forbidden", fmt.Errorf("%w: namespace does not allow arn:aws:iam::1:role/x", ErrForbidden), nil, 403},
		{"unavailable", fmt.Errorf("%w: sts throttled", ErrUnavailable), nil, 503},
		{"unclassified error", errors.New("boom"), nil, 503},
		{"expired credentials", nil, &expired, 503},
		{"role name with slash", nil, &badName, 503},
		{"empty role name", nil, &noName, 503},
		// Keys without a session token would be taken for long-term keys, and refused by AWS on every call.
		{"no session token", nil, &noToken, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			e.prov.fail(tt.err)
			if tt.creds != nil {
				e.prov.set(podAddr, *tt.creds)
			}
			for _, p := range paths {
				w := e.do(t, http.MethodGet, p, podAddr, nil)
				if w.Code != tt.want {
					t.Errorf("GET %q = %d, want %d", p, w.Code, tt.want)
				}
				if tt.err != nil && RefusalStatus(tt.err) != w.Code {
					t.Errorf("RefusalStatus(%q) = %d, want %d (the answer to GET %q)", tt.err, RefusalStatus(tt.err), w.Code, p)
				}
				if tt.err != nil && w.Body.String() == tt.err.Error() {
					t.Errorf("GET %q: body is the provider's error text %q", p, w.Body.String())
				}
			}
		})
	}
}

func TestCredentialsPerCaller(t *testing.T) {
	e := newTestEnv(t, nil)
	tests := []struct {
		caller, target string
		want           int
		body           string
	}{
		{podAddr, "/latest/meta-data/iam/security-credentials/", 200, podRole},
		{otherPodAddr, "/latest/meta-data/iam/security-credentials/", 200, "Other-Role"},
		{"::ffff:" + otherPodAddr, "/latest/meta-data/iam/security-credentials/", 200, "Other-Role"},
		{otherPodAddr, "/latest/meta-data/iam/security-credentials/" + podRole, 404, ""},
		{podAddr, "/latest/meta-data/iam/security-credentials/Other-Role", 404, ""},
		{strangerAddr, "/latest/meta-data/iam/security-credentials/", 403, ""},
		{strangerAddr, "/latest/meta-data/iam/security-credentials/" + podRole, 403, ""},
	}
	for _, tt := range tests {
		w := e.do(t, http.MethodGet, tt.target, tt.caller, nil)
		if w.Code != tt.want || (tt.body != "" && w.Body.String() != tt.body) {
			t.Errorf("GET %q from %s = %d %q, want %d %q", tt.target, tt.caller, w.Code, w.Body.String(), tt.want, tt.body)
		}
	}
}
