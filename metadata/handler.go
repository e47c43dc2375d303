package metadata

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	contentTypeText = "text/plain"
	contentTypeJSON = "application/json"
	serverName      = "EC2ws" // what EC2's IMDS sends
	allowData       = "GET, HEAD"
	allowToken      = http.MethodPut
)

// Handler is the IMDS face. Mount it as a server's root handler: an http.ServeMux in front of it would redirect
// unclean paths before normalise sees them.
type Handler struct {
	requireV2 bool
	tokens    *tokenSigner
	scope     func(*http.Request) string // nil: tokens are bound to the address alone
	creds     CredentialProvider
	node      *nodeSource
	clock     func() time.Time
	log       *slog.Logger
	metrics   *imdsMetrics
	bufs      bufferPool
	docs      docCache
}

// NewHandler returns the IMDS face answering with creds. Its metrics are registered on reg (nil: not registered).
func NewHandler(cfg Config, creds CredentialProvider, reg prometheus.Registerer) (*Handler, error) {
	if creds == nil {
		return nil, errors.New("metadata: nil credential provider")
	}
	tokens, err := newTokenSigner(cfg.TokenKey)
	if err != nil {
		return nil, err
	}
	base, err := parseUpstream(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	m, err := newIMDSMetrics(reg)
	if err != nil {
		return nil, err
	}
	clock, log := cfg.clock(), loggerOrDiscard(cfg.Logger)
	return &Handler{
		requireV2: cfg.RequireV2,
		tokens:    tokens,
		scope:     cfg.TokenScope,
		creds:     creds,
		node:      newNodeSource(base, cfg.Node, clock, log),
		clock:     clock,
		log:       log,
		metrics:   m,
	}, nil
}

// call is one request as the handler sees it.
type call struct {
	w      http.ResponseWriter
	r      *http.Request
	rp     reqPath
	caller netip.Addr
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := call{w: w, r: r}
	cls, out := h.serve(&c)
	h.metrics.observe(cls, out, time.Since(start))
}

func (h *Handler) serve(c *call) (class, outcome) {
	if hasBody(c.r) {
		// Unread, a body would be drained by the server; refusing it keeps a pod from making the
		// agent read megabytes it has no use for.
		c.w.Header().Set("Connection", "close")
		return classOther, h.refuse(c, refuseBody, nil)
	}
	rp, err := normalise(c.r.URL.EscapedPath())
	if err != nil {
		return classOther, h.refuse(c, refuseBadPath, err)
	}
	c.rp = rp
	caller, ok := callerAddr(c.r)
	if !ok {
		return classOther, h.refuse(c, refuseBadCaller, nil)
	}
	c.caller = caller

	rt := match(rp)
	cls := rt.class()
	if relayed(c.r.Header) {
		return cls, h.refuse(c, refuseForwarded, nil)
	}
	if rt.kind == routeNone {
		return cls, h.refuse(c, refuseNodePath, nil)
	}
	if rt.kind == routeToken {
		return cls, h.serveToken(c)
	}
	if c.r.Method != http.MethodGet && c.r.Method != http.MethodHead {
		c.w.Header().Set("Allow", allowData)
		return cls, h.refuse(c, refuseMethod, nil)
	}
	if rf := h.checkToken(c); rf != refuseNone {
		return cls, h.refuse(c, rf, nil)
	}
	switch rt.kind {
	case routeListing:
		buf := h.bufs.get()
		*buf = append(*buf, rt.listing...)
		writeResponse(c.w, http.StatusOK, contentTypeText, *buf)
		h.bufs.put(buf)
		return cls, outcomeServed
	case routeFact:
		body, rf := h.node.lookup(c.r.Context(), rt.fact)
		if rf != refuseNone {
			return cls, h.refuse(c, rf, nil)
		}
		writeResponse(c.w, http.StatusOK, contentTypeText, body)
		return cls, outcomeServed
	}
	return cls, h.serveCredentials(c, rt)
}

func (h *Handler) serveToken(c *call) outcome {
	if c.r.Method != http.MethodPut {
		c.w.Header().Set("Allow", allowToken)
		return h.refuse(c, refuseMethod, nil)
	}
	ttl, ok := parseTTL(c.r.Header.Values(headerTokenTTL))
	if !ok {
		return h.refuse(c, refuseBadTTL, nil)
	}
	buf := h.bufs.get()
	*buf = h.tokens.appendToken(*buf, c.caller, h.tokenScope(c.r), h.clock().Add(time.Duration(ttl)*time.Second))
	// G1 and G2 treat a token answer without this header as a failed token call.
	c.w.Header().Set(headerTokenTTL, strconv.Itoa(ttl))
	writeResponse(c.w, http.StatusOK, contentTypeText, *buf)
	h.bufs.put(buf)
	return outcomeServed
}

// tokenScope is what the request's tokens are bound to beside its caller's address (Config.TokenScope).
func (h *Handler) tokenScope(r *http.Request) string {
	if h.scope == nil {
		return ""
	}
	return h.scope(r)
}

// checkToken enforces IMDSv2 on a data request: a token, if sent, must be valid for this caller; no token is
// allowed unless RequireV2. An empty header counts as none.
func (h *Handler) checkToken(c *call) refusal {
	vals := c.r.Header.Values(headerToken)
	switch {
	case len(vals) == 0 || (len(vals) == 1 && vals[0] == ""):
		if h.requireV2 {
			return refuseTokenRequired
		}
		return refuseNone
	case len(vals) == 1 && h.tokens.valid(vals[0], c.caller, h.tokenScope(c.r), h.clock()):
		return refuseNone
	}
	return refuseBadToken
}

func (h *Handler) serveCredentials(c *call, rt route) outcome {
	creds, err := h.creds.Credentials(c.r.Context(), c.caller)
	if err != nil {
		rf, _ := providerRefusal(err)
		return h.answer(c, rf) // the provider logged it
	}
	now := h.clock()
	if why := creds.unusable(now); why != "" {
		return h.refuse(c, refuseUnavailable, errors.New("provider returned unusable credentials: "+why))
	}
	switch rt.kind {
	case routeCredsList, routeCredsExtList:
		buf := h.bufs.get()
		*buf = append(*buf, creds.RoleName...) // no newline: botocore pastes the body into the next URL
		writeResponse(c.w, http.StatusOK, contentTypeText, *buf)
		h.bufs.put(buf)
		return outcomeServed
	}
	if !equalFoldASCII(rt.name, creds.RoleName) {
		// Another role's name, most likely the node's: never passed on.
		return h.refuse(c, refuseOtherRole, nil)
	}
	kind := docStandard
	if rt.kind == routeCredsExtDoc {
		kind = docExtended
	}
	writeResponse(c.w, http.StatusOK, contentTypeText, h.docs.document(&creds, kind, now))
	return outcomeServed
}

// refuse answers and logs a refusal the face decided. err is logged (it never carries a secret) but never sent.
func (h *Handler) refuse(c *call, rf refusal, err error) outcome {
	logRefusal(h.log, c, rf, err)
	return h.answer(c, rf)
}

// answer answers a refusal without logging it: the CredentialProvider's refusals, which it logs itself, with the pod,
// the role and the reason the face does not know, and RefusalStatus.
func (h *Handler) answer(c *call, rf refusal) outcome {
	info := rf.info()
	buf := h.bufs.get()
	*buf = append(*buf, "iamlet: "...)
	*buf = append(*buf, info.text...)
	writeResponse(c.w, info.status, contentTypeText, *buf)
	h.bufs.put(buf)
	return info.outcome
}

// RefusalStatus is the HTTP status both faces answer a CredentialProvider's error with. They do not log a provider's
// refusals (one line per request: the provider's, which knows the pod, the role and the reason), so the provider puts
// this on its line.
func RefusalStatus(err error) int {
	rf, _ := providerRefusal(err)
	return rf.info().status
}

// logRefusal logs a refusal the face decided, in the provider's vocabulary: "refused", with the outcome and reason.
func logRefusal(log *slog.Logger, c *call, rf refusal, err error) {
	info, level := rf.info(), slog.LevelInfo
	if rf.probe() {
		level = slog.LevelWarn
	}
	ctx := c.r.Context()
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 7)
	attrs = append(attrs,
		slog.String("outcome", "refused"),
		slog.String("reason", info.outcome.String()),
		slog.String("method", c.r.Method))
	if c.rp.p != "" {
		attrs = append(attrs, slog.String("path", loggable(c.rp.String(), 256)))
	} else {
		attrs = append(attrs, slog.String("raw_path", loggable(c.r.URL.EscapedPath(), 256)))
	}
	if c.caller.IsValid() {
		attrs = append(attrs, slog.String("caller", c.caller.String()))
	} else {
		attrs = append(attrs, slog.String("remote_addr", truncate(c.r.RemoteAddr, 64)))
	}
	attrs = append(attrs, slog.Int("status", info.status))
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	log.LogAttrs(ctx, level, "refused", attrs...)
}

