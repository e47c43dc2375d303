// Package satoken mints pod-bound ServiceAccount tokens with the TokenRequest API: the web identity
// the agent trades with STS. Bound to the pod, so the apiserver mints it only while the pod exists;
// STS checks only its expiry, so it is asked for the shortest lifetime and traded at once.
// (The IMDSv2 session tokens pods present to the metadata face are another thing, the metadata package's.)
package satoken

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
)

// MinTTL is the shortest lifetime the apiserver grants. The token is used once, at once, so the agent
// asks for no more.
const MinTTL = 10 * time.Minute

// graphLag bounds the quick retries of Token while the apiserver's view of a new pod catches up (50 ms doubling
// to 1.6 s: about 3 s in all, inside the SDKs' retries of a miss).
const graphLag = 1600 * time.Millisecond

// Lagging reports whether err is the apiserver not yet knowing a pod the agent knows: the Node authorizer's "no
// relationship found" (its graph has no edge from the ServiceAccount through the pod to this node yet), or
// NodeRestriction, which reads pods from the apiserver's own cache, not finding the pod, still holding it unbound
// ("scheduled on a different node": a pod's node is set once, by its binding, and the agent only asks for pods it has
// seen bound to its node) or holding an earlier pod of the same name ("does not match the UID in record"). Each clears
// on its own within moments; none is a verdict. The apiserver still decides every retry.
func Lagging(err error) bool {
	if apierrors.IsNotFound(err) {
		return true
	}
	if !apierrors.IsForbidden(err) {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "no relationship found between node") ||
		strings.Contains(msg, "node requested token bound to a pod scheduled on a different node") ||
		strings.Contains(msg, "does not match the UID in record")
}

// Error is a failed token request, classified here, next to the client, so its callers only ask: Retryable (the
// credential cache's backoff) and Refused. Token returns one for every failure; a caller that declines to ask for a
// token (the agent, while minting is not confined) wraps its reason in one.
type Error struct{ Err error }

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether asking again soon may succeed: a pod that is gone or a ServiceAccount that may not mint
// tokens will not get better by retrying soon.
func (e *Error) Retryable() bool {
	if Lagging(e.Err) && apierrors.IsForbidden(e.Err) {
		return true // the apiserver's graph had not caught up with a new pod even after Token's quick retries
	}
	return !(apierrors.IsNotFound(e.Err) || apierrors.IsForbidden(e.Err) || apierrors.IsInvalid(e.Err) || apierrors.IsBadRequest(e.Err))
}

// Refused reports whether err holds a token request the apiserver refused for good (an audience the admission policy
// or the nodes' RBAC does not allow, a pod already gone): STS was never asked.
func Refused(err error) bool {
	var e *Error
	return errors.As(err, &e) && !e.Retryable()
}

// Pod names the pod a token is bound to.
type Pod struct {
	Namespace      string
	Name           string
	UID            types.UID
	ServiceAccount string
}

// API asks for a token of a ServiceAccount: its TokenRequest subresource (kube.Client).
type API interface {
	CreateToken(ctx context.Context, namespace, serviceAccount string, req *authv1.TokenRequest) (*authv1.TokenRequest, error)
}

// Source requests tokens.
type Source struct {
	api API
	ttl time.Duration
}

// New returns a source asking api for tokens of lifetime ttl (MinTTL when shorter).
func New(api API, ttl time.Duration) *Source {
	return &Source{api: api, ttl: max(ttl, MinTTL)}
}

// Token returns a token for p's ServiceAccount, bound to p, for audience. The apiserver refuses it when
// the pod's UID or ServiceAccount do not match, so a stale view of a pod cannot mint a token for another.
// Its errors are *Error.
func (s *Source) Token(ctx context.Context, p Pod, audience string) (string, error) {
	failed := func(err error) error {
		return &Error{Err: fmt.Errorf("token request for %s/%s bound to pod %s: %w", p.Namespace, p.ServiceAccount, p.Name, err)}
	}
	secs := int64(s.ttl / time.Second)
	req := &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}
	out, err := s.api.CreateToken(ctx, p.Namespace, p.ServiceAccount, req)
	// Minting as the node, the Node authorizer and NodeRestriction judge from the apiserver's own view of pods,
	// which can trail the agent's by a moment for a pod that just appeared: ask again briefly before giving up.
	for wait := 50 * time.Millisecond; err != nil && Lagging(err) && wait <= graphLag; wait *= 2 {
		select {
		case <-ctx.Done():
			return "", failed(err)
		case <-time.After(wait):
		}
		out, err = s.api.CreateToken(ctx, p.Namespace, p.ServiceAccount, req)
	}
	if err != nil {
		return "", failed(err)
	}
	if out.Status.Token == "" {
		return "", failed(errors.New("the apiserver returned no token"))
	}
	return out.Status.Token, nil
}
