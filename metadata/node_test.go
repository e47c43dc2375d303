package metadata

import (
	"context"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestStaticNodeFacts(t *testing.T) {
	e := newTestEnv(t, nil)
	tests := []struct {
		target string
		want   int
		body   string
	}{
		{"/latest/meta-data", 200, listingMetaData},
		{"/latest/meta-data/", 200, listingMetaData},
		{"/latest/meta-data/iam/", 200, "security-credentials/"},
		{"/latest/meta-data/placement/", 200, listingPlacement},
		{"/latest/meta-data/instance-id", 200, "i-0123456789abcdef0"},
		{"/latest/meta-data/instance-type", 200, "m7g.large"},
		{"/latest/meta-data/ami-id", 200, "ami-0abcdef1234567890"},
		{"/latest/meta-data/local-ipv4", 200, "10.0.1.17"},
		{"/latest/meta-data/placement/region", 200, "eu-west-1"},
		{"/latest/meta-data/placement/availability-zone", 200, "eu-west-1b"},
		{"/latest/meta-data/placement/availability-zone/", 200, "eu-west-1b"},
		{"/latest/meta-data/placement/availability-zone-id", 404, ""}, // not in NodeFacts
	}
	for _, tt := range tests {
		w := e.do(t, http.MethodGet, tt.target, podAddr, nil)
		if w.Code != tt.want || (tt.want == 200 && w.Body.String() != tt.body) {
			t.Errorf("GET %q = %d %q, want %d %q", tt.target, w.Code, w.Body.String(), tt.want, tt.body)
		}
	}
	// Every entry in the index is itself served.
	for _, entry := range strings.Split(listingMetaData, "\n") {
		target := "/latest/meta-data/" + entry
		if w := e.do(t, http.MethodGet, target, podAddr, nil); w.Code != 200 {
			t.Errorf("GET %q (listed in the index) = %d, want 200", target, w.Code)
		}
	}

	w := e.do(t, http.MethodGet, pathIdentityDoc, podAddr, nil)
	if w.Code != 200 {
		t.Fatalf("GET %q = %d, want 200", pathIdentityDoc, w.Code)
	}
	var doc map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("identity document %q: %v", w.Body.String(), err)
	}
	want := map[string]any{
		"accountId": "111122223333", "architecture": ec2Architecture(runtime.GOARCH), "availabilityZone": "eu-west-1b",
		"imageId": "ami-0abcdef1234567890", "instanceId": "i-0123456789abcdef0", "instanceType": "m7g.large",
		"privateIp": "10.0.1.17", "region": "eu-west-1", "version": "2017-09-30",
	}
	if len(doc) != len(want) {
		t.Errorf("identity document = %v, want exactly %v", doc, want)
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("identity document %s = %v, want %v", k, doc[k], v)
		}
	}
}

func TestStaticNodeFactsEmpty(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Node = NodeFacts{} })
	for f := factNone + 1; f < numFacts; f++ {
		if w := e.do(t, http.MethodGet, f.canonicalPath(), podAddr, nil); w.Code != 404 {
			t.Errorf("GET %q with no node facts = %d, want 404", f.canonicalPath(), w.Code)
		}
	}
}

func TestUpstreamNodeFacts(t *testing.T) {
	node := newFakeNodeIMDS(t)
	node.set(func(f *fakeNodeIMDS) {
		f.doc = `{"accountId":"111122223333","architecture":"arm64","availabilityZone":"eu-west-1b",` +
			`"billingProducts":null,"devpayProductCodes":null,"imageId":"ami-1","instanceId":"i-1",` +
			`"instanceType":"m7g.large","kernelId":null,"pendingTime":"2026-08-01T10:00:00Z",` +
			`"privateIp":"10.0.1.17","ramdiskId":null,"region":"","version":"2017-09-30"}`
	})
	e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL + "/" })

	w := e.do(t, http.MethodGet, pathIdentityDoc, podAddr, nil)
	var doc map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &doc); w.Code != 200 || err != nil {
		t.Fatalf("GET %q = %d %q (%v), want a JSON document", pathIdentityDoc, w.Code, w.Body.String(), err)
	}
	if doc["region"] != "eu-west-1" {
		t.Errorf("identity document region = %v, want the static fallback eu-west-1", doc["region"])
	}
	if doc["pendingTime"] != "2026-08-01T10:00:00Z" {
		t.Errorf("identity document pendingTime = %v, want it passed through", doc["pendingTime"])
	}
	for _, k := range []string{"billingProducts", "kernelId", "ramdiskId", "devpayProductCodes"} {
		if _, ok := doc[k]; ok {
			t.Errorf("identity document kept %q, want only the allow-listed fields", k)
		}
	}

	// A pendingTime the SDK cannot parse is dropped, never served as "".
	node.set(func(f *fakeNodeIMDS) { f.doc = `{"region":"eu-west-1","pendingTime":""}` })
	e2 := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
	w = e2.do(t, http.MethodGet, pathIdentityDoc, podAddr, nil)
	if strings.Contains(w.Body.String(), "pendingTime") {
		t.Errorf("identity document %q carries an empty pendingTime", w.Body.String())
	}
	assertUpstreamCanonical(t, node)
}

