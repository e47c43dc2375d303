package metadata

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	v1aws "github.com/aws/aws-sdk-go/aws"
	v1ec2rolecreds "github.com/aws/aws-sdk-go/aws/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go/aws/ec2metadata"
	v1session "github.com/aws/aws-sdk-go/aws/session"
)

// recorder sits between the SDK and the handler: it records what the SDK sent and what it got, and can refuse the
// token PUT the way a v1-only IMDS would.
type recorder struct {
	next      http.Handler
	refusePUT int // 0 = pass the PUT on

	mu       sync.Mutex
	requests []recorded
}

type recorded struct {
	method, path string
	token        bool
	status       int
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w, status: 200}
	if r.Method == http.MethodPut && rc.refusePUT != 0 {
		sw.WriteHeader(rc.refusePUT)
	} else {
		rc.next.ServeHTTP(sw, r)
	}
	rc.mu.Lock()
	rc.requests = append(rc.requests, recorded{r.Method, r.URL.Path, r.Header.Get(headerToken) != "", sw.status})
	rc.mu.Unlock()
}

func (rc *recorder) count(match func(recorded) bool) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, r := range rc.requests {
		if match(r) {
			n++
		}
	}
	return n
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// sdkEnv runs the handler on a real server with credentials valid by the wall clock, which the SDKs use.
func sdkEnv(t *testing.T, refusePUT int, mod func(*Config)) (*testEnv, *recorder, *httptest.Server) {
	t.Helper()
	e := newTestEnv(t, mod)
	now := time.Now()
	e.clock.Set(now)
	c := podCredentials()
	c.LastUpdated, c.Expiration = now, now.Add(6*time.Hour)
	e.prov.set("127.0.0.1", c)
	rc := &recorder{next: e.h, refusePUT: refusePUT}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return e, rc, srv
}

func retrieveV2(t *testing.T, client *imds.Client) (aws.Credentials, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return ec2rolecreds.New(func(o *ec2rolecreds.Options) { o.Client = client }).Retrieve(ctx)
}

func checkPodCredentials(t *testing.T, got aws.Credentials) {
	t.Helper()
	want := podCredentials()
	if got.AccessKeyID != want.AccessKeyID || got.SecretAccessKey != want.SecretAccessKey || got.SessionToken != want.SessionToken {
		t.Errorf("SDK credentials = %q/%q/%q, want %q/%q/%q", got.AccessKeyID, got.SecretAccessKey, got.SessionToken,
			want.AccessKeyID, want.SecretAccessKey, want.SessionToken)
	}
	if !got.CanExpire || got.Expires.IsZero() {
		t.Errorf("SDK credentials: CanExpire %v Expires %v, want an expiry", got.CanExpire, got.Expires)
	}
}

func TestSDKv2IMDSv2(t *testing.T) {
	_, rc, srv := sdkEnv(t, 0, func(c *Config) { c.RequireV2 = true })
	creds, err := retrieveV2(t, imds.New(imds.Options{Endpoint: srv.URL}))
	if err != nil {
		t.Fatalf("ec2rolecreds.Retrieve: %v", err)
	}
	checkPodCredentials(t, creds)
	if n := rc.count(func(r recorded) bool { return r.method == http.MethodPut && r.status == 200 }); n != 1 {
		t.Errorf("token PUTs = %d, want 1", n)
	}
	if n := rc.count(func(r recorded) bool { return r.method == http.MethodGet && !r.token }); n != 0 {
		t.Errorf("GETs without a token = %d, want 0", n)
	}
}

func TestSDKv2FallsBackToV1(t *testing.T) {
	_, rc, srv := sdkEnv(t, http.StatusForbidden, nil)
	creds, err := retrieveV2(t, imds.New(imds.Options{Endpoint: srv.URL}))
	if err != nil {
		t.Fatalf("ec2rolecreds.Retrieve with the token PUT refused: %v", err)
	}
	checkPodCredentials(t, creds)
	if n := rc.count(func(r recorded) bool { return r.method == http.MethodGet && !r.token && r.status == 200 }); n != 2 {
		t.Errorf("v1 GETs served = %d, want 2 (listing, document)", n)
	}
}

func TestSDKv2RequireV2RefusesV1(t *testing.T) {
	_, _, srv := sdkEnv(t, http.StatusForbidden, func(c *Config) { c.RequireV2 = true })
	if _, err := retrieveV2(t, imds.New(imds.Options{Endpoint: srv.URL})); err == nil {
		t.Fatal("ec2rolecreds.Retrieve over v1 with RequireV2 = nil error, want an error")
	}
}

func TestSDKv2V1Disabled(t *testing.T) {
	// AWS_EC2_METADATA_V1_DISABLED=true: with our PUT working, nothing changes.
	_, _, srv := sdkEnv(t, 0, nil)
	creds, err := retrieveV2(t, imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary}))
	if err != nil {
		t.Fatalf("ec2rolecreds.Retrieve with v1 disabled: %v", err)
	}
	checkPodCredentials(t, creds)
}

