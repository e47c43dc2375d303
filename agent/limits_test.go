package agent

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestConnLimiterCapsOneSource: the connection over the per-source maximum is closed at once, and a
// freed slot is usable again.
func TestConnLimiterCapsOneSource(t *testing.T) {
	m := newLimitMetrics(prometheus.NewRegistry())
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := limitConns(raw, 2, m)
	defer ln.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := dial(), dial()
	s1, s2 := <-accepted, <-accepted
	defer c2.Close()
	defer s2.Close()

	c3 := dial()
	_ = c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c3.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("third connection: Read = %d, %v; want EOF (closed by the limiter)", n, err)
	}
	c3.Close()
	if got := testutil.ToFloat64(m.conns); got != 1 {
		t.Errorf("rejected connections = %v, want 1", got)
	}

	c1.Close()
	s1.Close() // the server side closing releases the slot
	c4 := dial()
	defer c4.Close()
	select {
	case s4 := <-accepted:
		s4.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a connection after a slot was freed was not accepted")
	}
}

// TestRateLimiterThrottlesOnePodOnly: a source over its burst gets 429, another source is unaffected.
func TestRateLimiterThrottlesOnePodOnly(t *testing.T) {
	m := newLimitMetrics(prometheus.NewRegistry())
	h := limitRate(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		Limits{RequestsPerPod: 1, BurstPerPod: 3}, m)
	do := func(src string) int {
		r := httptest.NewRequest(http.MethodGet, "/latest/meta-data/", nil)
		r.RemoteAddr = src
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	for i := range 3 {
		if code := do("10.0.0.1:1000"); code != http.StatusOK {
			t.Fatalf("request %d within the burst = %d, want 200", i, code)
		}
	}
	if code := do("10.0.0.1:1001"); code != http.StatusTooManyRequests {
		t.Errorf("request over the burst = %d, want 429", code)
	}
	if code := do("10.0.0.2:1000"); code != http.StatusOK {
		t.Errorf("another pod's request = %d, want 200", code)
	}
	if got := testutil.ToFloat64(m.requests); got != 1 {
		t.Errorf("throttled requests = %v, want 1", got)
	}
}

func TestRemoteAddrUnmaps(t *testing.T) {
	a := &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.7"), Port: 80}
	if got, want := remoteAddr(a), netip.MustParseAddr("10.0.0.7"); got != want {
		t.Errorf("remoteAddr(%v) = %v, want %v", a, got, want)
	}
}
