package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestNodeRegionWaitsForTheNodeIMDS: after a rollout the agent's first requests to the node's IMDS can be refused
// until host-rules has exempted the new pod; the region lookup asks again instead of failing the start-up.
func TestNodeRegionWaitsForTheNodeIMDS(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut:
			_, _ = io.WriteString(w, "token")
		case asked.Add(1) <= 3:
			http.Error(w, "not yet", http.StatusNotFound)
		default:
			_, _ = io.WriteString(w, `{"region":"eu-west-1"}`) // the instance identity document
		}
	}))
	defer srv.Close()
	region, err := nodeRegion(context.Background(), srv.URL, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || region != "eu-west-1" {
		t.Fatalf("nodeRegion = %q, %v; want eu-west-1 after the refusals", region, err)
	}
	if n := asked.Load(); n != 4 {
		t.Errorf("asked %d times, want 4", n)
	}
}

// TestNodeRegionSkipsTheNodeIMDS: --region answers without asking the node; with neither, the error says what to set.
func TestNodeRegionSkipsTheNodeIMDS(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("node IMDS asked %s %s, want --region to skip it", r.Method, r.URL.Path)
	}))
	defer srv.Close()
	log := slog.New(slog.DiscardHandler)
	if region, err := nodeRegion(context.Background(), srv.URL, "us-east-2", log); err != nil || region != "us-east-2" {
		t.Errorf("nodeRegion(--region us-east-2) = %q, %v; want us-east-2", region, err)
	}
	if _, err := nodeRegion(context.Background(), "", "", log); err == nil || !strings.Contains(err.Error(), "--region") {
		t.Errorf("nodeRegion(no --region, no --node-imds) = %v, want an error naming --region", err)
	}
}

// TestNodeRegionGivesUp: each refusal is logged with its error, and giving up says how to skip the lookup.
func TestNodeRegionGivesUp(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer srv.Close()
	var logged strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond) // the caller's, shorter than regionWait
	defer cancel()
	_, err := nodeRegion(ctx, srv.URL, "", slog.New(slog.NewTextHandler(&logged, nil)))
	if err == nil || !strings.Contains(err.Error(), "(set --region to skip)") {
		t.Errorf("nodeRegion with the node IMDS failing = %v, want an error saying to set --region", err)
	}
	if want := `msg="asking the node's IMDS for the region; asking again" error="PUT /latest/api/token: status 500"`; !strings.Contains(logged.String(), want) {
		t.Errorf("log = %q, want a line containing %q", logged.String(), want)
	}
}

// TestConnectSTSAsksTheRegionWithAnSTSEndpoint: as the chart ships (no --region), the region is the node's even where an
// STS endpoint is set that is not AWS's: chained roles' AssumeRole is signed for it. An AWS endpoint names its own
// region, and the node's IMDS is not asked.
func TestConnectSTSAsksTheRegionWithAnSTSEndpoint(t *testing.T) {
	var asked atomic.Int32
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.Method == http.MethodPut {
			_, _ = io.WriteString(w, "token")
			return
		}
		_, _ = io.WriteString(w, `{"region":"eu-west-1"}`)
	}))
	defer imds.Close()
	connect := func(endpoint string) *agent {
		t.Helper()
		a := &agent{cfg: Config{NodeName: "node-1", NodeIMDS: imds.URL, STSEndpoint: endpoint},
			log: slog.New(slog.DiscardHandler), fetch: &fetcher{}}
		if err := a.connectSTS(context.Background())(); err != nil || a.fetch.sts == nil {
			t.Fatalf("connectSTS(--sts-endpoint=%s) = %v, fetcher's STS client %v", endpoint, err, a.fetch.sts)
		}
		return a
	}
	if a := connect("http://127.0.0.1:9000"); a.cfg.Region != "eu-west-1" || a.cfg.NodeFacts.Region != "eu-west-1" || asked.Load() == 0 {
		t.Errorf("another STS: region %q, node facts' region %q, IMDS asked %d times; want the node's, eu-west-1",
			a.cfg.Region, a.cfg.NodeFacts.Region, asked.Load())
	}
	asked.Store(0)
	if a := connect("https://vpce-0a1b2c3d-abcdefgh.sts.ap-southeast-2.vpce.amazonaws.com"); a.cfg.Region != "" || asked.Load() != 0 {
		t.Errorf("an AWS VPC endpoint: region %q, IMDS asked %d times; want neither (it names its region)", a.cfg.Region, asked.Load())
	}
}

// TestConnectSTSWithoutANodeIMDS: with --node-imds empty (node facts synthesised) and an STS endpoint, the agent starts
// without a region, as before: STS is signed for the region the endpoint names, or us-east-1.
func TestConnectSTSWithoutANodeIMDS(t *testing.T) {
	a := &agent{cfg: Config{NodeName: "node-1", STSEndpoint: "http://127.0.0.1:9000"},
		log: slog.New(slog.DiscardHandler), fetch: &fetcher{}}
	if err := a.connectSTS(context.Background())(); err != nil || a.cfg.Region != "" || a.fetch.sts == nil {
		t.Errorf("connectSTS() = %v, region %q, fetcher's STS client %v; want a client and no region asked", err, a.cfg.Region, a.fetch.sts)
	}
}

// TestConfigRefusesAGarbledRegion: a --region (or AWS_REGION) that is no region name stops the agent at once with
// the reason, rather than every STS call failing at a host that does not exist; with an STS endpoint of its own
// (MinIO, Ceph), any name that endpoint uses goes.
func TestConfigRefusesAGarbledRegion(t *testing.T) {
	for _, c := range []struct {
		region, endpoint string
		ok               bool
	}{
		{"", "", true}, {"eu-west-1", "", true}, {"us-gov-west-1", "", true},
		{"us-east1", "", false}, {"US-EAST-1", "", false}, {"eu-west-1 ", "", false},
		{"home", "https://minio.example:9000", true},
	} {
		cfg := Config{NodeName: "node-a", MetadataAddrs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:8181")},
			Region: c.region, STSEndpoint: c.endpoint}
		if err := cfg.check(); (err == nil) != c.ok {
			t.Errorf("Region %q, endpoint %q: check() = %v, want ok %v", c.region, c.endpoint, err, c.ok)
		}
	}
}
