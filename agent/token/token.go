// Package token mints pod-bound ServiceAccount tokens with the TokenRequest API: the web identity
// the agent trades with STS. Bound to the pod, so the apiserver mints it only while the pod exists;
// STS checks only its expiry, so it is asked for the shortest lifetime and traded at once.
package token

import (
	"context"
	"fmt"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// MinTTL is the shortest lifetime the apiserver grants. The token is used once, at once, so the agent
// asks for no more.
const MinTTL = 10 * time.Minute

// Pod names the pod a token is bound to.
type Pod struct {
	Namespace      string
	Name           string
	UID            types.UID
	ServiceAccount string
}

// Source requests tokens.
type Source struct {
	client kubernetes.Interface
	ttl    time.Duration
}

// New returns a source asking for tokens of lifetime ttl (MinTTL when shorter).
func New(client kubernetes.Interface, ttl time.Duration) *Source {
	return &Source{client: client, ttl: max(ttl, MinTTL)}
}

// Token returns a token for p's ServiceAccount, bound to p, for audience. The apiserver refuses it when
// the pod's UID or ServiceAccount do not match, so a stale view of a pod cannot mint a token for another.
func (s *Source) Token(ctx context.Context, p Pod, audience string) (string, error) {
	secs := int64(s.ttl / time.Second)
	req := &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}
	out, err := s.client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.ServiceAccount, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token request for %s/%s bound to pod %s: %w", p.Namespace, p.ServiceAccount, p.Name, err)
	}
	if out.Status.Token == "" {
		return "", fmt.Errorf("token request for %s/%s bound to pod %s: the apiserver returned no token", p.Namespace, p.ServiceAccount, p.Name)
	}
	return out.Status.Token, nil
}
