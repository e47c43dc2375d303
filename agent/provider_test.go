package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/metadata"
)

const (
	testRoleARN      = "arn:aws:iam::123456789012:role/team/reader"
	testSecret       = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
	testSessionToken = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
	testWebToken     = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bnM6YXBwIn0.c2ln"
)

var testCaller = netip.MustParseAddr("10.0.0.5")

type stubPods struct {
	pod  pods.Pod
	err  error
	host map[types.UID]pods.Pod // hostNetwork pods by UID
}

func (s stubPods) Lookup(context.Context, netip.Addr) (pods.Pod, error) { return s.pod, s.err }

func (s stubPods) HostPod(_ context.Context, uid types.UID) (pods.Pod, error) {
	if p, ok := s.host[uid]; ok {
		return p, nil
	}
	return pods.Pod{}, pods.ErrNotFound
}

type stubRoles struct {
	role roles.Role
	err  error
}

func (s stubRoles) RoleFor(string, string) (roles.Role, error) { return s.role, s.err }

type stubCache struct {
	creds   creds.Credentials
	outcome creds.Outcome
	err     error
	added   func(creds.Request) // the real cache's Observer.Added: each Get has an entry by the time it answers

	mu   sync.Mutex
	reqs []creds.Request
}

func (s *stubCache) Get(_ context.Context, r creds.Request) (creds.Credentials, creds.Outcome, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r)
	s.mu.Unlock()
	if s.added != nil {
		s.added(r)
	}
	return s.creds, s.outcome, s.err
}

type classified struct {
	msg   string
	retry bool
}

func (e classified) Error() string   { return e.msg }
func (e classified) Retryable() bool { return e.retry }

var (
	testPod  = pods.Pod{UID: "uid-web", Namespace: "ns", Name: "web", ServiceAccount: "app", IPs: []netip.Addr{testCaller}}
	testRole = roles.Role{ARN: testRoleARN, Audience: "sts.amazonaws.com", Duration: time.Hour, Regional: true}
	issued   = time.Date(2026, 8, 20, 17, 0, 0, 0, time.UTC)
	served   = creds.Credentials{AccessKeyID: "ASIAIOSFODNN7EXAMPLE", SecretAccessKey: testSecret, SessionToken: testSessionToken,
		Expiration: issued.Add(time.Hour), Issued: issued, AccountID: "123456789012", SessionName: "ns.web@uidweb"}
)

// logBuffer is a JSON slog logger, at debug level, writing to a buffer the test can read.
func logBuffer() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func assertNoSecrets(t *testing.T, logs string) {
	t.Helper()
	for name, secret := range map[string]string{"secret access key": testSecret, "session token": testSessionToken, "web identity token": testWebToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log holds the %s:\n%s", name, logs)
		}
	}
}