func TestUpstreamCacheAndFallback(t *testing.T) {
	node := newFakeNodeIMDS(t)
	e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
	get := func(target string) (int, string) {
		t.Helper()
		w := e.do(t, http.MethodGet, target, podAddr, nil)
		return w.Code, w.Body.String()
	}
	gets := func() int { return node.count(http.MethodGet) }

	if code, _ := get(pathInstanceID); code != 200 {
		t.Fatalf("GET %q = %d, want 200", pathInstanceID, code)
	}
	get(pathInstanceID)
	if n := gets(); n != 1 {
		t.Errorf("node IMDS GETs after two requests = %d, want 1 (cached)", n)
	}

	// The node's IMDS goes away: the cached value is served past its lifetime rather than nothing.
	node.set(func(f *fakeNodeIMDS) { f.status = http.StatusInternalServerError })
	e.clock.Advance(nodeFactTTL + time.Second)
	if code, body := get(pathInstanceID); code != 200 || body != leakMarker {
		t.Errorf("GET %q with the node IMDS failing and a stale value = %d %q, want 200 with the stale value", pathInstanceID, code, body)
	}
	before := gets()
	get(pathInstanceID)
	if n := gets() - before; n != 0 {
		t.Errorf("node IMDS GETs right after a failure = %d, want 0 (stale value kept for %v)", n, staleRetry)
	}
	// Never fetched: 503, except the region, which has a static fallback.
	if code, body := get(pathInstanceType); code != 503 || !strings.Contains(body, "node metadata temporarily unavailable") {
		t.Errorf("GET %q with the node IMDS failing = %d %q, want 503 saying node metadata, not credentials, is unavailable", pathInstanceType, code, body)
	}
	if code, body := get(pathRegion); code != 200 || body != "eu-west-1" {
		t.Errorf("GET %q with the node IMDS failing = %d %q, want 200 eu-west-1", pathRegion, code, body)
	}

	// A fact the node does not have is 404 (and cached).
	node.set(func(f *fakeNodeIMDS) { f.status = http.StatusNotFound })
	if code, _ := get(pathAZID); code != 404 {
		t.Errorf("GET %q the node lacks = %d, want 404", pathAZID, code)
	}
	assertUpstreamCanonical(t, node)
}

// TestIdentityDocumentFallbackNamesOnlyWhatIsKnown: with the node's IMDS failing before it ever answered, the
// document carries the agent's region, and no instance, account or address it does not know, not even as "".
func TestIdentityDocumentFallbackNamesOnlyWhatIsKnown(t *testing.T) {
	node := newFakeNodeIMDS(t)
	node.set(func(f *fakeNodeIMDS) { f.status = http.StatusInternalServerError })
	e := newTestEnv(t, func(c *Config) { c.Upstream, c.Node = node.srv.URL, NodeFacts{Region: "eu-west-1"} })
	w := e.do(t, http.MethodGet, pathIdentityDoc, podAddr, nil)
	var doc map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &doc); w.Code != http.StatusOK || err != nil {
		t.Fatalf("GET %q with the node IMDS failing = %d %q (%v), want 200 and a document", pathIdentityDoc, w.Code, w.Body, err)
	}
	if doc["region"] != "eu-west-1" {
		t.Errorf("document region = %v, want eu-west-1", doc["region"])
	}
	for _, k := range []string{"accountId", "availabilityZone", "imageId", "instanceId", "instanceType", "privateIp"} {
		if v, ok := doc[k]; ok {
			t.Errorf("document names %s = %q, which the agent does not know", k, v)
		}
	}
}

func TestUpstreamTokenHandling(t *testing.T) {
	t.Run("v1 only node IMDS", func(t *testing.T) {
		node := newFakeNodeIMDS(t)
		node.set(func(f *fakeNodeIMDS) { f.putCode = http.StatusForbidden })
		e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
		if w := e.do(t, http.MethodGet, pathInstanceID, podAddr, nil); w.Code != 200 {
			t.Errorf("GET %q behind a v1-only node IMDS = %d, want 200", pathInstanceID, w.Code)
		}
		assertUpstreamCanonical(t, node)
	})
	t.Run("token expires", func(t *testing.T) {
		node := newFakeNodeIMDS(t)
		e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
		e.do(t, http.MethodGet, pathInstanceID, podAddr, nil)
		e.clock.Advance(upstreamTokenTTL * time.Second)
		e.do(t, http.MethodGet, pathInstanceType, podAddr, nil)
		if puts := node.count(http.MethodPut); puts != 2 {
			t.Errorf("token PUTs across a token lifetime = %d, want 2", puts)
		}
	})
}