// callerAddr is the pod's address: DNAT keeps the source IP, so RemoteAddr is the pod.
func callerAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap().WithZone(""), true
}

func writeResponse(w http.ResponseWriter, status int, contentType string, body []byte) {
	// One backing array for the three values (Header.Set would allocate one each); capped so an append by anyone
	// downstream copies instead of overwriting a neighbour.
	vals := make([]string, 3)
	vals[0], vals[1], vals[2] = contentType, strconv.Itoa(len(body)), serverName
	h := w.Header()
	h["Content-Type"] = vals[0:1:1]
	h["Content-Length"] = vals[1:2:2]
	h["Server"] = vals[2:3:3]
	w.WriteHeader(status)
	w.Write(body)
}

// loggable is what a client chose, as a log line carries it: at most n bytes, and anything but printable ASCII
// escaped, so that no control or bidirectional character reorders the line an operator reads.
func loggable(s string, n int) string {
	q := strconv.QuoteToASCII(truncate(s, n))
	return q[1 : len(q)-1]
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// bufferPool recycles response buffers; a credential document with a session token is 1.5 to 2 KiB.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) get() *[]byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		*v = (*v)[:0]
		return v
	}
	s := make([]byte, 0, 4096)
	return &s
}

func (b *bufferPool) put(s *[]byte) {
	if cap(*s) <= 64<<10 {
		b.p.Put(s)
	}
}

// relayed reports whether a proxy says it relayed the request. Its source address is then the proxy's: served, a pod
// that any other pod can send requests through would hand out its own role (an HTTP_PROXY without NO_PROXY for the
// metadata addresses, an open forward proxy). The IMDS refuses only a forwarded token PUT; the IMDSv1 fallback
// that follows that refusal would otherwise be served.
func relayed(h http.Header) bool {
	for _, k := range [...]string{"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// hasBody reports whether the request has a body (SDKs send none, or Content-Length: 0). A chunked body that ends at
// once is none: clients send one for a body of unknown length (a Go request with a Body reader, Python's requests
// with a generator). Its end is read, within the server's read timeout; any byte of a body is refused unread.
func hasBody(r *http.Request) bool {
	if r.ContentLength > 0 {
		return true
	}
	if len(r.TransferEncoding) == 0 {
		return false
	}
	var b [1]byte
	n, err := r.Body.Read(b[:])
	return n > 0 || err != io.EOF
}