func TestProviderCredentials(t *testing.T) {
	tests := []struct {
		name        string
		pods        stubPods
		roles       stubRoles
		cache       *stubCache
		dryRun      bool
		wantErr     error // a metadata sentinel; nil = success
		wantCause   error // also in the chain, when set
		wantGets    int
		wantOutcome string // iamlet_pod_credential_requests_total outcome counted, "" = none
	}{
		{name: "hit", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache: &stubCache{creds: served, outcome: creds.Hit}, wantGets: 1, wantOutcome: "hit"},
		{name: "miss", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache: &stubCache{creds: served, outcome: creds.Miss}, wantGets: 1, wantOutcome: "miss"},
		{name: "stale", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache: &stubCache{creds: served, outcome: creds.Stale}, wantGets: 1, wantOutcome: "stale"},
		{name: "unknown pod", pods: stubPods{err: pods.ErrNotFound}, cache: &stubCache{},
			wantErr: metadata.ErrUnknownCaller, wantCause: pods.ErrNotFound},
		{name: "ambiguous pod", pods: stubPods{err: pods.ErrAmbiguous}, cache: &stubCache{},
			wantErr: metadata.ErrUnknownCaller, wantCause: pods.ErrAmbiguous},
		{name: "host network", pods: stubPods{err: pods.ErrHostNetwork}, cache: &stubCache{},
			wantErr: metadata.ErrUnknownCaller, wantCause: pods.ErrHostNetwork},
		{name: "lookup cancelled", pods: stubPods{err: fmt.Errorf("waiting for 10.0.0.5 to appear: %w", context.Canceled)}, cache: &stubCache{},
			wantErr: metadata.ErrUnknownCaller, wantCause: context.Canceled},
		{name: "no role", pods: stubPods{pod: testPod}, roles: stubRoles{err: fmt.Errorf("%w: service account ns/app not found", roles.ErrNoRole)},
			cache: &stubCache{}, wantErr: metadata.ErrNoRole, wantCause: roles.ErrNoRole},
		{name: "not allowed", pods: stubPods{pod: testPod}, roles: stubRoles{err: fmt.Errorf("%w: not in the allow-list", roles.ErrNotAllowed)},
			cache: &stubCache{}, wantErr: metadata.ErrForbidden, wantCause: roles.ErrNotAllowed},
		{name: "invalid annotation", pods: stubPods{pod: testPod}, roles: stubRoles{err: fmt.Errorf("service account ns/app: %w", roles.ErrInvalid)},
			cache: &stubCache{}, wantErr: metadata.ErrForbidden, wantCause: roles.ErrInvalid},
		{name: "retryable fetch error", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache:   &stubCache{err: fmt.Errorf("%w: %w", creds.ErrUnavailable, classified{"sts Throttling: rate exceeded", true})},
			wantErr: metadata.ErrUnavailable, wantCause: creds.ErrUnavailable, wantGets: 1, wantOutcome: "error"},
		{name: "terminal fetch error", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache:   &stubCache{err: fmt.Errorf("%w: %w", creds.ErrUnavailable, classified{"sts AccessDenied: not authorized", false})},
			wantErr: metadata.ErrForbidden, wantCause: creds.ErrUnavailable, wantGets: 1, wantOutcome: "error"},
		{name: "unclassified fetch error", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache:   &stubCache{err: fmt.Errorf("%w: connection reset", creds.ErrUnavailable)},
			wantErr: metadata.ErrUnavailable, wantGets: 1, wantOutcome: "error"},
		{name: "caller gave up", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache:   &stubCache{err: context.DeadlineExceeded},
			wantErr: metadata.ErrUnavailable, wantCause: context.DeadlineExceeded, wantGets: 1, wantOutcome: "error"},
		{name: "dry run", pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole},
			cache: &stubCache{creds: served}, dryRun: true, wantErr: metadata.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, logs := logBuffer()
			m := newMetrics(prometheus.NewRegistry(), true)
			tt.cache.added = m.added
			p := &provider{pods: tt.pods, roles: tt.roles, cache: tt.cache, metrics: m, log: log, dryRun: tt.dryRun}
			got, err := p.Credentials(context.Background(), testCaller)
			defer func() {
				if t.Failed() {
					t.Logf("log:\n%s", logs)
				}
			}()
			assertNoSecrets(t, logs.String())
			if len(tt.cache.reqs) != tt.wantGets {
				t.Errorf("cache.Get calls = %d, want %d", len(tt.cache.reqs), tt.wantGets)
			}
			if tt.wantOutcome != "" {
				labels := append(labelsOf(requestFor(testPod, testRole)), tt.wantOutcome)
				if n := testutil.ToFloat64(m.podRequests.WithLabelValues(labels...)); n != 1 {
					t.Errorf("iamlet_pod_credential_requests_total{outcome=%q} = %v, want 1", tt.wantOutcome, n)
				}
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Credentials() error = %v, want %v", err, tt.wantErr)
				}
				if tt.wantCause != nil && !errors.Is(err, tt.wantCause) {
					t.Errorf("Credentials() error = %v, want %v in its chain", err, tt.wantCause)
				}
				for _, other := range []error{metadata.ErrUnknownCaller, metadata.ErrNoRole, metadata.ErrForbidden, metadata.ErrUnavailable} {
					if other != tt.wantErr && errors.Is(err, other) {
						t.Errorf("Credentials() error = %v, is also %v", err, other)
					}
				}
				if got != (metadata.Credentials{}) {
					t.Errorf("Credentials() = %+v with an error, want none", got)
				}
				// The request's one line: the metadata faces do not log the provider's refusals, so it carries their answer.
				lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
				var line struct {
					Msg, Outcome string
					Status       int
				}
				if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &line) != nil {
					t.Fatalf("log = %q, want one JSON line", lines)
				}
				wantMsg, wantOutcome := "refused", "refused"
				if tt.dryRun {
					wantMsg, wantOutcome = "dry run: would serve", "dry_run"
				}
				if line.Msg != wantMsg || line.Outcome != wantOutcome || line.Status != metadata.RefusalStatus(err) {
					t.Errorf("log line %+v, want msg %q, outcome %q, status %d", line, wantMsg, wantOutcome, metadata.RefusalStatus(err))
				}
				return
			}
			if err != nil {
				t.Fatalf("Credentials() error = %v", err)
			}
			want := metadata.Credentials{RoleName: "reader", AccessKeyID: served.AccessKeyID, SecretAccessKey: testSecret,
				SessionToken: testSessionToken, Expiration: served.Expiration, LastUpdated: issued, AccountID: "123456789012"}
			if got != want {
				t.Errorf("Credentials() = %+v, want %+v", got, want)
			}
			wantReq := creds.Request{PodUID: "uid-web", Namespace: "ns", Pod: "web", ServiceAccount: "app", RoleARN: testRoleARN,
				Audience: "sts.amazonaws.com", Duration: time.Hour, Regional: true}
			if !reflect.DeepEqual(tt.cache.reqs[0], wantReq) {
				t.Errorf("cache.Get(%+v), want %+v", tt.cache.reqs[0], wantReq)
			}
		})
	}
}

