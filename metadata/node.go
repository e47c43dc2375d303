package metadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

const (
	nodeFactTTL      = 5 * time.Minute  // node facts barely change; the cache keeps the node's IMDS out of the hot path
	staleRetry       = 30 * time.Second // while the node's IMDS fails, how long a stale value is served before retrying
	upstreamTimeout  = 2 * time.Second
	upstreamTokenTTL = maxTokenTTL
	maxUpstreamBody  = 64 << 10
)

// nodeSource answers node facts, from the node's IMDS (over IMDSv2, cached) or from static configuration.
type nodeSource struct {
	static    NodeFacts
	staticDoc []byte // nil when there is no region to put in it

	node  *NodeClient // nil = static only
	clock func() time.Time
	log   *slog.Logger

	flight singleflight.Group
	mu     sync.Mutex
	cache  [numFacts]cachedFact
}

type cachedFact struct {
	set     bool
	found   bool
	body    []byte
	expires time.Time
}

func newNodeSource(base string, static NodeFacts, clock func() time.Time, log *slog.Logger) *nodeSource {
	s := &nodeSource{static: static, clock: clock, log: log}
	if static.Region != "" {
		s.staticDoc = marshalIdentityDocument(identityDocument{
			AccountID:        static.AccountID,
			Architecture:     ec2Architecture(runtime.GOARCH),
			AvailabilityZone: static.AvailabilityZone,
			ImageID:          static.ImageID,
			InstanceID:       static.InstanceID,
			InstanceType:     static.InstanceType,
			PrivateIP:        static.PrivateIP,
			Region:           static.Region,
			Version:          identityDocVersion,
		})
	}
	if base != "" {
		s.node = newNodeClient(base, clock)
	}
	return s
}

// lookup returns f's value. refuseNotFound means the node has no such fact; refuseNodeUnavailable that it could not be
// fetched and nothing usable is cached.
func (s *nodeSource) lookup(ctx context.Context, f fact) ([]byte, refusal) {
	if s.node == nil {
		if v := s.staticValue(f); v != nil {
			return v, refuseNone
		}
		return nil, refuseNotFound
	}
	s.mu.Lock()
	e := s.cache[f]
	s.mu.Unlock()
	if !e.set || !s.clock().Before(e.expires) {
		// The fetch is shared, so it runs on no single caller's cancellation; each caller waits on its own ctx.
		fctx := context.WithoutCancel(ctx)
		ch := s.flight.DoChan(f.canonicalPath(), func() (any, error) { return s.refresh(fctx, f) })
		select {
		case res := <-ch:
			if res.Err != nil {
				return s.fallback(f, e, res.Err)
			}
			e = res.Val.(cachedFact)
		case <-ctx.Done():
			return nil, refuseNodeUnavailable
		}
	}
	if !e.found {
		if f == factRegion && s.static.Region != "" {
			return []byte(s.static.Region), refuseNone
		}
		return nil, refuseNotFound
	}
	return e.body, refuseNone
}

// fallback answers when the node's IMDS failed: a stale value beats none (node facts do not change under a running
// instance), then the static region.
func (s *nodeSource) fallback(f fact, stale cachedFact, err error) ([]byte, refusal) {
	switch {
	case stale.set && stale.found:
		s.log.Warn("node IMDS unavailable, serving cached node fact", "path", f.canonicalPath(), "error", err)
		return stale.body, refuseNone
	case f == factRegion && s.static.Region != "":
		return []byte(s.static.Region), refuseNone
	case f == factIdentityDoc && s.staticDoc != nil:
		return s.staticDoc, refuseNone
	}
	s.log.Warn("node IMDS unavailable", "path", f.canonicalPath(), "error", err)
	return nil, refuseNodeUnavailable
}

func (s *nodeSource) staticValue(f fact) []byte {
	var v string
	switch f {
	case factInstanceID:
		v = s.static.InstanceID
	case factInstanceType:
		v = s.static.InstanceType
	case factAMIID:
		v = s.static.ImageID
	case factLocalIPv4:
		v = s.static.PrivateIP
	case factRegion:
		v = s.static.Region
	case factAZ:
		v = s.static.AvailabilityZone
	case factIdentityDoc:
		return s.staticDoc
	}
	if v == "" {
		return nil
	}
	return []byte(v)
}

