package metadata

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// Config configures the IMDS face.
type Config struct {
	// RequireV2 is EC2's HttpTokens=required: GETs without a token get 401.
	RequireV2 bool
	// TokenKey is the HMAC key for IMDSv2 tokens (at least 32 bytes). Persist it (LoadOrCreateKey) so tokens
	// survive restarts.
	TokenKey []byte
	// Upstream is the base URL of the node's real IMDS for the allow-listed node facts, e.g.
	// "http://169.254.169.254". "" synthesises them from Node.
	Upstream string
	// Node holds static node facts, used when Upstream is "" and as a fallback for the region.
	Node NodeFacts
	// Clock is the time source for token expiry, credential checks and the node fact cache; nil means time.Now.
	Clock func() time.Time
	// TokenScope, if set, names what an IMDSv2 token is bound to beside the caller's address: callers that share an
	// address (hostNetwork pods share the node's) are told apart by it, and one's token is refused from another. ""
	// binds a token to the address alone.
	TokenScope func(*http.Request) string
	// Logger receives one line per request the handler refuses itself (not those the provider refused and logged);
	// nil discards.
	Logger *slog.Logger
}

// NodeFacts are the node facts the face may reveal to pods. Empty fields are answered 404.
type NodeFacts struct{ Region, AvailabilityZone, InstanceID, InstanceType, AccountID, PrivateIP, ImageID string }

func (c *Config) clock() func() time.Time {
	if c.Clock == nil {
		return time.Now
	}
	return c.Clock
}

func loggerOrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// parseUpstream checks that s is a bare http(s) base URL and returns it without a trailing slash; paths are
// appended from the allow-list's constants only.
func parseUpstream(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("upstream IMDS URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("upstream IMDS URL %q: want http://host[:port]", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", errors.New("upstream IMDS URL must be a bare base URL without path, query or user info")
	}
	return u.Scheme + "://" + u.Host, nil
}
