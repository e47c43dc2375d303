package metadata

import (
	"errors"
	"net/http"
)

// Refusal reasons a provider wraps (fmt.Errorf("%w: ...", metadata.ErrUnknownCaller)).
var (
	ErrUnknownCaller = errors.New("caller is not a known pod on this node")
	ErrNoRole        = errors.New("no role for this pod")
	ErrForbidden     = errors.New("role not allowed for this pod")
	ErrUnavailable   = errors.New("credentials temporarily unavailable")
)

// refusal is every way a request can be turned down. Its info is the one table mapping a refusal to an HTTP status,
// a metrics outcome, the text sent to the caller and the container-endpoint error code.
type refusal uint8

const (
	refuseNone refusal = iota
	refuseUnknownCaller
	refuseNoRole
	refuseForbidden
	refuseUnavailable
	refuseNodeUnavailable // a node fact the node's IMDS did not give, with nothing cached
	refuseNodePath        // a path outside the allow-list: user-data, the node role, signatures, other versions, ...
	refuseNotFound        // an allowed shape with nothing behind it (a fact the node lacks)
	refuseOtherRole       // credentials of a role not the caller's: the node's, most likely, or one it had before a change
	refuseBadToken        // an IMDSv2 token that is malformed, expired, or minted for another caller
	refuseTokenRequired   // RequireV2 and no token
	refuseBadTTL          // token PUT without a valid TTL header
	refuseForwarded       // relayed by a proxy: the source address is the proxy's, not the requester's
	refuseBadPath         // undecodable, double-encoded or control characters
	refuseBody            // a request with a body: no metadata request has one
	refuseBadCaller       // RemoteAddr is not an IP:port (never on a real listener)
	refuseMethod
	refuseNoAuthorization // container endpoint without an Authorization header
	refuseBadAuthorization
)

// probe reports whether r may be someone probing for the node's secrets: logged as a warning.
func (r refusal) probe() bool { return r == refuseNodePath || r == refuseOtherRole }

type refusalInfo struct {
	status  int
	outcome outcome
	text    string // sent to the caller after "iamlet: "; never a secret
	code    string // container endpoint {"Code": ...}
}

func (r refusal) info() refusalInfo {
	switch r {
	case refuseUnknownCaller:
		return refusalInfo{http.StatusForbidden, outcomeUnknownPod, ErrUnknownCaller.Error(), "UnknownCaller"}
	case refuseNoRole:
		return refusalInfo{http.StatusNotFound, outcomeNoRole, ErrNoRole.Error(), "NoRole"}
	case refuseForbidden:
		return refusalInfo{http.StatusForbidden, outcomeNotAllowed, ErrForbidden.Error(), "AccessDenied"}
	case refuseUnavailable:
		return refusalInfo{http.StatusServiceUnavailable, outcomeUnavailable, ErrUnavailable.Error(), "ServiceUnavailable"}
	case refuseNodeUnavailable:
		return refusalInfo{http.StatusServiceUnavailable, outcomeUnavailable, "node metadata temporarily unavailable", "ServiceUnavailable"}
	case refuseNodePath:
		return refusalInfo{http.StatusNotFound, outcomeNodePath, "not found", "NotFound"}
	case refuseNotFound, refuseOtherRole:
		return refusalInfo{http.StatusNotFound, outcomeNotFound, "not found", "NotFound"}
	case refuseBadToken:
		return refusalInfo{http.StatusUnauthorized, outcomeBadToken, "invalid or expired token", "InvalidToken"}
	case refuseTokenRequired:
		return refusalInfo{http.StatusUnauthorized, outcomeBadToken, "token required", "InvalidToken"}
	case refuseBadTTL:
		return refusalInfo{http.StatusBadRequest, outcomeBadRequest, "token TTL must be an integer between 1 and 21600", "BadRequest"}
	case refuseForwarded:
		return refusalInfo{http.StatusForbidden, outcomeBadRequest, "requests relayed by a proxy are refused: set NO_PROXY for the metadata address", "Forbidden"}
	case refuseBadPath:
		return refusalInfo{http.StatusBadRequest, outcomeBadRequest, "malformed path", "BadRequest"}
	case refuseBody:
		return refusalInfo{http.StatusBadRequest, outcomeBadRequest, "metadata requests carry no body", "BadRequest"}
	case refuseBadCaller:
		return refusalInfo{http.StatusBadRequest, outcomeBadRequest, "cannot identify caller", "BadRequest"}
	case refuseMethod:
		return refusalInfo{http.StatusMethodNotAllowed, outcomeMethodNotAllowed, "method not allowed", "MethodNotAllowed"}
	case refuseNoAuthorization:
		return refusalInfo{http.StatusUnauthorized, outcomeBadToken, "authorization header required", "InvalidToken"}
	case refuseBadAuthorization:
		return refusalInfo{http.StatusUnauthorized, outcomeBadToken, "invalid authorization token", "InvalidToken"}
	}
	return refusalInfo{http.StatusInternalServerError, outcomeUnavailable, "internal error", "InternalError"}
}

// providerRefusal classifies an error from a CredentialProvider or TokenVerifier. known is false for errors that
// wrap none of the sentinels; they are answered as unavailable (fail closed, say nothing).
func providerRefusal(err error) (r refusal, known bool) {
	switch {
	case errors.Is(err, ErrUnknownCaller):
		return refuseUnknownCaller, true
	case errors.Is(err, ErrNoRole):
		return refuseNoRole, true
	case errors.Is(err, ErrForbidden):
		return refuseForbidden, true
	case errors.Is(err, ErrUnavailable):
		return refuseUnavailable, true
	}
	return refuseUnavailable, false
}