// TestSDKv2TokenExpiresMidSession: the SDK still holds a token we consider expired; it gets a 401, fetches a new
// token and succeeds.
func TestSDKv2TokenExpiresMidSession(t *testing.T) {
	e, rc, srv := sdkEnv(t, 0, nil)
	client := imds.New(imds.Options{Endpoint: srv.URL})
	if _, err := retrieveV2(t, client); err != nil {
		t.Fatalf("first Retrieve: %v", err)
	}
	e.clock.Advance(10 * time.Minute) // past the SDK's 300 s token; the SDK's own clock has not moved
	e.prov.set("127.0.0.1", func() Credentials {
		c := podCredentials()
		c.LastUpdated, c.Expiration = e.clock.Now(), e.clock.Now().Add(6*time.Hour)
		return c
	}())
	creds, err := retrieveV2(t, client)
	if err != nil {
		t.Fatalf("Retrieve after the token expired: %v", err)
	}
	checkPodCredentials(t, creds)
	if n := rc.count(func(r recorded) bool { return r.status == http.StatusUnauthorized }); n != 1 {
		t.Errorf("401s = %d, want 1", n)
	}
	if n := rc.count(func(r recorded) bool { return r.method == http.MethodPut }); n != 2 {
		t.Errorf("token PUTs = %d, want 2", n)
	}
}

func TestSDKv2NodeFacts(t *testing.T) {
	_, _, srv := sdkEnv(t, 0, nil)
	client := imds.New(imds.Options{Endpoint: srv.URL})
	ctx := context.Background()

	region, err := client.GetRegion(ctx, nil)
	if err != nil || region.Region != "eu-west-1" {
		t.Errorf("GetRegion = %+v, %v; want eu-west-1", region, err)
	}
	doc, err := client.GetInstanceIdentityDocument(ctx, nil)
	if err != nil {
		t.Fatalf("GetInstanceIdentityDocument: %v", err)
	}
	if doc.Region != "eu-west-1" || doc.InstanceID != "i-0123456789abcdef0" || doc.AccountID != "111122223333" || !doc.PendingTime.IsZero() {
		t.Errorf("GetInstanceIdentityDocument = %+v", doc.InstanceIdentityDocument)
	}
	for path, want := range map[string]string{
		"placement/availability-zone/": "eu-west-1b",
		"instance-id":                  "i-0123456789abcdef0",
	} {
		out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			t.Errorf("GetMetadata(%q): %v", path, err)
			continue
		}
		b, err := io.ReadAll(out.Content)
		out.Content.Close()
		if err != nil || string(b) != want {
			t.Errorf("GetMetadata(%q) = %q, %v; want %q", path, b, err, want)
		}
	}
	if _, err := client.GetUserData(ctx, nil); err == nil {
		t.Error("GetUserData = nil error, want refused")
	}
	if _, err := client.GetIAMInfo(ctx, nil); err == nil {
		t.Error("GetIAMInfo = nil error, want refused")
	}
	if _, err := client.GetDynamicData(ctx, &imds.GetDynamicDataInput{Path: "instance-identity/pkcs7"}); err == nil {
		t.Error("GetDynamicData(instance-identity/pkcs7) = nil error, want refused")
	}
}

func TestSDKv1(t *testing.T) {
	for _, refuse := range []int{0, http.StatusForbidden} {
		_, rc, srv := sdkEnv(t, refuse, nil)
		sess, err := v1session.NewSession(&v1aws.Config{Region: v1aws.String("eu-west-1")})
		if err != nil {
			t.Fatalf("session.NewSession: %v", err)
		}
		client := ec2metadata.New(sess, &v1aws.Config{Endpoint: v1aws.String(srv.URL)})
		got, err := v1ec2rolecreds.NewCredentialsWithClient(client).Get()
		if err != nil {
			t.Fatalf("aws-sdk-go ec2rolecreds (PUT refused with %d): %v", refuse, err)
		}
		want := podCredentials()
		if got.AccessKeyID != want.AccessKeyID || got.SessionToken != want.SessionToken {
			t.Errorf("aws-sdk-go ec2rolecreds = %q/%q, want %q/%q", got.AccessKeyID, got.SessionToken, want.AccessKeyID, want.SessionToken)
		}
		tokens := rc.count(func(r recorded) bool { return r.method == http.MethodGet && r.token })
		if (refuse == 0) != (tokens > 0) {
			t.Errorf("aws-sdk-go (PUT refused with %d): GETs with a token = %d", refuse, tokens)
		}
	}
}

func TestSDKv2ContainerEndpoint(t *testing.T) {
	verifier := verifierFunc(func(_ context.Context, _ netip.Addr, token string) error {
		if token != "pod-identity-token" {
			return ErrForbidden
		}
		return nil
	})
	prov := newFakeProvider()
	now := time.Now()
	c := podCredentials()
	c.LastUpdated, c.Expiration = now, now.Add(6*time.Hour)
	prov.set("127.0.0.1", c)
	h, err := NewContainerHandler(ContainerConfig{Verifier: verifier}, prov, nil)
	if err != nil {
		t.Fatalf("NewContainerHandler: %v", err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	got, err := endpointcreds.New(srv.URL+DefaultContainerPath, func(o *endpointcreds.Options) {
		o.AuthorizationToken = "pod-identity-token"
	}).Retrieve(ctx)
	if err != nil {
		t.Fatalf("endpointcreds.Retrieve: %v", err)
	}
	if got.AccessKeyID != c.AccessKeyID || got.SecretAccessKey != c.SecretAccessKey || got.SessionToken != c.SessionToken ||
		got.AccountID != c.AccountID || !got.Expires.Equal(c.Expiration.Truncate(time.Second)) {
		t.Errorf("endpointcreds.Retrieve = %+v, want %+v", got, c)
	}
	for _, token := range []string{"", "someone-else"} {
		_, err := endpointcreds.New(srv.URL+DefaultContainerPath, func(o *endpointcreds.Options) {
			o.AuthorizationToken = token
		}).Retrieve(ctx)
		if err == nil {
			t.Errorf("endpointcreds.Retrieve with token %q = nil error, want refused", token)
		}
	}
}
