package agent

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
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
	ln := newConnTable(2, 0, m).limit(raw)
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

// pacedHandler is the rate limiter in front of a handler that answers "ok", and a way to send it a request from a
// source address, which gives the status answered, or 0 when nothing was written.
func pacedHandler(lim Limits) (*limitMetrics, func(ctx context.Context, src string) int) {
	m := newLimitMetrics(prometheus.NewRegistry())
	h := limitRate(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }), lim, m)
	return m, func(ctx context.Context, src string) (code int) {
		r := httptest.NewRequestWithContext(ctx, http.MethodGet, "/latest/meta-data/", nil)
		r.RemoteAddr = src
		w := httptest.NewRecorder()
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					panic(v)
				}
				code = aborted
			}
		}()
		h.ServeHTTP(w, r)
		if w.Body.Len() == 0 {
			return 0
		}
		return w.Code
	}
}

// aborted is pacedHandler's code for a response the handler aborted: net/http closes the connection, answering nothing.
const aborted = -1

// TestRateLimiterPacesABurst: past the burst a request waits for its turn at the pod's rate and is answered, so a
// burst of SDK processes is slowed, not failed; another pod is not held up.
func TestRateLimiterPacesABurst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, do := pacedHandler(Limits{RequestsPerPod: 10, BurstPerPod: 3, MaxWait: 250 * time.Millisecond})
		start := time.Now()
		for i := range 3 {
			if code := do(t.Context(), "10.0.0.1:1000"); code != http.StatusOK {
				t.Fatalf("request %d within the burst = %d, want 200", i, code)
			}
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("the burst waited %v, want no wait", d)
		}
		if code := do(t.Context(), "10.0.0.2:1000"); code != http.StatusOK {
			t.Errorf("another pod's request = %d, want 200", code)
		}
		for i := range 2 {
			if code := do(t.Context(), "10.0.0.1:1001"); code != http.StatusOK {
				t.Errorf("paced request %d = %d, want 200", i, code)
			}
		}
		if d := time.Since(start); d != 200*time.Millisecond {
			t.Errorf("two requests past the burst at 10/s took %v, want 200ms", d)
		}
		if got := testutil.ToFloat64(m.delayed); got != 2 {
			t.Errorf("delayed requests = %v, want 2", got)
		}
		if got := testutil.ToFloat64(m.requests); got != 0 {
			t.Errorf("throttled requests = %v, want 0", got)
		}
	})
}

// TestRateLimiterRefusesBeyondTheWait: a request whose turn is further away than the wait allows (a pod flooding
// from many connections at once) is answered 429 at once, and does not push back the turns of those that wait.
func TestRateLimiterRefusesBeyondTheWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, do := pacedHandler(Limits{RequestsPerPod: 10, BurstPerPod: 1, MaxWait: 250 * time.Millisecond})
		codes := make(chan int, 6)
		for range 6 {
			go func() { codes <- do(t.Context(), "10.0.0.1:1000") }()
		}
		synctest.Wait()
		// The first is answered at once and the next two have their turns within 250 ms (at 100 and 200 ms).
		got := map[int]int{}
		for range 3 {
			got[<-codes]++
		}
		time.Sleep(250 * time.Millisecond)
		for range 3 {
			got[<-codes]++
		}
		if got[http.StatusOK] != 3 || got[http.StatusTooManyRequests] != 3 {
			t.Errorf("answers = %v, want three 200 and three 429", got)
		}
		if n := testutil.ToFloat64(m.requests); n != 3 {
			t.Errorf("throttled requests = %v, want 3", n)
		}
		// The refused requests gave their turns back: the bucket is empty again 100 ms after the last paced answer.
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		if code := do(t.Context(), "10.0.0.1:1001"); code != http.StatusOK || time.Since(start) != 0 {
			t.Errorf("next request = %d after %v, want 200 at once", code, time.Since(start))
		}
	})
}

