package metadata

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultContainerPath is where the container face answers unless ContainerConfig.Path says otherwise
// (AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials).
const DefaultContainerPath = "/v1/credentials"

// ContainerConfig configures the container credentials face.
type ContainerConfig struct {
	// Path is the one path answered; "" means DefaultContainerPath.
	Path string
	// Verifier checks the Authorization header. nil: the header is required but not checked (the caller is
	// identified by source IP either way).
	Verifier TokenVerifier
	// Clock is the time source for credential checks; nil means time.Now.
	Clock func() time.Time
	// Logger receives one line per request the face refuses itself (the CredentialProvider logs its own); nil discards.
	Logger *slog.Logger
}

// ContainerHandler is the container credentials face (what SDKs read through AWS_CONTAINER_CREDENTIALS_FULL_URI and
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). Like Handler it identifies the caller by source IP.
type ContainerHandler struct {
	path     string
	verifier TokenVerifier
	creds    CredentialProvider
	clock    func() time.Time
	log      *slog.Logger
	metrics  *containerMetrics
	bufs     bufferPool
	docs     docCache
}

// NewContainerHandler returns the container credentials face answering with creds. Its metrics are registered on
// reg (nil: not registered).
func NewContainerHandler(cfg ContainerConfig, creds CredentialProvider, reg prometheus.Registerer) (*ContainerHandler, error) {
	if creds == nil {
		return nil, errors.New("metadata: nil credential provider")
	}
	p := cfg.Path
	if p == "" {
		p = DefaultContainerPath
	}
	rp, err := normalise(p)
	if err != nil || rp.p != p || rp.p == "/" {
		return nil, fmt.Errorf("container credentials path %q: want a clean absolute path such as %q", p, DefaultContainerPath)
	}
	m, err := newContainerMetrics(reg)
	if err != nil {
		return nil, err
	}
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	return &ContainerHandler{
		path:     rp.p,
		verifier: cfg.Verifier,
		creds:    creds,
		clock:    clock,
		log:      loggerOrDiscard(cfg.Logger),
		metrics:  m,
	}, nil
}

func (h *ContainerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := call{w: w, r: r}
	out := h.serve(&c)
	h.metrics.observe(out, time.Since(start))
}

func (h *ContainerHandler) serve(c *call) outcome {
	if hasBody(c.r) {
		// Unread, a body would be drained by the server; refusing it keeps a pod from making the
		// agent read megabytes it has no use for.
		c.w.Header().Set("Connection", "close")
		return h.refuse(c, refuseBody, nil)
	}
	rp, err := normalise(c.r.URL.EscapedPath())
	if err != nil {
		return h.refuse(c, refuseBadPath, err)
	}
	c.rp = rp
	caller, ok := callerAddr(c.r)
	if !ok {
		return h.refuse(c, refuseBadCaller, nil)
	}
	c.caller = caller
	if relayed(c.r.Header) {
		return h.refuse(c, refuseForwarded, nil)
	}
	if !equalFoldASCII(rp.p, h.path) {
		return h.refuse(c, refuseNotFound, nil)
	}
	if c.r.Method != http.MethodGet && c.r.Method != http.MethodHead {
		c.w.Header().Set("Allow", allowData)
		return h.refuse(c, refuseMethod, nil)
	}
	auth := c.r.Header.Values("Authorization")
	if len(auth) != 1 || auth[0] == "" {
		return h.refuse(c, refuseNoAuthorization, nil)
	}
	if h.verifier != nil {
		if err := h.verifier.Verify(c.r.Context(), caller, auth[0]); err != nil {
			rf, known := providerRefusal(err)
			if !known {
				rf = refuseBadAuthorization
			}
			return h.refuse(c, rf, err)
		}
	}
	creds, err := h.creds.Credentials(c.r.Context(), caller)
	if err != nil {
		rf, _ := providerRefusal(err)
		return h.answer(c, rf) // the provider logged it
	}
	now := h.clock()
	if why := creds.unusable(now); why != "" {
		return h.refuse(c, refuseUnavailable, errors.New("provider returned unusable credentials: "+why))
	}
	writeResponse(c.w, http.StatusOK, contentTypeJSON, h.docs.document(&creds, docContainer, now))
	return outcomeServed
}

// refuse answers and logs a refusal the face decided, as Handler.refuse does.
func (h *ContainerHandler) refuse(c *call, rf refusal, err error) outcome {
	logRefusal(h.log, c, rf, err)
	return h.answer(c, rf)
}

// answer answers a refusal without logging it, as Handler.answer does.
func (h *ContainerHandler) answer(c *call, rf refusal) outcome {
	info := rf.info()
	buf := h.bufs.get()
	*buf = appendContainerError(*buf, info.code, "iamlet: "+info.text)
	writeResponse(c.w, info.status, contentTypeJSON, *buf)
	h.bufs.put(buf)
	return info.outcome
}
