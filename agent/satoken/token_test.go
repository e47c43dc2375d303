package satoken_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/satoken"
)

const minted = "eyJhbGciOiJSUzI1NiJ9.minted.sig"

// tokenAPI is a fake clientset whose TokenRequest answers with respond and records what it was asked.
type tokenAPI struct {
	kubetest.Client
	got []k8stesting.CreateAction
}

func newTokenAPI(t *testing.T, respond func(*authv1.TokenRequest) (*authv1.TokenRequest, error)) *tokenAPI {
	t.Helper()
	fc := fake.NewClientset()
	api := &tokenAPI{Client: kubetest.Client{Interface: fc}}
	fc.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		api.got = append(api.got, ca)
		out, err := respond(ca.GetObject().(*authv1.TokenRequest).DeepCopy())
		return true, out, err
	})
	return api
}

func issue(tr *authv1.TokenRequest) (*authv1.TokenRequest, error) {
	tr.Status = authv1.TokenRequestStatus{Token: minted}
	return tr, nil
}

var web = satoken.Pod{Namespace: "ns", Name: "web", UID: "0f8c2b9e-7d41-4b5a-9c3e-2a1b0c9d8e7f", ServiceAccount: "app"}

func TestToken(t *testing.T) {
	tests := []struct {
		name        string
		ttl         time.Duration
		audience    string
		wantSeconds int64
	}{
		{"minimum", satoken.MinTTL, "sts.amazonaws.com", 600},
		{"zero asks the minimum", 0, "sts.amazonaws.com", 600},
		{"below minimum asks the minimum", time.Minute, "sts.amazonaws.com", 600},
		{"longer", time.Hour, "iamlet", 3600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := newTokenAPI(t, issue)
			got, err := satoken.New(api, tt.ttl).Token(context.Background(), web, tt.audience)
			if err != nil || got != minted {
				t.Fatalf("Token() = %q, %v, want %q, nil", got, err, minted)
			}
			if len(api.got) != 1 {
				t.Fatalf("TokenRequests = %d, want 1", len(api.got))
			}
			a := api.got[0]
			if a.GetNamespace() != "ns" || a.GetResource() != (schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}) {
				t.Errorf("TokenRequest to %s in %q, want serviceaccounts in ns", a.GetResource(), a.GetNamespace())
			}
			if name := a.(k8stesting.CreateActionImpl).Name; name != "app" {
				t.Errorf("TokenRequest for service account %q, want app", name)
			}
			spec := a.GetObject().(*authv1.TokenRequest).Spec
			if len(spec.Audiences) != 1 || spec.Audiences[0] != tt.audience {
				t.Errorf("Audiences = %q, want [%q]", spec.Audiences, tt.audience)
			}
			if spec.ExpirationSeconds == nil || *spec.ExpirationSeconds != tt.wantSeconds {
				t.Errorf("ExpirationSeconds = %v, want %d", spec.ExpirationSeconds, tt.wantSeconds)
			}
			if spec.ExpirationSeconds != nil && *spec.ExpirationSeconds < 600 {
				t.Errorf("ExpirationSeconds = %d, want >= 600 (the apiserver's minimum)", *spec.ExpirationSeconds)
			}
			want := authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "web", UID: web.UID}
			if spec.BoundObjectRef == nil || *spec.BoundObjectRef != want {
				t.Errorf("BoundObjectRef = %+v, want %+v", spec.BoundObjectRef, want)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	gr := schema.GroupResource{Resource: "serviceaccounts"}
	tests := []struct {
		name    string
		respond func(*authv1.TokenRequest) (*authv1.TokenRequest, error)
		is      func(error) bool // the apiserver's classification survives wrapping
		refused bool             // for good: not Retryable, and Refused
	}{
		{"pod gone", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "web")
		}, apierrors.IsNotFound, true},
		{"forbidden", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewForbidden(gr, "app", errors.New("denied by admission policy"))
		}, apierrors.IsForbidden, true},
		{"graph still lagging", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewForbidden(gr, "app", errors.New("no relationship found between node 'node-1' and this object"))
		}, apierrors.IsForbidden, false},
		{"uid mismatch", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewBadRequest("the UID in the bound object reference does not match")
		}, apierrors.IsBadRequest, true},
		{"invalid", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewInvalid(schema.GroupKind{Group: "authentication.k8s.io", Kind: "TokenRequest"}, "app", nil)
		}, apierrors.IsInvalid, true},
		{"unavailable", func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
			return nil, apierrors.NewServiceUnavailable("etcd")
		}, apierrors.IsServiceUnavailable, false},
		{"no token", func(tr *authv1.TokenRequest) (*authv1.TokenRequest, error) { return tr, nil }, func(error) bool { return true }, false},
	}
	for _, tt := range tests {
		// synctest: a pod that is gone is asked about again for a few (fake) seconds first; see TestTokenWaitsForTheGraph.
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				got, err := satoken.New(newTokenAPI(t, tt.respond), satoken.MinTTL).Token(context.Background(), web, "sts.amazonaws.com")
				if err == nil || got != "" {
					t.Fatalf("Token() = %q, %v, want an error", got, err)
				}
				if !tt.is(err) {
					t.Errorf("Token() error = %v, want the apiserver's classification kept", err)
				}
				if !strings.Contains(err.Error(), "ns/app") || !strings.Contains(err.Error(), "web") {
					t.Errorf("Token() error = %q, want it to name the service account and pod", err)
				}
				var te *satoken.Error
				if !errors.As(err, &te) {
					t.Fatalf("Token() error = %T, want a *satoken.Error", err)
				}
				if te.Retryable() == tt.refused || satoken.Refused(err) != tt.refused {
					t.Errorf("Token() error %q: Retryable() = %v, Refused = %v, want %v, %v", err, te.Retryable(), satoken.Refused(err), !tt.refused, tt.refused)
				}
			})
		})
	}
}

