package sts_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iamlet/iamlet/agent/sts"
)

const (
	roleARN  = "arn:aws:iam::123456789012:role/reader"
	webToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bnM6c2EifQ.c2lnbmF0dXJl"
)

var expiration = time.Date(2026, 8, 20, 18, 0, 0, 0, time.UTC)

// successXML is an AssumeRoleWithWebIdentity response in STS's awsquery shape. assumedARN "" leaves
// out AssumedRoleUser, as IAM-compatible servers may.
func successXML(assumedARN string) string {
	user := ""
	if assumedARN != "" {
		user = `<AssumedRoleUser><Arn>` + assumedARN + `</Arn><AssumedRoleId>AROACLKWSDQRAOEXAMPLE:ns.web</AssumedRoleId></AssumedRoleUser>`
	}
	return `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    ` + user + `
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEXAMPLESESSIONTOKEN</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-08-20T18:00:00Z</Expiration>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>`
}

func errorXML(code, message string) string {
	return `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>` + code + `</Code><Message>` + message + `</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>`
}

// fakeSTS records the requests it gets and answers each with respond.
type fakeSTS struct {
	*httptest.Server
	respond func(w http.ResponseWriter, form url.Values)

	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	header http.Header
	form   url.Values
	method string
}

func newFakeSTS(t *testing.T, respond func(w http.ResponseWriter, form url.Values)) *fakeSTS {
	t.Helper()
	f := &fakeSTS{respond: respond}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, recorded{header: r.Header.Clone(), form: r.PostForm, method: r.Method})
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		f.respond(w, r.PostForm)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeSTS) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func answer(status int, body string) func(http.ResponseWriter, url.Values) {
	return func(w http.ResponseWriter, _ url.Values) {
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func newClient(t *testing.T, endpoint string) *sts.Client {
	t.Helper()
	c, err := sts.New(sts.Config{Region: "eu-west-1", Endpoint: endpoint})
	if err != nil {
		t.Fatalf("sts.New() error = %v", err)
	}
	return c
}

func request() sts.Request {
	return sts.Request{RoleARN: roleARN, SessionName: "ns.web@0f8c2b9e", WebIdentityToken: webToken, Duration: time.Hour, Regional: true}
}

func TestAssumeRoleSuccess(t *testing.T) {
	tests := []struct {
		name        string
		roleARN     string
		assumedARN  string
		wantAccount string
	}{
		{"account from assumed-role ARN", roleARN, "arn:aws:sts::123456789012:assumed-role/reader/ns.web@0f8c2b9e", "123456789012"},
		// The session's ARN drops the role's path, and IAM role names ignore case.
		{"role with a path", "arn:aws:iam::210987654321:role/team/Reader", "arn:aws:sts::210987654321:assumed-role/reader/s", "210987654321"},
		{"account from role ARN", roleARN, "", "123456789012"},
		{"no account anywhere", "arn:minio:iam:::role/dummy-internal", "", ""},
		{"aws-cn", "arn:aws-cn:iam::123456789012:role/reader", "arn:aws-cn:sts::123456789012:assumed-role/reader/s", "123456789012"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeSTS(t, answer(http.StatusOK, successXML(tt.assumedARN)))
			r := request()
			r.RoleARN = tt.roleARN
			got, err := newClient(t, srv.URL).AssumeRole(context.Background(), r)
			if err != nil {
				t.Fatalf("AssumeRole() error = %v", err)
			}
			want := sts.Credentials{
				AccessKeyID:     "ASIAIOSFODNN7EXAMPLE",
				SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
				SessionToken:    "FwoGZXIvYXdzEXAMPLESESSIONTOKEN",
				Expiration:      expiration,
				AccountID:       tt.wantAccount,
				AssumedRoleARN:  tt.assumedARN,
			}
			if got != want {
				t.Errorf("AssumeRole() = %+v, want %+v", got, want)
			}
			if got.Expiration.Location() != time.UTC {
				t.Errorf("AssumeRole().Expiration in %v, want UTC", got.Expiration.Location())
			}
		})
	}
}

func TestAssumeRoleRequest(t *testing.T) {
	tests := []struct {
		name         string
		duration     time.Duration
		wantDuration string // "" = not sent
	}{
		{"one hour", time.Hour, "3600"},
		{"twelve hours", 12 * time.Hour, "43200"},
		{"role default", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeSTS(t, answer(http.StatusOK, successXML("")))
			r := request()
			r.Duration = tt.duration
			if _, err := newClient(t, srv.URL).AssumeRole(context.Background(), r); err != nil {
				t.Fatalf("AssumeRole() error = %v", err)
			}
			reqs := srv.requests()
			if len(reqs) != 1 {
				t.Fatalf("STS got %d requests, want 1", len(reqs))
			}
			got := reqs[0]
			if got.method != http.MethodPost {
				t.Errorf("method = %s, want POST", got.method)
			}
			for _, h := range []string{"Authorization", "X-Amz-Security-Token", "X-Amz-Date", "X-Amz-Content-Sha256"} {
				if v := got.header.Get(h); v != "" {
					t.Errorf("header %s = %q, want none: the call is unsigned", h, v)
				}
			}
			wantForm := map[string]string{
				"Action":           "AssumeRoleWithWebIdentity",
				"Version":          "2011-06-15",
				"RoleArn":          roleARN,
				"RoleSessionName":  "ns.web@0f8c2b9e",
				"WebIdentityToken": webToken,
				"DurationSeconds":  tt.wantDuration,
			}
			for k, want := range wantForm {
				if v := got.form.Get(k); v != want {
					t.Errorf("form %s = %q, want %q", k, v, want)
				}
			}
			if _, sent := got.form["DurationSeconds"]; sent != (tt.wantDuration != "") {
				t.Errorf("DurationSeconds sent = %v, want %v", sent, tt.wantDuration != "")
			}
		})
	}
}