// TestCredentialPathLogsNoSecrets runs the real fetcher, cache and observer against a fake TokenRequest
// API and a fake STS that quotes the token back in its errors, and checks every log line they write.
func TestCredentialPathLogsNoSecrets(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		wantErr error
	}{
		{"issued then served", http.StatusOK, nil},
		{"sts refuses, quoting the token", http.StatusBadRequest, metadata.ErrForbidden},
		{"sts fails", http.StatusInternalServerError, metadata.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				w.Header().Set("Content-Type", "text/xml")
				w.WriteHeader(tt.status)
				if tt.status != http.StatusOK {
					_, _ = io.WriteString(w, `<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>Value '`+
						r.PostForm.Get("WebIdentityToken")+`' at 'webIdentityToken' failed to satisfy constraint</Message></Error></ErrorResponse>`)
					return
				}
				_, _ = io.WriteString(w, `<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/reader/ns.web</Arn><AssumedRoleId>AROA:ns.web</AssumedRoleId></AssumedRoleUser>
<Credentials><SessionToken>`+testSessionToken+`</SessionToken><SecretAccessKey>`+testSecret+`</SecretAccessKey>
<Expiration>`+time.Now().Add(time.Hour).UTC().Format(time.RFC3339)+`</Expiration><AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId></Credentials>
</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>`)
			}))
			defer srv.Close()
			stsClient, err := sts.New(sts.Config{Region: "eu-west-1", Endpoint: srv.URL})
			if err != nil {
				t.Fatalf("sts.New() error = %v", err)
			}
			kube := fake.NewClientset()
			kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
				tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
				tr.Status.Token = testWebToken
				return true, tr, nil
			})

			log, logs := logBuffer()
			m := newMetrics(prometheus.NewRegistry(), true)
			cache := creds.New(&fetcher{tokens: satoken.New(kubetest.Client{Interface: kube}, satoken.MinTTL), confined: func() error { return nil }, sts: stsClient, metrics: m},
				creds.Config{Observer: observer{metrics: m, log: log}})
			p := &provider{pods: stubPods{pod: testPod}, roles: stubRoles{role: testRole}, cache: cache, metrics: m, log: log}

			for range 2 { // a miss, then a hit (or an answer from backoff)
				got, err := p.Credentials(context.Background(), testCaller)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("Credentials() error = %v, want %v", err, tt.wantErr)
					}
					continue
				}
				if err != nil || got.SecretAccessKey != testSecret || got.RoleName != "reader" {
					t.Errorf("Credentials() = %+v, %v, want the issued credentials", got, err)
				}
			}
			out := logs.String()
			assertNoSecrets(t, out)
			if !strings.Contains(out, `"audit":true`) {
				t.Errorf("log has no audit line:\n%s", out)
			}
		})
	}
}

