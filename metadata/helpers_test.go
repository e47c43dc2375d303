package metadata

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	testNow = time.Date(2026, 8, 20, 17, 0, 0, 0, time.UTC)
	testKey = []byte("0123456789abcdef0123456789abcdef")
)

const (
	podAddr      = "10.0.0.5"
	otherPodAddr = "10.0.0.6"
	strangerAddr = "10.0.0.99"
	podRole      = "pod-role"
	nodeRole     = "node-role"
	leakMarker   = "NODEROLEAKID_MUST_NOT_LEAK"
)

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: testNow} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func podCredentials() Credentials {
	return Credentials{
		RoleName:        podRole,
		AccessKeyID:     "ASIAPODEXAMPLE00001",
		SecretAccessKey: "pod/secret+key=EXAMPLE",
		SessionToken:    "FwoGZXIvYXdzEPOD//////////session+token=",
		LastUpdated:     testNow,
		Expiration:      testNow.Add(6 * time.Hour),
		AccountID:       "123456789012",
	}
}

// fakeProvider answers for podAddr and both loopback addresses (httptest's callers) with podCredentials, for
// otherPodAddr with another role, and ErrUnknownCaller for everyone else, unless err is set.
type fakeProvider struct {
	mu    sync.Mutex
	creds map[netip.Addr]Credentials
	err   error
	calls int
}

func newFakeProvider() *fakeProvider {
	pod := podCredentials()
	other := podCredentials()
	other.RoleName, other.AccessKeyID = "Other-Role", "ASIAOTHEREXAMPLE0001"
	return &fakeProvider{creds: map[netip.Addr]Credentials{
		netip.MustParseAddr(podAddr):      pod,
		netip.MustParseAddr("127.0.0.1"):  pod,
		netip.MustParseAddr("::1"):        pod,
		netip.MustParseAddr(otherPodAddr): other,
	}}
}

func (p *fakeProvider) Credentials(_ context.Context, caller netip.Addr) (Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.err != nil {
		return Credentials{}, p.err
	}
	c, ok := p.creds[caller]
	if !ok {
		return Credentials{}, fmt.Errorf("%w: %s", ErrUnknownCaller, caller)
	}
	return c, nil
}

func (p *fakeProvider) set(caller string, c Credentials) {
	p.mu.Lock()
	p.creds[netip.MustParseAddr(caller)] = c
	p.mu.Unlock()
}

func (p *fakeProvider) fail(err error) {
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
}

type testEnv struct {
	h     *Handler
	clock *fakeClock
	prov  *fakeProvider
	reg   *prometheus.Registry
}

// newTestEnv builds a Handler with static node facts, a fake clock and provider; mod adjusts the config.
func newTestEnv(t testing.TB, mod func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{clock: newFakeClock(), prov: newFakeProvider(), reg: prometheus.NewRegistry()}
	cfg := Config{
		TokenKey: testKey,
		Node: NodeFacts{
			Region: "eu-west-1", AvailabilityZone: "eu-west-1b", InstanceID: "i-0123456789abcdef0",
			InstanceType: "m7g.large", AccountID: "111122223333", PrivateIP: "10.0.1.17", ImageID: "ami-0abcdef1234567890",
		},
		Clock: e.clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg, e.prov, e.reg)
	if err != nil {
		t.Fatalf("NewHandler: %v", err)
	}
	e.h = h
	return e
}

// do sends one request straight to the handler from caller (an IP).
func (e *testEnv) do(t testing.TB, method, target, caller string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	return serve(t, e.h, method, target, caller, header)
}

func serve(t testing.TB, h http.Handler, method, target, caller string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = net.JoinHostPort(caller, "41234")
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// token mints a token for caller valid for ttl seconds through the handler's own PUT.
func (e *testEnv) token(t testing.TB, caller string, ttl int) string {
	t.Helper()
	w := e.do(t, http.MethodPut, pathToken, caller, http.Header{headerTokenTTL: {fmt.Sprint(ttl)}})
	if w.Code != http.StatusOK {
		t.Fatalf("PUT %s from %s = %d, want 200", pathToken, caller, w.Code)
	}
	return w.Body.String()
}

// rawRequest writes req verbatim to addr (so the request target reaches the server exactly as spelled) and reads
// one response.
func rawRequest(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLine(req), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %q: %v", firstLine(req), err)
	}
	return resp, string(body)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

// fakeNodeIMDS plays the node's real IMDS: it answers every path it is asked for with leakMarker (so a leak is
// visible wherever it surfaces) and records what it was asked.
type fakeNodeIMDS struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []string // "METHOD request-URI"
	status   int      // for GETs; 0 = 200
	putCode  int      // for the token PUT; 0 = 200
	doc      string   // identity document body; "" = a JSON document carrying the marker
	tokens   int
}

func newFakeNodeIMDS(t testing.TB) *fakeNodeIMDS {
	t.Helper()
	f := &fakeNodeIMDS{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeNodeIMDS) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.RequestURI)
	if r.Method == http.MethodPut {
		if f.putCode != 0 {
			w.WriteHeader(f.putCode)
			return
		}
		f.tokens++
		w.Header().Set(headerTokenTTL, r.Header.Get(headerTokenTTL))
		fmt.Fprintf(w, "%s-upstream-token-%d", leakMarker, f.tokens)
		return
	}
	if f.status != 0 && f.status != http.StatusOK {
		w.WriteHeader(f.status)
		io.WriteString(w, leakMarker)
		return
	}
	if r.URL.Path == pathIdentityDoc {
		doc := f.doc
		if doc == "" {
			doc = `{"accountId":"111122223333","instanceId":"` + leakMarker + `","region":"eu-west-1","pendingTime":""}`
		}
		io.WriteString(w, doc)
		return
	}
	io.WriteString(w, leakMarker)
}

func (f *fakeNodeIMDS) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *fakeNodeIMDS) set(fn func(*fakeNodeIMDS)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// canonicalUpstreamRequests is everything the node's IMDS may ever be asked.
func canonicalUpstreamRequests() map[string]bool {
	m := map[string]bool{http.MethodPut + " " + pathToken: true}
	for f := factNone + 1; f < numFacts; f++ {
		m[http.MethodGet+" "+f.canonicalPath()] = true
	}
	return m
}

// assertUpstreamCanonical fails if the node's IMDS was ever asked anything off the allow-list.
func assertUpstreamCanonical(t testing.TB, f *fakeNodeIMDS) {
	t.Helper()
	allowed := canonicalUpstreamRequests()
	for _, r := range f.seen() {
		if !allowed[r] {
			t.Errorf("node IMDS received %q, which is not on the canonical allow-list", r)
		}
	}
}