func TestAssumeRoleErrors(t *testing.T) {
	tests := []struct {
		name          string
		status        int
		body          string
		wantCode      string
		wantRetryable bool
	}{
		{"InvalidIdentityToken", 400, errorXML("InvalidIdentityToken", "Couldn't retrieve verification key from your identity provider"), "InvalidIdentityToken", true},
		{"ExpiredTokenException", 400, errorXML("ExpiredTokenException", "Token expired: current date/time 1 must be before the expiration date/time 0"), "ExpiredTokenException", false},
		{"IDPRejectedClaim", 403, errorXML("IDPRejectedClaim", "Audience not allowed"), "IDPRejectedClaim", false},
		{"RegionDisabledException", 403, errorXML("RegionDisabledException", "STS is not activated in this region"), "RegionDisabledException", false},
		{"AccessDenied", 403, errorXML("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"), "AccessDenied", false},
		{"ValidationError", 400, errorXML("ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."), "ValidationError", false},
		{"MalformedPolicyDocument", 400, errorXML("MalformedPolicyDocument", "bad policy"), "MalformedPolicyDocument", false},
		{"IDPCommunicationError", 400, errorXML("IDPCommunicationError", "Couldn't reach the identity provider"), "IDPCommunicationError", true},
		{"Throttling", 400, errorXML("Throttling", "Rate exceeded"), "Throttling", true},
		{"500 with error document", 500, errorXML("InternalFailure", "internal"), "InternalFailure", true},
		{"500 with an unknown code", 500, errorXML("SomethingNew", "internal"), "SomethingNew", true},
		{"500 without body", 500, "", "HTTP500", true},
		{"502 from a proxy", 502, "<html>Bad Gateway</html>", "HTTP502", true},
		{"503", 503, errorXML("ServiceUnavailable", "try later"), "ServiceUnavailable", true},
		{"429", 429, "", "HTTP429", true},
		{"400 without body", 400, "", "HTTP400", false},
		// A 200 that is no answer (a proxy's page, a cut-off body) or credentials without a part: STS refused
		// nothing, so the pod asks again rather than being told its role is refused.
		{"200 cut off", 200, successXML("")[:400], "BadResponse", true},
		{"200 from a proxy", 200, "<html>Sign in to the network</html>", "BadResponse", true},
		{"200 without a key", 200, strings.Replace(successXML(""), "<AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>", "", 1), "EmptyResponse", true},
		{"200 without a session token", 200, strings.Replace(successXML(""), "<SessionToken>FwoGZXIvYXdzEXAMPLESESSIONTOKEN</SessionToken>", "", 1), "EmptyResponse", true},
		// A session of another role than the one asked for is never passed on.
		{"200 naming another role", 200, successXML("arn:aws:sts::123456789012:assumed-role/admin/ns.web"), "RoleMismatch", false},
		{"200 naming another account", 200, successXML("arn:aws:sts::999999999999:assumed-role/reader/ns.web"), "RoleMismatch", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeSTS(t, answer(tt.status, tt.body))
			_, err := newClient(t, srv.URL).AssumeRole(context.Background(), request())
			var se *sts.Error
			if !errors.As(err, &se) {
				t.Fatalf("AssumeRole() error = %v (%T), want *sts.Error", err, err)
			}
			if tt.wantCode != "" && se.Code != tt.wantCode {
				t.Errorf("AssumeRole() error code = %q, want %q", se.Code, tt.wantCode)
			}
			if se.Retryable() != tt.wantRetryable {
				t.Errorf("AssumeRole() error %v Retryable() = %v, want %v", err, se.Retryable(), tt.wantRetryable)
			}
			if strings.Contains(err.Error(), webToken) {
				t.Errorf("AssumeRole() error = %q, contains the web identity token", err)
			}
			if n := len(srv.requests()); n != 1 {
				t.Errorf("STS got %d requests, want 1: the SDK must not retry behind the cache", n)
			}
		})
	}
}

