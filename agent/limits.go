package agent

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Limits keep one pod from starving the others while a legitimate burst (a worker pool or a batch
// of CLI calls starting together, a few requests each) still gets through. Most SDKs give up on a
// 429 from the metadata endpoint instead of backing off, so a request over the rate first waits
// for its turn, up to MaxWait, which keeps its answer inside every SDK's timeout; only a pod that
// would have to wait longer, that is one flooding from many connections, is answered 429.
type Limits struct {
	ConnsPerPod    int     // concurrent connections per source address; 0 = unlimited
	RequestsPerPod float64 // sustained requests per second per source address; 0 = unlimited
	BurstPerPod    int     // requests answered at once above the rate
	MaxWait        time.Duration
}

type limitMetrics struct {
	conns        prometheus.Counter
	requests     prometheus.Counter
	delayed      prometheus.Counter
	unredirected prometheus.Counter
}

func newLimitMetrics(reg prometheus.Registerer) *limitMetrics {
	m := &limitMetrics{
		conns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_limits_rejected_connections_total",
			Help: "Connections closed at once because their source address already held the per-pod maximum.",
		}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_limits_throttled_requests_total",
			Help: "Requests answered 429 because their source address exceeded the per-pod request rate by more than the wait allows.",
		}),
		delayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_limits_delayed_requests_total",
			Help: "Requests over the per-pod burst that waited for their turn and were then answered.",
		}),
	}
	m.unredirected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iamlet_listener_unredirected_connections_total",
		Help: "Connections closed at once because the interception rules did not redirect them (made to the listener's address directly).",
	})
	reg.MustRegister(m.conns, m.requests, m.delayed, m.unredirected)
	return m
}

// connLimiter is a listener that admits at most max concurrent connections per source address.
type connLimiter struct {
	net.Listener
	max     int
	metrics *limitMetrics

	mu    sync.Mutex
	count map[netip.Addr]int
}

func limitConns(l net.Listener, max int, m *limitMetrics) net.Listener {
	if max <= 0 {
		return l
	}
	return &connLimiter{Listener: l, max: max, metrics: m, count: make(map[netip.Addr]int)}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteAddr(c.RemoteAddr())
		l.mu.Lock()
		if l.count[ip] >= l.max {
			l.mu.Unlock()
			l.metrics.conns.Inc()
			_ = c.Close()
			continue
		}
		l.count[ip]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *connLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.count[ip]--; l.count[ip] <= 0 {
		delete(l.count, ip)
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func remoteAddr(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// rateLimiter paces each source address: within the burst at once, beyond it at the rate, each
// request waiting for its turn; a request whose turn is more than maxWait away is answered 429.
type rateLimiter struct {
	next    http.Handler
	limit   rate.Limit
	burst   int
	maxWait time.Duration
	metrics *limitMetrics

	mu       sync.Mutex
	limiters map[netip.Addr]*rate.Limiter
}

func limitRate(next http.Handler, lim Limits, m *limitMetrics) http.Handler {
	if lim.RequestsPerPod <= 0 {
		return next
	}
	burst := lim.BurstPerPod
	if burst <= 0 {
		burst = int(2 * lim.RequestsPerPod)
	}
	return &rateLimiter{next: next, limit: rate.Limit(lim.RequestsPerPod), burst: burst, maxWait: lim.MaxWait,
		metrics: m, limiters: make(map[netip.Addr]*rate.Limiter)}
}

func (h *rateLimiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ip := netip.Addr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		ip = ap.Addr().Unmap()
	}
	now := time.Now()
	res := h.reserve(ip, now)
	if wait := res.DelayFrom(now); wait > 0 {
		if wait > h.maxWait {
			res.CancelAt(now)
			h.tooMany(w)
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			h.metrics.delayed.Inc()
		case <-r.Context().Done():
			// The client gave up: its turn goes back to the pod's next request.
			t.Stop()
			res.Cancel()
			return
		}
	}
	h.next.ServeHTTP(w, r)
}

func (h *rateLimiter) tooMany(w http.ResponseWriter) {
	h.metrics.requests.Inc()
	w.Header().Set("Retry-After", strconv.Itoa(1))
	http.Error(w, "iamlet: too many requests from this pod", http.StatusTooManyRequests)
}

func (h *rateLimiter) reserve(ip netip.Addr, now time.Time) *rate.Reservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.limiters[ip]
	if !ok {
		// Forget addresses whose buckets have refilled, so the map follows the active pods.
		if len(h.limiters) >= 4096 {
			for a, old := range h.limiters {
				if old.TokensAt(now) >= float64(h.burst) {
					delete(h.limiters, a)
				}
			}
		}
		l = rate.NewLimiter(h.limit, h.burst)
		h.limiters[ip] = l
	}
	return l.ReserveN(now, 1)
}