// TestNotMintingIsAskedAgainSoon: while the confinement check fails the agent mints nothing. That is its own state,
// not a refusal of the pod's token, even when the check failed on a Forbidden: the pod gets 503 not_minting, and is
// served on the short back-off once the check passes again, not after the minutes a refused token waits.
func TestNotMintingIsAskedAgainSoon(t *testing.T) {
	rig := newCredentialRig(t, map[string]string{roles.AnnotationRoleARN: testRoleARN})
	failed := fmt.Errorf("confinement check: %w", apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "node-1",
		errors.New("cannot impersonate:associated-node")))
	rig.unconfined.Store(&failed)
	if _, err := rig.serve(t); !errors.Is(err, metadata.ErrUnavailable) {
		t.Fatalf("Credentials() while not minting: error %v, want %v", err, metadata.ErrUnavailable)
	}
	if out := rig.logs.String(); !strings.Contains(out, `"reason":"not_minting"`) {
		t.Errorf("refusal not logged as not_minting:\n%s", out)
	}
	if n := rig.tokens.Load(); n != 0 {
		t.Errorf("%d tokens minted while the confinement check failed, want none", n)
	}

	rig.unconfined.Store(nil)
	rig.clock.Step(2 * time.Second) // past the first retryable back-off (under 1 s); a refused token waits 30 s or more
	if got, err := rig.serve(t); err != nil || got.SecretAccessKey == "" {
		t.Errorf("Credentials() 2 s after the check passed = %+v, %v, want the pod's credentials", got, err)
	}
}

// TestProviderIdentifiesHostCallersByCgroupOnly: a caller in the node's own network namespace is the hostNetwork pod
// its socket's cgroup names, never the pod its address (the node's) would find; one that names no live hostNetwork
// pod, or whose tracing failed, is refused; a node-trusted pod caught before its exemption is asked to retry.
func TestProviderIdentifiesHostCallersByCgroupOnly(t *testing.T) {
	shipper := pods.Pod{UID: "uid-shipper", Namespace: "logging", Name: "shipper", ServiceAccount: "shipper", HostNetwork: true}
	cni := pods.Pod{UID: "uid-cni", Namespace: "kube-system", Name: "aws-node", ServiceAccount: "aws-node", HostNetwork: true}
	byAddress := pods.Pod{UID: "uid-by-address", Namespace: "ns", Name: "by-address", ServiceAccount: "app"}
	for _, c := range []struct {
		name    string
		caller  hostCaller
		wantPod string
		wantErr error
	}{
		{"traced to a hostNetwork pod", hostCaller{uid: "uid-shipper"}, "shipper", nil},
		{"traced to no live hostNetwork pod", hostCaller{uid: "uid-gone"}, "", metadata.ErrUnknownCaller},
		{"not traced", hostCaller{err: errors.New("sock_diag: no such socket")}, "", metadata.ErrUnknownCaller},
		{"a node-trusted pod not yet exempted", hostCaller{uid: "uid-cni"}, "", metadata.ErrUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			log, _ := logBuffer()
			cache := &stubCache{creds: served, outcome: creds.Hit}
			p := &provider{pods: stubPods{pod: byAddress, host: map[types.UID]pods.Pod{"uid-shipper": shipper, "uid-cni": cni}},
				roles: stubRoles{role: testRole}, cache: cache, metrics: newMetrics(prometheus.NewRegistry(), true), log: log,
				trusted: trustList{"kube-system/aws-node"}.trusts}
			ctx := identifyHostCallers(stubTracer(c.caller))(context.Background(), &redirectedConn{Conn: stubConn{}, dst: netip.MustParseAddrPort("169.254.169.254:80")})
			_, err := p.Credentials(ctx, testCaller)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("error = %v, want %v", err, c.wantErr)
				}
				if len(cache.reqs) != 0 {
					t.Errorf("a refused caller reached the cache: %+v", cache.reqs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cache.reqs) != 1 || cache.reqs[0].Pod != c.wantPod {
				t.Errorf("credentials asked for %+v, want pod %s (never the pod at the node's address)", cache.reqs, c.wantPod)
			}
		})
	}
}