func (s *nodeSource) refresh(ctx context.Context, f fact) (cachedFact, error) {
	body, found, err := s.node.fetch(ctx, f.canonicalPath())
	if err == nil && found && f == factIdentityDoc {
		body, err = s.sanitiseIdentityDocument(body)
	}
	if err != nil {
		// Keep a stale value a little longer so a failing node IMDS is not asked again on every request.
		s.mu.Lock()
		if s.cache[f].set {
			s.cache[f].expires = s.clock().Add(staleRetry)
		}
		s.mu.Unlock()
		return cachedFact{}, err
	}
	e := cachedFact{set: true, found: found, body: body, expires: s.clock().Add(nodeFactTTL)}
	s.mu.Lock()
	s.cache[f] = e
	s.mu.Unlock()
	return e, nil
}

// NodeClient asks the node's own IMDS for the allow-list's paths over IMDSv2, or without a token where the node's IMDS
// has none, as the SDKs do. It is the one client for the node's IMDS: the IMDS face's node facts and the agent's
// region lookup both use it.
type NodeClient struct {
	base   string // bare base URL (parseUpstream)
	client *http.Client
	clock  func() time.Time

	mu       sync.Mutex
	token    string
	tokenExp time.Time
	v1       bool // the node's IMDS refused the token PUT (403/404/405): GET without a token until a 401
}

// NewNodeClient returns a client for the node's IMDS at upstream, a bare base URL such as "http://169.254.169.254".
func NewNodeClient(upstream string) (*NodeClient, error) {
	base, err := parseUpstream(upstream)
	if err != nil {
		return nil, err
	}
	if base == "" {
		return nil, errors.New("no upstream IMDS URL")
	}
	return newNodeClient(base, time.Now), nil
}

func newNodeClient(base string, clock func() time.Time) *NodeClient {
	return &NodeClient{
		base:  base,
		clock: clock,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                 nil, // the node's IMDS is link-local: no proxy from the environment may see it
				DialContext:           (&net.Dialer{Timeout: time.Second}).DialContext,
				ResponseHeaderTimeout: time.Second,
				MaxIdleConnsPerHost:   2,
				IdleConnTimeout:       30 * time.Second,
				DisableCompression:    true,
			},
			// A redirect would make the path the upstream's choice; the allow-list's constants are the only paths.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Timeout:       upstreamTimeout,
		},
	}
}

// Region returns the node's region from its instance identity document, where the SDKs' GetRegion reads it.
func (c *NodeClient) Region(ctx context.Context) (string, error) {
	body, found, err := c.fetch(ctx, pathIdentityDoc)
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("GET %s: status %d", pathIdentityDoc, http.StatusNotFound)
	}
	var d identityDocument
	if err := json.Unmarshal(body, &d); err != nil {
		return "", fmt.Errorf("instance identity document: %w", err)
	}
	if !ValidRegion(d.Region) {
		// Quoted only when it looks like a region: the node IMDS's words stay out of the agent's logs otherwise.
		return "", errors.New("instance identity document has no region, or none of the form us-east-1")
	}
	return d.Region, nil
}

// ValidRegion reports whether s has the form of an AWS region name, words then a number (us-east-1,
// us-gov-west-1, cn-north-1, eu-isoe-west-1, eusc-de-east-1): a garbled one would have every STS call fail at a host
// that does not exist.
func ValidRegion(s string) bool {
	parts := strings.Split(s, "-")
	if len(parts) < 3 {
		return false
	}
	for i, p := range parts {
		if p == "" {
			return false
		}
		for _, c := range []byte(p) {
			letter, digit := c >= 'a' && c <= 'z', c >= '0' && c <= '9'
			if i < len(parts)-1 && !letter || i == len(parts)-1 && !digit {
				return false
			}
		}
	}
	return true
}