// TestTokenWaitsForTheGraph: minting as the node, the apiserver can refuse a pod it has not yet seen ("no
// relationship found", from the Node authorizer's graph) or still holds unbound or as an earlier pod of the same name
// (NodeRestriction reads its own cache: seen on a real kubelet, where a container's first request can beat the
// binding to that cache). Token asks again with short, doubling waits, for about three seconds, and then reports the
// refusal; other refusals are not retried.
func TestTokenWaitsForTheGraph(t *testing.T) {
	gr := schema.GroupResource{Resource: "serviceaccounts"}
	lag := apierrors.NewForbidden(gr, "app", errors.New("no relationship found between node 'node-1' and this object"))
	for _, msg := range []string{
		"no relationship found between node 'node-1' and this object",
		"node requested token bound to a pod scheduled on a different node",
		"the UID in the bound object reference (1234) does not match the UID in record. The object might have been deleted and then recreated",
	} {
		if err := apierrors.NewForbidden(gr, "app", errors.New(msg)); !satoken.Lagging(err) {
			t.Errorf("Lagging(%q) = false, want true", msg)
		}
	}
	t.Run("catches up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			calls := 0
			api := newTokenAPI(t, func(tr *authv1.TokenRequest) (*authv1.TokenRequest, error) {
				if calls++; calls <= 2 {
					return nil, lag
				}
				tr.Status.Token = minted
				return tr, nil
			})
			start := time.Now()
			if got, err := satoken.New(api, satoken.MinTTL).Token(t.Context(), web, "sts.amazonaws.com"); got != minted || err != nil {
				t.Fatalf("Token() = %q, %v", got, err)
			}
			if d := time.Since(start); d != 150*time.Millisecond {
				t.Errorf("Token() took %v, want 150ms (waits of 50 and 100)", d)
			}
		})
	})
	t.Run("never catches up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			api := newTokenAPI(t, func(*authv1.TokenRequest) (*authv1.TokenRequest, error) { return nil, lag })
			start := time.Now()
			if _, err := satoken.New(api, satoken.MinTTL).Token(t.Context(), web, "sts.amazonaws.com"); !apierrors.IsForbidden(err) || !satoken.Lagging(err) {
				t.Fatalf("Token() error = %v, want the Node authorizer's refusal", err)
			}
			if d, n := time.Since(start), len(api.got); d != 3150*time.Millisecond || n != 7 {
				t.Errorf("Token() gave up after %v and %d requests, want 3.15s and 7", d, n)
			}
		})
	})
	t.Run("other refusals at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			api := newTokenAPI(t, func(*authv1.TokenRequest) (*authv1.TokenRequest, error) {
				return nil, apierrors.NewForbidden(gr, "app", errors.New(`audience "sts-c.example" not found in pod spec volume`))
			})
			if _, err := satoken.New(api, satoken.MinTTL).Token(t.Context(), web, "sts.amazonaws.com"); err == nil || len(api.got) != 1 {
				t.Errorf("Token() = %v after %d requests, want the refusal after 1", err, len(api.got))
			}
		})
	})
}

// TestRefusedWrapped: the classification holds through wrapping, and only for an Error: STS's refusals are not the
// apiserver's.
func TestRefusedWrapped(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "*", errors.New("cannot impersonate"))
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("fetch: %w", &satoken.Error{Err: forbidden}), true},
		{&satoken.Error{Err: fmt.Errorf("check: %w", satoken.ErrNotConfined)}, false},
		{fmt.Errorf("sts: %w", forbidden), false},
		{nil, false},
	} {
		if got := satoken.Refused(tt.err); got != tt.want {
			t.Errorf("Refused(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