// TestParseTrustList: node-trusted pods are namespace/serviceaccount pairs.
func TestParseTrustList(t *testing.T) {
	got, err := parseTrustList(" kube-system/aws-node, ,monitoring/node-exporter")
	if err != nil || len(got) != 2 || !got.trusts(pods.Pod{Namespace: "kube-system", ServiceAccount: "aws-node"}) ||
		got.trusts(pods.Pod{Namespace: "kube-system", ServiceAccount: "kube-proxy"}) {
		t.Errorf("parseTrustList = %v, %v", got, err)
	}
	for _, bad := range []string{"aws-node", "kube-system/", "/aws-node", "a/b/c"} {
		if _, err := parseTrustList(bad); err == nil {
			t.Errorf("parseTrustList(%q) accepted", bad)
		}
	}
}

// stubTracer answers every trace with one hostCaller.
type stubTracer hostCaller

func (s stubTracer) PodOf(netip.AddrPort, netip.AddrPort) (types.UID, error) { return s.uid, s.err }

// stubConn is a connection from the node's address.
type stubConn struct{ net.Conn }

func (stubConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 40000} }

// TestHostCallersAreTracedThroughTheListeners: the trace reaches the redirected connection under the listeners'
// wrappers; a connection that was not redirected is refused, never traced; hostNetwork callers take turns in the rate
// limiter by pod, not by the node's address they all share.
func TestHostCallersAreTracedThroughTheListeners(t *testing.T) {
	identify := identifyHostCallers(stubTracer{uid: "uid-shipper"})
	table := newConnTable(8, 0, newLimitMetrics(prometheus.NewRegistry()))
	wrapped := table.admit(&redirectedConn{Conn: stubConn{}, dst: netip.MustParseAddrPort("169.254.169.254:80")})
	hc, ok := hostCallerOf(identify(context.Background(), wrapped))
	if !ok || hc.err != nil || hc.uid != "uid-shipper" {
		t.Errorf("traced through the limiter: %+v, %v; want uid-shipper", hc, ok)
	}
	if hc, _ := hostCallerOf(identify(context.Background(), stubConn{})); hc.err == nil {
		t.Errorf("a connection that was not redirected was traced to %q", hc.uid)
	}
	r := httptest.NewRequestWithContext(identify(context.Background(), wrapped), http.MethodGet, "/", nil)
	r.RemoteAddr = "10.0.0.1:40000"
	if got := rateKey(r); got != "pod/uid-shipper" {
		t.Errorf("rate key of a hostNetwork caller = %q, want its pod's", got)
	}
	if got := tokenScope(r); got != "pod/uid-shipper" {
		t.Errorf("token scope of a hostNetwork caller = %q, want its pod's", got)
	}
	untraced := httptest.NewRequestWithContext(identify(context.Background(), stubConn{}), http.MethodGet, "/", nil)
	if got := tokenScope(untraced); got == "" || strings.HasPrefix(got, "pod/") {
		t.Errorf("token scope of an untraced host caller = %q, want one of its own", got)
	}
	r = httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.0.0.5:40000"
	if got := rateKey(r); got != "10.0.0.5" {
		t.Errorf("rate key of a pod = %q, want its address", got)
	}
	if got := tokenScope(r); got != "" {
		t.Errorf("token scope of a pod = %q, want none (its address alone)", got)
	}
}