// fetch GETs one canonical path from the node's IMDS over IMDSv2, re-fetching the token once on a 401.
func (c *NodeClient) fetch(ctx context.Context, canonicalPath string) (body []byte, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, upstreamTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		tok, err := c.upstreamToken(ctx)
		if err != nil {
			return nil, false, err
		}
		status, body, _, err := c.do(ctx, http.MethodGet, canonicalPath, headerToken, tok)
		if err != nil {
			return nil, false, err
		}
		switch {
		case status == http.StatusOK:
			return body, true, nil
		case status == http.StatusNotFound:
			return nil, false, nil
		case status == http.StatusUnauthorized && attempt == 0:
			c.dropToken()
			continue
		}
		return nil, false, fmt.Errorf("GET %s: status %d", canonicalPath, status)
	}
}

func (c *NodeClient) upstreamToken(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.v1 {
		return "", nil
	}
	now := c.clock()
	if c.token != "" && now.Before(c.tokenExp) {
		return c.token, nil
	}
	status, body, granted, err := c.do(ctx, http.MethodPut, pathToken, headerTokenTTL, strconv.Itoa(upstreamTokenTTL))
	if err != nil {
		return "", err
	}
	switch status {
	case http.StatusOK:
	case http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed:
		c.v1 = true // what the SDKs do: this IMDS has no tokens
		return "", nil
	default:
		return "", fmt.Errorf("PUT %s: status %d", pathToken, status)
	}
	ttl, ok := parseTTL(granted)
	if !ok || ttl > upstreamTokenTTL {
		ttl = upstreamTokenTTL
	}
	c.token = string(body)
	// Renew early so a token never expires between our check and the node's.
	c.tokenExp = now.Add(time.Duration(ttl) * time.Second * 9 / 10)
	return c.token, nil
}

func (c *NodeClient) dropToken() {
	c.mu.Lock()
	c.token, c.v1 = "", false
	c.mu.Unlock()
}

// do sends one request to the node's IMDS and returns the status, the body and the granted token TTL header.
// canonicalPath is always one of the allow-list's constants.
func (c *NodeClient) do(ctx context.Context, method, canonicalPath, header, value string) (int, []byte, []string, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+canonicalPath, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	if value != "" {
		req.Header.Set(header, value)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("%s %s: %w", method, canonicalPath, err)
	}
	if len(body) > maxUpstreamBody {
		return 0, nil, nil, fmt.Errorf("%s %s: response larger than %d bytes", method, canonicalPath, maxUpstreamBody)
	}
	return resp.StatusCode, body, resp.Header.Values(headerTokenTTL), nil
}

// identityDocument is the subset of the instance identity document SDKs read (region chains, G2's
// GetInstanceIdentityDocument). Re-encoding it drops everything else the node's IMDS might add.
// identityDocument leaves out what it does not know, rather than name an instance "": the fallback document, with the
// node's IMDS out of reach, knows the region the agent runs with and little else.
type identityDocument struct {
	AccountID        string `json:"accountId,omitempty"`
	Architecture     string `json:"architecture"`
	AvailabilityZone string `json:"availabilityZone,omitempty"`
	ImageID          string `json:"imageId,omitempty"`
	InstanceID       string `json:"instanceId,omitempty"`
	InstanceType     string `json:"instanceType,omitempty"`
	PendingTime      string `json:"pendingTime,omitempty"` // RFC 3339 or absent: G2 fails on ""
	PrivateIP        string `json:"privateIp,omitempty"`
	Region           string `json:"region"`
	Version          string `json:"version"`
}

func (s *nodeSource) sanitiseIdentityDocument(body []byte) ([]byte, error) {
	var d identityDocument
	if err := json.Unmarshal(body, &d); err != nil {
		return nil, fmt.Errorf("instance identity document: %w", err)
	}
	if _, err := time.Parse(time.RFC3339, d.PendingTime); err != nil {
		d.PendingTime = ""
	}
	if d.Region == "" {
		d.Region = s.static.Region
	}
	if d.Region == "" {
		return nil, errors.New("instance identity document has no region")
	}
	if d.Version == "" {
		d.Version = identityDocVersion
	}
	return marshalIdentityDocument(d), nil
}

func marshalIdentityDocument(d identityDocument) []byte {
	b, _ := json.MarshalIndent(d, "", "  ") // cannot fail: strings only
	return b
}

// ec2Architecture names GOARCH the way the identity document does.
func ec2Architecture(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "386":
		return "i386"
	}
	return goarch
}