// TestRateLimiterClientGoneReturnsItsTurn: a client that gives up while waiting is not answered and hands its turn
// to the pod's next request.
func TestRateLimiterClientGoneReturnsItsTurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		_, do := pacedHandler(Limits{RequestsPerPod: 10, BurstPerPod: 1, MaxWait: 250 * time.Millisecond})
		if code := do(t.Context(), "10.0.0.1:1000"); code != http.StatusOK {
			t.Fatalf("first request = %d", code)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan int)
		go func() { done <- do(ctx, "10.0.0.1:1001") }()
		synctest.Wait()
		cancel()
		if code := <-done; code != aborted {
			t.Errorf("a request whose client left (or half-closed) got %d, want the response aborted", code)
		}
		start := time.Now()
		if code := do(t.Context(), "10.0.0.1:1002"); code != http.StatusOK {
			t.Errorf("next request = %d, want 200", code)
		}
		if d := time.Since(start); d != 100*time.Millisecond {
			t.Errorf("next request waited %v, want 100ms (the returned turn)", d)
		}
	})
}

func TestRemoteAddrUnmaps(t *testing.T) {
	a := &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.7"), Port: 80}
	if got, want := remoteAddr(a), netip.MustParseAddr("10.0.0.7"); got != want {
		t.Errorf("remoteAddr(%v) = %v, want %v", a, got, want)
	}
}

// fakeConn is a connection from a source address that records whether it was closed.
type fakeConn struct {
	net.Conn
	from   net.Addr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.from }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

// TestConnTableBoundsTheTotalFairly: at the total bound a source holding fewer connections than the heaviest gets in
// and the heaviest loses its oldest; a source as heavy as the others is refused instead, so sources at their fair share
// do not evict one another; the total never exceeds the bound.
func TestConnTableBoundsTheTotalFairly(t *testing.T) {
	m := newLimitMetrics(prometheus.NewRegistry())
	table := newConnTable(8, 6, m)
	from := func(ip string) *fakeConn {
		return &fakeConn{from: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
	}
	var flood []*fakeConn
	for range 6 {
		c := from("10.0.0.1")
		if table.admit(c) == nil {
			t.Fatal("a connection under both bounds was refused")
		}
		flood = append(flood, c)
	}
	quiet := from("10.0.0.2")
	lc := table.admit(quiet)
	if lc == nil {
		t.Fatal("at the total bound, a source holding nothing was refused; want the heaviest source's oldest connection closed")
	}
	if !flood[0].closed || flood[1].closed {
		t.Errorf("evicted: oldest %v, next %v; want only the oldest of the heaviest source", flood[0].closed, flood[1].closed)
	}
	if got := table.Open(); got != 6 {
		t.Errorf("open = %d, want the bound 6", got)
	}
	// Sources of 10.0.0.2 take slots until it holds one fewer than 10.0.0.1; then it is refused.
	for range 2 {
		if table.admit(from("10.0.0.2")) == nil {
			t.Fatal("a source holding fewer than the heaviest was refused")
		}
	}
	if table.admit(from("10.0.0.2")) != nil {
		t.Error("a source that would hold as many as the heaviest was admitted; equal sources would evict each other")
	}
	if got, want := testutil.ToFloat64(m.evicted), 3.0; got != want {
		t.Errorf("evicted = %v, want %v", got, want)
	}
	if got := table.Open(); got != 6 {
		t.Errorf("open = %d, want 6", got)
	}
	// Closing a connection frees its slot, once, even when closed twice.
	_ = lc.Close()
	_ = lc.Close()
	if got := table.Open(); got != 5 {
		t.Errorf("open after a close = %d, want 5", got)
	}
	if table.admit(from("10.0.0.3")) == nil {
		t.Error("a free slot was not given")
	}
}

// TestServerLeavesNoRequestToNetHTTP: every request on a face's server reaches the face, "OPTIONS *" too, which
// net/http would otherwise answer 200 itself, past the face's refusals, metrics and log.
func TestServerLeavesNoRequestToNetHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		seen.Add(1)
		http.Error(w, "refused", http.StatusNotFound)
	})
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	serveOn(ctx, ln, h, nil, slog.New(slog.DiscardHandler), &wg)
	defer func() { cancel(); wg.Wait() }()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "OPTIONS * HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || seen.Load() != 1 {
		t.Errorf("OPTIONS * = %d, face saw %d requests; want the face's 404", resp.StatusCode, seen.Load())
	}
}