// TestProviderNamesWhoRefused: a token the apiserver refuses is reported as token_refused, not as STS's refusal; one
// it may still grant, as unavailable. The apiserver refusing the agent's watch of pods or of ServiceAccounts and
// Namespaces is no fault of the pod's: unavailable (it asks again), each with its own reason.
func TestProviderNamesWhoRefused(t *testing.T) {
	gr := schema.GroupResource{Resource: "serviceaccounts/token"}
	forbidden := apierrors.NewForbidden(gr, "app",
		errors.New("ValidatingAdmissionPolicy 'iamlet-token-requests' denied request: iamlet may only request tokens for the audiences sts.amazonaws.com"))
	lagging := apierrors.NewForbidden(gr, "app", errors.New("no relationship found between node 'node-1' and this object"))
	watchRefused := fmt.Errorf("%w of ServiceAccounts: %w", kube.ErrRefused,
		apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "", errors.New("cannot list")))
	for _, c := range []struct {
		name                     string
		podsErr, rolesErr, cache error
		want                     error
		reason                   string
	}{
		{"token policy", nil, nil, &satoken.Error{Err: forbidden}, metadata.ErrForbidden, `"reason":"token_refused"`},
		{"node authorizer lagging", nil, nil, &satoken.Error{Err: lagging}, metadata.ErrUnavailable, `"reason":"unavailable"`},
		{"STS", nil, nil, classified{msg: "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity"}, metadata.ErrForbidden, `"reason":"sts_refused"`},
		{"pods watch", kube.ErrRefused, nil, nil, metadata.ErrUnavailable, `"reason":"pods_refused"`},
		{"ServiceAccounts watch", nil, watchRefused, nil, metadata.ErrUnavailable, `"reason":"roles_refused"`},
		{"pods watch unanswered", fmt.Errorf("%w of this node's pods for 31s", kube.ErrUnanswered), nil, nil, metadata.ErrUnavailable, `"reason":"pods_unanswered"`},
		{"Namespaces watch unanswered", nil, fmt.Errorf("%w of Namespaces for 31s", kube.ErrUnanswered), nil, metadata.ErrUnavailable, `"reason":"roles_unanswered"`},
		{"allow-list", nil, roles.ErrNotAllowed, nil, metadata.ErrForbidden, `"reason":"not_allowed"`},
		// The confinement check failing is the agent's state: a Forbidden inside it is no refusal of the pod's token.
		{"not minting", nil, nil, fmt.Errorf("%w: %w", creds.ErrUnavailable, notMinting{forbidden}), metadata.ErrUnavailable, `"reason":"not_minting"`},
	} {
		log, buf := logBuffer()
		p := &provider{pods: stubPods{pod: testPod, err: c.podsErr}, roles: stubRoles{role: testRole, err: c.rolesErr},
			cache: &stubCache{creds: served, err: c.cache}, metrics: newMetrics(prometheus.NewRegistry(), true), log: log}
		if _, err := p.Credentials(context.Background(), testCaller); !errors.Is(err, c.want) {
			t.Errorf("%s: error %v, want %v", c.name, err, c.want)
		}
		if !strings.Contains(buf.String(), c.reason) {
			t.Errorf("%s: log lacks %s:\n%s", c.name, c.reason, buf.String())
		}
	}
}
