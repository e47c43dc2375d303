package satoken

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Mode is the identity tokens are minted with.
type Mode string

const (
	// AsNode mints as the agent's own node (constrained impersonation, Kubernetes 1.35+): the Node authorizer
	// and NodeRestriction then allow tokens only for ServiceAccounts of pods on that node, bound to those pods.
	AsNode Mode = "node"
	// ClusterWide mints as the agent's ServiceAccount with direct RBAC, narrowed only by the admission policy:
	// the agent's token on any node can mint for every ServiceAccount in the cluster.
	ClusterWide Mode = "cluster"
)

// ParseMode reads a --token-minting value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case AsNode, ClusterWide:
		return m, nil
	}
	return "", fmt.Errorf("token minting %q: want %q or %q", s, AsNode, ClusterWide)
}

// Describe is how status, readiness detail and logs name the mode.
func (m Mode) Describe() string {
	if m == ClusterWide {
		return "cluster-wide minting"
	}
	return "node-confined minting"
}

// CheckAudience is the audience of the confinement check's token: no STS trusts it, so a token granted by
// mistake is useless there.
const CheckAudience = "iamlet.dev/confinement-check"

// ErrNotConfined means the apiserver granted a token it must refuse, or would have.
var ErrNotConfined = errors.New("token minting is not confined")

// CheckConfined asks, with the identity tokens are minted with, for a token the apiserver must refuse: one for
// the agent's own ServiceAccount, bound to no object. As the node, NodeRestriction refuses it ("node requested
// token not bound to a pod"); cluster-wide, the admission policy does ("iamlet may only request tokens bound to
// a Pod"), which proves the policy applies to this installation whatever its namespace or release name.
//
// It returns nil for that refusal, an error wrapping ErrNotConfined when the token is granted, and any other
// error as it came (the apiserver unreachable, minting not permitted at all). A granted token is dropped unused;
// an unbound token cannot be revoked short of deleting the ServiceAccount, so the check asks for the shortest
// lifetime and an audience no STS trusts.
func (s *Source) CheckConfined(ctx context.Context, namespace, serviceAccount string) error {
	err := s.askUnbound(ctx, namespace, serviceAccount)
	switch {
	case err == nil:
		return fmt.Errorf("the apiserver granted a token not bound to any pod (asked for %s/%s, audience %s): %w", namespace, serviceAccount, CheckAudience, ErrNotConfined)
	case apierrors.IsForbidden(err) && strings.Contains(strings.ToLower(err.Error()), "bound to a pod"):
		return nil
	default:
		return fmt.Errorf("confinement check (an unbound token for %s/%s): %w", namespace, serviceAccount, err)
	}
}

// CheckNoGrant asks, as the agent's ServiceAccount itself rather than as its node, for the token CheckConfined asks
// for. Minting as the node, the ServiceAccount holds no grant to request tokens, and only RBAC's refusal passes: a
// grant left bound (the cluster-wide minting RBAC applied once and never pruned) would let root on any node mint for
// every ServiceAccount in the cluster while the agent reported node-confined minting. A refusal by anything after
// RBAC (the admission policy) means RBAC allowed it. Errors are as CheckConfined's.
func (s *Source) CheckNoGrant(ctx context.Context, namespace, serviceAccount string) error {
	err := s.askUnbound(ctx, namespace, serviceAccount)
	switch {
	case apierrors.IsForbidden(err) && strings.Contains(err.Error(), `cannot create resource "serviceaccounts/token"`):
		return nil
	case err == nil || apierrors.IsForbidden(err):
		return fmt.Errorf("the agent's ServiceAccount %s/%s may request tokens itself, not only as its node (a cluster-wide minting grant is bound): %w",
			namespace, serviceAccount, ErrNotConfined)
	default:
		return fmt.Errorf("confinement check (a token as the ServiceAccount %s/%s itself): %w", namespace, serviceAccount, err)
	}
}

// askUnbound asks for the checks' token: for the ServiceAccount itself, bound to no object, for CheckAudience, for
// the shortest lifetime. A token granted is dropped unused.
func (s *Source) askUnbound(ctx context.Context, namespace, serviceAccount string) error {
	secs := int64(MinTTL.Seconds())
	_, err := s.api.CreateToken(ctx, namespace, serviceAccount, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{CheckAudience}, ExpirationSeconds: &secs},
	})
	return err
}