func TestAssumeRoleErrorRedactsEchoedToken(t *testing.T) {
	// STS's validation messages quote what they reject.
	echo := func(w http.ResponseWriter, form url.Values) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, errorXML("ValidationError",
			"1 validation error detected: Value '"+form.Get("WebIdentityToken")+"' at 'webIdentityToken' failed to satisfy constraint"))
	}
	srv := newFakeSTS(t, echo)
	_, err := newClient(t, srv.URL).AssumeRole(context.Background(), request())
	if err == nil || strings.Contains(err.Error(), webToken) || !strings.Contains(err.Error(), "webIdentityToken") {
		t.Errorf("AssumeRole() error = %v, want STS's message with the token redacted", err)
	}
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		if strings.Contains(e.Error(), webToken) {
			t.Errorf("AssumeRole() error wraps %q (%T), which quotes the web identity token", e, e)
		}
	}
}

func TestAssumeRoleNetworkErrors(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	refused := closed.URL
	closed.Close()

	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	t.Cleanup(func() {
		close(hang)
		slow.Close()
	})

	tests := []struct {
		name     string
		endpoint string
		ctx      func() (context.Context, context.CancelFunc)
		wantCode string
	}{
		{"connection refused", refused, func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }, "Network"},
		{"deadline", slow.URL, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, "Canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			_, err := newClient(t, tt.endpoint).AssumeRole(ctx, request())
			var se *sts.Error
			if !errors.As(err, &se) || se.Code != tt.wantCode || !se.Retryable() {
				t.Fatalf("AssumeRole() error = %v, want a retryable *sts.Error with code %s", err, tt.wantCode)
			}
			if strings.Contains(err.Error(), webToken) {
				t.Errorf("AssumeRole() error = %q, contains the web identity token", err)
			}
		})
	}
}

func TestAssumeRoleEndpointOverrideServesBoth(t *testing.T) {
	srv := newFakeSTS(t, answer(http.StatusOK, successXML("")))
	c := newClient(t, srv.URL)
	for _, regional := range []bool{true, false} {
		r := request()
		r.Regional = regional
		if _, err := c.AssumeRole(context.Background(), r); err != nil {
			t.Errorf("AssumeRole(regional=%v) error = %v, want the override endpoint used", regional, err)
		}
	}
	if n := len(srv.requests()); n != 2 {
		t.Errorf("override endpoint got %d requests, want 2", n)
	}
}

// recorder is a transport that answers every request with a canned STS success and records its URL.
type recorder struct {
	mu   sync.Mutex
	urls []*url.URL
}

