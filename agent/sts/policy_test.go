package sts_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/agent/sts/ststest"
)

const (
	chainedARN = "arn:aws:iam::210987654321:role/cross-account-reader"
	externalID = "iamlet-7f3a"
	narrow     = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::bucket/*"}]}`
	readOnly   = "arn:aws:iam::aws:policy/ReadOnlyAccess"
	s3ReadOnly = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
)

// bigPolicy is a valid policy of over ststest.MaxPolicyLength characters.
func bigPolicy() string {
	stmt := `{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::a-rather-long-bucket-name/some/prefix/*"}`
	return `{"Version":"2012-10-17","Statement":[` + strings.TrimSuffix(strings.Repeat(stmt+",", 30), ",") + `]}`
}

// firstSession assumes roleARN with a web identity token, as the agent does before chaining.
func firstSession(t *testing.T, c *sts.Client) sts.Credentials {
	t.Helper()
	first, err := c.AssumeRole(context.Background(), request())
	if err != nil {
		t.Fatalf("AssumeRole() error = %v", err)
	}
	return first
}

func chainRequest() sts.ChainRequest {
	return sts.ChainRequest{RoleARN: chainedARN, SessionName: "ns.web@0f8c2b9e", ExternalID: externalID, Duration: time.Hour, Regional: true}
}

func TestAssumeRoleSessionPolicy(t *testing.T) {
	tests := []struct {
		name       string
		policy     string
		policyARNs []string
		wantPacked int32
	}{
		{"none", "", nil, 0},
		{"inline", narrow, nil, int32((len(narrow)*100 + 2047) / 2048)},
		{"managed", "", []string{readOnly, s3ReadOnly}, 1},
		{"both", narrow, []string{readOnly}, int32((len(narrow)*100 + 2047) / 2048)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ststest.NewServer(t, ststest.Config{})
			c := newClient(t, srv.URL)
			r := request()
			r.Policy, r.PolicyARNs = tt.policy, tt.policyARNs
			got, err := c.AssumeRole(context.Background(), r)
			if err != nil {
				t.Fatalf("AssumeRole() error = %v", err)
			}
			if got.PackedPolicySize != tt.wantPacked {
				t.Errorf("AssumeRole().PackedPolicySize = %d, want %d", got.PackedPolicySize, tt.wantPacked)
			}
			if want := "arn:aws:sts::123456789012:assumed-role/reader/ns.web@0f8c2b9e"; got.AssumedRoleARN != want {
				t.Errorf("AssumeRole().AssumedRoleARN = %q, want %q", got.AssumedRoleARN, want)
			}
			if !strings.HasPrefix(got.AccessKeyID, "ASIA") || got.SecretAccessKey == "" || got.SessionToken == "" {
				t.Errorf("AssumeRole() = %+v, want temporary credentials", got)
			}

			chained, err := c.AssumeRoleChained(context.Background(), got, sts.ChainRequest{RoleARN: chainedARN, SessionName: r.SessionName,
				Policy: tt.policy, PolicyARNs: tt.policyARNs, Regional: true})
			if err != nil {
				t.Fatalf("AssumeRoleChained() error = %v", err)
			}
			if chained.PackedPolicySize != tt.wantPacked {
				t.Errorf("AssumeRoleChained().PackedPolicySize = %d, want %d", chained.PackedPolicySize, tt.wantPacked)
			}

			calls := srv.Calls()
			if len(calls) != 2 {
				t.Fatalf("STS got %d calls, want 2", len(calls))
			}
			for _, call := range calls {
				if call.Policy != tt.policy || !slices.Equal(call.PolicyARNs, tt.policyARNs) {
					t.Errorf("%s got policy %q and ARNs %q, want %q and %q", call.Action, call.Policy, call.PolicyARNs, tt.policy, tt.policyARNs)
				}
			}
		})
	}
}

func TestSessionPolicyRefused(t *testing.T) {
	tests := []struct {
		name     string
		policy   string
		wantCode string
		wantMsg  *regexp.Regexp
	}{
		{"too large", bigPolicy(), "PackedPolicyTooLarge", regexp.MustCompile(`Packed policy consumes 1[0-9]{2}% of allotted space`)},
		{"malformed", `{"Version":`, "MalformedPolicyDocument", regexp.MustCompile(`not in the valid JSON format`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ststest.NewServer(t, ststest.Config{})
			c := newClient(t, srv.URL)
			first := firstSession(t, c)

			r := request()
			r.Policy = tt.policy
			_, err := c.AssumeRole(context.Background(), r)
			chain := chainRequest()
			chain.Policy = tt.policy
			_, chainErr := c.AssumeRoleChained(context.Background(), first, chain)

			for call, err := range map[string]error{"AssumeRole": err, "AssumeRoleChained": chainErr} {
				var se *sts.Error
				if !errors.As(err, &se) || se.Code != tt.wantCode || se.Retryable() {
					t.Errorf("%s() error = %v, want a terminal *sts.Error with code %s", call, err, tt.wantCode)
					continue
				}
				if !tt.wantMsg.MatchString(err.Error()) {
					t.Errorf("%s() error = %q, want STS's message %q", call, err, tt.wantMsg)
				}
			}
		})
	}
}

func TestAssumeRoleChained(t *testing.T) {
	tests := []struct {
		name         string
		duration     time.Duration
		regional     bool
		wantDuration time.Duration
	}{
		{"one hour", time.Hour, true, time.Hour},
		{"clamped to one hour", 12 * time.Hour, true, time.Hour},
		{"shorter", 30 * time.Minute, true, 30 * time.Minute},
		{"role default", 0, true, 0},
		{"global endpoint", 2 * time.Hour, false, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ststest.NewServer(t, ststest.Config{})
			srv.RequireExternalID(chainedARN, externalID)
			c := newClient(t, srv.URL)
			first := firstSession(t, c)

			r := chainRequest()
			r.Duration, r.Regional = tt.duration, tt.regional
			got, err := c.AssumeRoleChained(context.Background(), first, r)
			if err != nil {
				t.Fatalf("AssumeRoleChained() error = %v", err)
			}
			if got.AccountID != "210987654321" || got.AssumedRoleARN != "arn:aws:sts::210987654321:assumed-role/cross-account-reader/ns.web@0f8c2b9e" {
				t.Errorf("AssumeRoleChained() = account %q, ARN %q, want the chained role's", got.AccountID, got.AssumedRoleARN)
			}
			if got.AccessKeyID == first.AccessKeyID || got.SessionToken == first.SessionToken || got.Expiration.IsZero() {
				t.Errorf("AssumeRoleChained() = %+v, want a new session", got)
			}

			calls := srv.Calls()
			if len(calls) != 2 {
				t.Fatalf("STS got %d calls, want 2", len(calls))
			}
			want := ststest.Call{Action: ststest.AssumeRole, RoleARN: chainedARN, SessionName: "ns.web@0f8c2b9e", ExternalID: externalID,
				Duration: tt.wantDuration, AccessKeyID: first.AccessKeyID}
			if got := calls[1]; !reflect.DeepEqual(got, want) {
				t.Errorf("STS got %+v, want %+v", got, want)
			}
		})
	}
}

func TestAssumeRoleChainedRefused(t *testing.T) {
	tests := []struct {
		name     string
		from     func(sts.Credentials) sts.Credentials
		chain    func(*sts.ChainRequest)
		advance  time.Duration
		wantCode string
	}{
		{"wrong secret", func(c sts.Credentials) sts.Credentials { c.SecretAccessKey += "x"; return c }, nil, 0, "SignatureDoesNotMatch"},
		{"another session's token", func(c sts.Credentials) sts.Credentials { c.SessionToken = "IQoJb3JpZ2luX2VjEforged"; return c }, nil, 0, "InvalidClientTokenId"},
		{"no first session", func(sts.Credentials) sts.Credentials { return sts.Credentials{} }, nil, 0, "NoCredentials"},
		{"unknown access key", func(c sts.Credentials) sts.Credentials { c.AccessKeyID = "ASIAUNKNOWNEXAMPLE00"; return c }, nil, 0, "InvalidClientTokenId"},
		{"expired session", nil, nil, time.Hour, "ExpiredToken"},
		{"no external ID", nil, func(r *sts.ChainRequest) { r.ExternalID = "" }, 0, "AccessDenied"},
		{"wrong external ID", nil, func(r *sts.ChainRequest) { r.ExternalID = "guess" }, 0, "AccessDenied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ahead atomic.Int64 // how far the stand-in's clock runs ahead
			srv := ststest.NewServer(t, ststest.Config{Now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
			srv.RequireExternalID(chainedARN, externalID)
			c := newClient(t, srv.URL)
			first := firstSession(t, c)
			from := first
			if tt.from != nil {
				from = tt.from(first)
			}
			r := chainRequest()
			if tt.chain != nil {
				tt.chain(&r)
			}
			ahead.Store(int64(tt.advance))

			_, err := c.AssumeRoleChained(context.Background(), from, r)
			var se *sts.Error
			if !errors.As(err, &se) || se.Code != tt.wantCode || se.Retryable() {
				t.Fatalf("AssumeRoleChained() error = %v, want a terminal *sts.Error with code %s", err, tt.wantCode)
			}
			assertNoSecrets(t, err, first, from)
			if tt.wantCode == "NoCredentials" {
				return // refused before STS
			}
			if calls := srv.Calls(); len(calls) != 2 || calls[1].Code != tt.wantCode {
				t.Errorf("STS calls = %+v, want the AssumeRole refused with %s", calls, tt.wantCode)
			}
		})
	}
}

// assertNoSecrets fails if err, or anything it wraps, quotes a secret key or session token of sessions.
func assertNoSecrets(t *testing.T, err error, sessions ...sts.Credentials) {
	t.Helper()
	for e := err; e != nil; e = errors.Unwrap(e) {
		for _, s := range sessions {
			for _, secret := range []string{s.SecretAccessKey, s.SessionToken} {
				if secret != "" && strings.Contains(e.Error(), secret) {
					t.Errorf("error %q (%T) quotes a signing session's secret key or token", e, e)
				}
			}
		}
	}
}

func TestStandInRefusesUnsigned(t *testing.T) {
	srv := ststest.NewServer(t, ststest.Config{})
	form := url.Values{"Action": {"AssumeRole"}, "Version": {"2011-06-15"}, "RoleArn": {chainedARN}, "RoleSessionName": {"ns.web"}}
	resp, err := http.PostForm(srv.URL, form)
	if err != nil {
		t.Fatalf("POST AssumeRole error = %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "<Code>MissingAuthenticationToken</Code>") {
		t.Errorf("unsigned AssumeRole = %d %s, want 403 MissingAuthenticationToken", resp.StatusCode, body)
	}
}

// tamper rewrites the form of every AssumeRole after the SDK signed it.
type tamper struct{ next http.RoundTripper }

func (rt tamper) RoundTrip(r *http.Request) (*http.Response, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	body := strings.Replace(string(b), url.QueryEscape(chainedARN), url.QueryEscape("arn:aws:iam::210987654321:role/admin"), 1)
	r = r.Clone(r.Context())
	r.Body, r.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
	return rt.next.RoundTrip(r)
}

func TestStandInRefusesTamperedBody(t *testing.T) {
	srv := ststest.NewServer(t, ststest.Config{})
	c, err := sts.New(sts.Config{Region: "eu-west-1", Endpoint: srv.URL, HTTPClient: &http.Client{Transport: tamper{http.DefaultTransport}}})
	if err != nil {
		t.Fatalf("sts.New() error = %v", err)
	}
	_, err = c.AssumeRoleChained(context.Background(), firstSession(t, c), chainRequest())
	var se *sts.Error
	if !errors.As(err, &se) || se.Code != "SignatureDoesNotMatch" {
		t.Errorf("AssumeRoleChained(body changed after signing) error = %v, want SignatureDoesNotMatch", err)
	}
}

func TestAssumeRoleChainedRedactsEchoedSecrets(t *testing.T) {
	from := sts.Credentials{AccessKeyID: "ASIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
		SessionToken: "FwoGZXIvYXdzEXAMPLESESSIONTOKEN", Expiration: expiration}
	// An STS (or a proxy before it) that quotes what it got, the signing token and the secret besides.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/xml")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, errorXML("ValidationError",
			"Value '"+r.Header.Get("X-Amz-Security-Token")+"' at 'securityToken', key '"+from.SecretAccessKey+"' failed to satisfy constraint"))
	}))
	t.Cleanup(echo.Close)

	_, err := newClient(t, echo.URL).AssumeRoleChained(context.Background(), from, chainRequest())
	if err == nil || !strings.Contains(err.Error(), "[session token]") || !strings.Contains(err.Error(), "[secret access key]") {
		t.Errorf("AssumeRoleChained() error = %v, want STS's message with the token and key redacted", err)
	}
	assertNoSecrets(t, err, from)
	var se *sts.Error
	if !errors.As(err, &se) || se.Code != "ValidationError" || se.Retryable() {
		t.Errorf("AssumeRoleChained() error = %v, want a terminal ValidationError", err)
	}
}

func TestInjectedFailure(t *testing.T) {
	srv := ststest.NewServer(t, ststest.Config{})
	srv.FailNext(ststest.AssumeRoleWithWebIdentity, 1, &ststest.Error{Status: http.StatusBadRequest, Code: "Throttling", Message: "Rate exceeded"})
	c := newClient(t, srv.URL)

	_, err := c.AssumeRole(context.Background(), request())
	var se *sts.Error
	if !errors.As(err, &se) || se.Code != "Throttling" || !se.Retryable() {
		t.Fatalf("AssumeRole() error = %v, want a retryable Throttling", err)
	}
	if _, err := c.AssumeRole(context.Background(), request()); err != nil {
		t.Errorf("AssumeRole() after the injected failure error = %v, want none", err)
	}
}
