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
	Conns          int     // concurrent connections to all pod-facing listeners together; 0 = unlimited
	RequestsPerPod float64 // sustained requests per second per source address; 0 = unlimited
	BurstPerPod    int     // requests answered at once above the rate
	MaxWait        time.Duration
}

type limitMetrics struct {
	conns        prometheus.Counter
	requests     prometheus.Counter
	delayed      prometheus.Counter
	evicted      prometheus.Counter
	unredirected prometheus.Counter
}

func newLimitMetrics(reg prometheus.Registerer) *limitMetrics {
	m := &limitMetrics{
		conns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "iamlet_limits_rejected_connections_total",
			Help: "Connections closed at once: their source address held the per-pod maximum, or the agent held its total and the source was already among the heaviest.",
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
	m.evicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iamlet_limits_evicted_connections_total",
		Help: "Held connections closed to make room, at the agent's total connection bound, for a source holding fewer.",
	})
	m.unredirected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "iamlet_listener_unredirected_connections_total",
		Help: "Connections closed at once because the interception rules did not redirect them (made to the listener's address directly).",
	})
	reg.MustRegister(m.conns, m.requests, m.delayed, m.evicted, m.unredirected)
	return m
}

// connTable bounds the connections the pod-facing listeners hold: at most perSource from one source
// address, and at most total across all listeners together, which is what keeps the agent's memory
// under its limit whatever the pods do. At the total bound a source holding fewer connections than
// the heaviest one still gets in: the heaviest source's oldest connection is closed for it, so a
// flood from many addresses cannot lock a quiet pod out.
type connTable struct {
	perSource, total int
	metrics          *limitMetrics

	mu       sync.Mutex
	open     int
	bySource map[netip.Addr][]*limitedConn // oldest first
}

func newConnTable(perSource, total int, m *limitMetrics) *connTable {
	return &connTable{perSource: perSource, total: total, metrics: m, bySource: make(map[netip.Addr][]*limitedConn)}
}

// limit wraps a listener so that its connections count against the table.
func (t *connTable) limit(l net.Listener) net.Listener {
	if t.perSource <= 0 && t.total <= 0 {
		return l
	}
	return &connLimiter{Listener: l, table: t}
}

type connLimiter struct {
	net.Listener
	table *connTable
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.table.admit(c); lc != nil {
			return lc, nil
		}
		_ = c.Close()
	}
}

// admit records c and returns it wrapped, or returns nil when c must be closed.
func (t *connTable) admit(c net.Conn) *limitedConn {
	src := remoteAddr(c.RemoteAddr())
	lc := &limitedConn{Conn: c, src: src, table: t}
	t.mu.Lock()
	held := len(t.bySource[src])
	if t.perSource > 0 && held >= t.perSource {
		t.mu.Unlock()
		t.metrics.conns.Inc()
		return nil
	}
	var evict *limitedConn
	if t.total > 0 && t.open >= t.total {
		heaviest := t.heaviest()
		// Only a source that would still hold fewer than the heaviest takes a slot; otherwise two
		// equal sources would evict each other's connections for ever.
		if len(t.bySource[heaviest]) <= held+1 {
			t.mu.Unlock()
			t.metrics.conns.Inc()
			return nil
		}
		evict = t.bySource[heaviest][0]
		t.removeLocked(evict)
	}
	t.bySource[src] = append(t.bySource[src], lc)
	t.open++
	t.mu.Unlock()
	if evict != nil {
		t.metrics.evicted.Inc()
		_ = evict.Conn.Close()
	}
	return lc
}

// heaviest is the source holding the most connections; callers hold mu.
func (t *connTable) heaviest() netip.Addr {
	var top netip.Addr
	n := -1
	for a, cs := range t.bySource {
		if len(cs) > n {
			top, n = a, len(cs)
		}
	}
	return top
}

// removeLocked forgets c; it reports whether c was still in the table. Callers hold mu.
func (t *connTable) removeLocked(c *limitedConn) bool {
	cs := t.bySource[c.src]
	for i, x := range cs {
		if x == c {
			cs = append(cs[:i], cs[i+1:]...)
			if len(cs) == 0 {
				delete(t.bySource, c.src)
			} else {
				t.bySource[c.src] = cs
			}
			t.open--
			return true
		}
	}
	return false
}

// Open is the number of connections the table holds.
func (t *connTable) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}

type limitedConn struct {
	net.Conn
	src   netip.Addr
	table *connTable
}

// NetConn is the connection under the limit.
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	c.table.mu.Lock()
	c.table.removeLocked(c)
	c.table.mu.Unlock()
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
	limiters map[string]*rate.Limiter // by source address, or by pod for hostNetwork callers
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
		metrics: m, limiters: make(map[string]*rate.Limiter)}
}

func (h *rateLimiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	res := h.reserve(rateKey(r), now)
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
			// The client gave up, or half-closed its side: its turn goes back to the pod's next request, and the
			// response is aborted. Returning would let net/http send an empty 200, which a client still reading
			// would take for an answer.
			t.Stop()
			res.Cancel()
			panic(http.ErrAbortHandler)
		}
	}
	h.next.ServeHTTP(w, r)
}

func (h *rateLimiter) tooMany(w http.ResponseWriter) {
	h.metrics.requests.Inc()
	w.Header().Set("Retry-After", strconv.Itoa(1))
	http.Error(w, "iamlet: too many requests from this pod", http.StatusTooManyRequests)
}

// rateKey is whose turn a request takes: its source address's, or, for a hostNetwork caller (all of which share the
// node's address), its pod's.
func rateKey(r *http.Request) string {
	if hc, ok := hostCallerOf(r.Context()); ok && hc.err == nil {
		return "pod/" + string(hc.uid)
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().String()
	}
	return ""
}

func (h *rateLimiter) reserve(key string, now time.Time) *rate.Reservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.limiters[key]
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
		h.limiters[key] = l
	}
	return l.ReserveN(now, 1)
}