func (rt *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	rt.mu.Lock()
	rt.urls = append(rt.urls, r.URL)
	rt.mu.Unlock()
	return &http.Response{
		StatusCode: http.StatusOK,
		Header:     http.Header{"Content-Type": {"text/xml"}},
		Body:       io.NopCloser(strings.NewReader(successXML(""))),
		Request:    r,
	}, nil
}

func TestAssumeRoleEndpoints(t *testing.T) {
	tests := []struct {
		region   string
		regional bool
		want     string
	}{
		{"eu-west-1", true, "sts.eu-west-1.amazonaws.com"},
		{"eu-west-1", false, "sts.amazonaws.com"},
		{"us-east-1", true, "sts.us-east-1.amazonaws.com"},
		{"us-east-1", false, "sts.amazonaws.com"},
		{"af-south-1", false, "sts.af-south-1.amazonaws.com"}, // opted-in region: no legacy global endpoint
		{"cn-north-1", true, "sts.cn-north-1.amazonaws.com.cn"},
		{"cn-north-1", false, "sts.cn-north-1.amazonaws.com.cn"},
		{"us-gov-west-1", false, "sts.us-gov-west-1.amazonaws.com"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/regional=%v", tt.region, tt.regional), func(t *testing.T) {
			rt := &recorder{}
			c, err := sts.New(sts.Config{Region: tt.region, HTTPClient: &http.Client{Transport: rt}})
			if err != nil {
				t.Fatalf("sts.New() error = %v", err)
			}
			r := request()
			r.Regional = tt.regional
			if _, err := c.AssumeRole(context.Background(), r); err != nil {
				t.Fatalf("AssumeRole() error = %v", err)
			}
			if len(rt.urls) != 1 || rt.urls[0].Host != tt.want || rt.urls[0].Scheme != "https" {
				t.Errorf("AssumeRole() called %v, want https://%s", rt.urls, tt.want)
			}
		})
	}
}

func TestNewNeedsRegionOrEndpoint(t *testing.T) {
	if _, err := sts.New(sts.Config{}); err == nil {
		t.Error("sts.New(no region, no endpoint) error = nil, want one")
	}
}

var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func TestSessionName(t *testing.T) {
	const uid = "0f8c2b9e-7d41-4b5a-9c3e-2a1b0c9d8e7f"
	long := strings.Repeat("a", 63)
	tests := []struct {
		namespace, pod, uid string
		want                string // "" = check only the rules
	}{
		{"ns", "web", uid, "ns.web@0f8c2b9e"},
		{"kube-system", "coredns-5d78c9869d-x7k2p", uid, "kube-system.coredns-5d78c9869d-x7k2p@0f8c2b9e"},
		{"ns", "web", "", "ns.web"},
		{"ns", "web", "abc", "ns.web@abc"},
		{long, long + "-" + long + "-0", uid, ""},
		{long, strings.Repeat("b", 253), uid, ""},
		{"ns", "pod name/with:odd*chars", uid, "ns.pod-name-with-odd-chars@0f8c2b9e"},
		{"ns", "pöd", uid, "ns.p--d@0f8c2b9e"},
		{"ns", "web", "uid with spaces!", "ns.web@uid-with"},
	}
	for _, tt := range tests {
		got := sts.SessionName(tt.namespace, tt.pod, tt.uid)
		if tt.want != "" && got != tt.want {
			t.Errorf("SessionName(%q, %q, %q) = %q, want %q", tt.namespace, tt.pod, tt.uid, got, tt.want)
		}
		if !sessionNameRE.MatchString(got) {
			t.Errorf("SessionName(%q, %q, %q) = %q (%d characters), want 2-64 of [\\w+=,.@-]", tt.namespace, tt.pod, tt.uid, got, len(got))
		}
	}

	// Pods whose names differ only past the cut stay apart by their UIDs.
	a := sts.SessionName(long, long+"-0", "11111111-0000-0000-0000-000000000000")
	b := sts.SessionName(long, long+"-1", "22222222-0000-0000-0000-000000000000")
	if a == b {
		t.Errorf("SessionName() = %q for two pods, want them told apart by UID", a)
	}
	if len(a) != 64 || !strings.HasSuffix(a, "@11111111") {
		t.Errorf("SessionName() = %q (%d characters), want 64 ending in the UID prefix", a, len(a))
	}
}