func TestNewHandlerConfig(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"short key", func(c *Config) { c.TokenKey = make([]byte, 31) }},
		{"upstream with path", func(c *Config) { c.Upstream = "http://169.254.169.254/latest" }},
		{"upstream with query", func(c *Config) { c.Upstream = "http://169.254.169.254?x" }},
		{"upstream not http", func(c *Config) { c.Upstream = "file:///etc/passwd" }},
		{"upstream no host", func(c *Config) { c.Upstream = "http://" }},
	}
	for _, tt := range tests {
		cfg := Config{TokenKey: testKey}
		tt.mod(&cfg)
		if _, err := NewHandler(cfg, newFakeProvider(), nil); err == nil {
			t.Errorf("NewHandler(%s) = nil error, want an error", tt.name)
		}
	}
	if _, err := NewHandler(Config{TokenKey: testKey}, nil, nil); err == nil {
		t.Error("NewHandler(nil provider) = nil error, want an error")
	}
}

// TestNodeClientRegion: the agent's region lookup reads the region through the same client, and the same allow-list,
// as the node facts.
func TestNodeClientRegion(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*fakeNodeIMDS)
		want    string
		wantErr bool
	}{
		{"IMDSv2", func(*fakeNodeIMDS) {}, "eu-west-1", false},
		{"v1 only node IMDS", func(f *fakeNodeIMDS) { f.putCode = http.StatusForbidden }, "eu-west-1", false},
		{"no identity document", func(f *fakeNodeIMDS) { f.status = http.StatusNotFound }, "", true},
		{"node IMDS failing", func(f *fakeNodeIMDS) { f.status = http.StatusInternalServerError }, "", true},
		{"token PUT failing", func(f *fakeNodeIMDS) { f.putCode = http.StatusInternalServerError }, "", true},
		{"no region", func(f *fakeNodeIMDS) { f.doc = `{"instanceId":"i-1"}` }, "", true},
		{"a garbled region", func(f *fakeNodeIMDS) { f.doc = `{"region":"<html>` + leakMarker + `</html>"}` }, "", true},
		{"not JSON", func(f *fakeNodeIMDS) { f.doc = leakMarker }, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := newFakeNodeIMDS(t)
			node.set(tt.mod)
			c, err := NewNodeClient(node.srv.URL + "/")
			if err != nil {
				t.Fatalf("NewNodeClient(%q) = %v", node.srv.URL+"/", err)
			}
			region, err := c.Region(context.Background())
			if region != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("Region() = %q, %v; want %q, error %v", region, err, tt.want, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), leakMarker) {
				t.Errorf("Region() error %q carries the node IMDS's response", err)
			}
			assertUpstreamCanonical(t, node)
		})
	}
}

// TestNodeClientToken: one token serves successive lookups, and a 401 fetches a new one.
func TestNodeClientToken(t *testing.T) {
	node := newFakeNodeIMDS(t)
	c, err := NewNodeClient(node.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.Region(context.Background()); err != nil {
			t.Fatalf("Region() = %v", err)
		}
	}
	node.set(func(f *fakeNodeIMDS) { f.status = http.StatusUnauthorized })
	_, _ = c.Region(context.Background())
	if puts := node.count(http.MethodPut); puts != 2 {
		t.Errorf("token PUTs = %d, want 2 (one shared by two lookups, one after the 401)", puts)
	}
}

func TestNewNodeClientURL(t *testing.T) {
	for _, upstream := range []string{"", "http://169.254.169.254/latest", "file:///etc/passwd", "http://"} {
		if _, err := NewNodeClient(upstream); err == nil {
			t.Errorf("NewNodeClient(%q) = nil error, want an error", upstream)
		}
	}
}

// count is how many method requests the node's IMDS has received.
func (f *fakeNodeIMDS) count(method string) int {
	n := 0
	for _, r := range f.seen() {
		if strings.HasPrefix(r, method+" ") {
			n++
		}
	}
	return n
}

func TestValidRegion(t *testing.T) {
	for _, r := range []string{"us-east-1", "eu-west-3", "us-gov-west-1", "cn-north-1", "us-iso-east-1", "us-isob-east-1", "eu-isoe-west-1", "ap-southeast-7", "il-central-1", "mx-central-1", "eusc-de-east-1", "us-isof-south-1"} {
		if !ValidRegion(r) {
			t.Errorf("ValidRegion(%q) = false, want true", r)
		}
	}
	for _, r := range []string{"", "us-east1", "useast-1", "us-east-", "us--1", "US-EAST-1", "us-east-1a", "us-1", "us-east-1 ", "us-east-1\n", "sts.us-east-1", "<html>"} {
		if ValidRegion(r) {
			t.Errorf("ValidRegion(%q) = true, want false", r)
		}
	}
}
