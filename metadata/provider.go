package metadata

import (
	"context"
	"net/netip"
	"time"
)

// Credentials is one role's credential set as the face serves it.
type Credentials struct {
	RoleName        string // last path segment of the role ARN: what the listing shows
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	LastUpdated     time.Time
	// AccountID may be empty; the extended and container documents then leave "AccountId" out: an empty one would
	// read as an account to SDKs that build account-based endpoints.
	AccountID string
}

// CredentialProvider gives the caller's credentials; the agent implements it (identity by source IP, role, cache).
//
// Errors should wrap one of ErrUnknownCaller, ErrNoRole, ErrForbidden or ErrUnavailable; anything else is answered as
// ErrUnavailable. The error text is never sent to the caller, nor logged by the handler: the provider logs its own
// refusals (RefusalStatus gives it the status the caller gets), so each refused request has one line.
type CredentialProvider interface {
	Credentials(ctx context.Context, caller netip.Addr) (Credentials, error)
}

// TokenVerifier checks the Authorization header a container-credentials client sends (the contents of its
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE). It may return one of the provider errors (ErrForbidden, ...) to choose the
// answer; any other error is answered as an invalid token.
type TokenVerifier interface {
	Verify(ctx context.Context, caller netip.Addr, token string) error
}

// validRoleName reports whether s is a plausible IAM role name ([\w+=,.@-]{1,64}). Anything else would break the
// clients that paste the listing into the next URL, so it is treated as a provider fault.
func validRoleName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '_' || c == '+' || c == '=' || c == ',' || c == '.' || c == '@' || c == '-':
		default:
			return false
		}
	}
	return true
}

// unusable reports why c must not be served, or "" if it may. The agent's cache owns freshness; this only stops a
// provider bug from reaching SDKs as an empty or already expired credential set.
func (c *Credentials) unusable(now time.Time) string {
	switch {
	case !validRoleName(c.RoleName):
		return "invalid role name"
	case c.AccessKeyID == "" || c.SecretAccessKey == "":
		return "empty access key"
	case c.SessionToken == "":
		return "no session token" // served as long-term keys, which AWS refuses
	case c.Expiration.IsZero() || !c.Expiration.After(now):
		return "expired"
	}
	return ""
}
