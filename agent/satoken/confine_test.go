package satoken_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/iamlet/iamlet/agent/satoken"
)

// checkCase is one answer of the apiserver to a confinement check's token request and the verdict it must give.
type checkCase struct {
	name        string
	err         error // the apiserver's answer; nil grants the token
	pass        bool
	notConfined bool
}

// runCheck runs check against each case's answer and asserts its verdict; then asserts what else the test wants.
func runCheck(t *testing.T, name string, check func(context.Context, *satoken.Source) error, cases []checkCase,
	then func(t *testing.T, api *tokenAPI, err error)) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			api := newTokenAPI(t, func(tr *authv1.TokenRequest) (*authv1.TokenRequest, error) {
				if c.err != nil {
					return nil, c.err
				}
				tr.Status.Token = minted
				return tr, nil
			})
			err := check(t.Context(), satoken.New(api, satoken.MinTTL))
			if (err == nil) != c.pass || errors.Is(err, satoken.ErrNotConfined) != c.notConfined {
				t.Errorf("%s = %v, want pass=%v notConfined=%v", name, err, c.pass, c.notConfined)
			}
			then(t, api, err)
		})
	}
}

// TestCheckConfined: only the apiserver's refusal of an unbound token (from NodeRestriction or the admission
// policy) passes; a granted token is ErrNotConfined, and any other refusal or failure is reported as it came.
func TestCheckConfined(t *testing.T) {
	sa := schema.GroupResource{Resource: "serviceaccounts"}
	cases := []checkCase{
		{"NodeRestriction refuses", apierrors.NewForbidden(sa, "iamlet", errors.New("node requested token not bound to a pod")), true, false},
		{"the admission policy refuses", apierrors.NewForbidden(sa, "iamlet", errors.New(
			"ValidatingAdmissionPolicy 'iamlet-token-requests' with binding 'iamlet-token-requests' denied request: iamlet may only request tokens bound to a Pod")), true, false},
		{"granted", nil, false, true},
		{"RBAC refuses the impersonation", apierrors.NewForbidden(schema.GroupResource{Group: "authentication.k8s.io", Resource: "nodes"}, "*",
			errors.New(`User "system:serviceaccount:iamlet-system:iamlet" cannot impersonate:associated-node resource "nodes"`)), false, false},
		{"apiserver unavailable", apierrors.NewServiceUnavailable("down"), false, false},
	}
	check := func(ctx context.Context, s *satoken.Source) error {
		return s.CheckConfined(ctx, "iamlet-system", "iamlet")
	}
	runCheck(t, "CheckConfined", check, cases, func(t *testing.T, api *tokenAPI, _ error) {
		if len(api.got) != 1 {
			t.Fatalf("%d token requests, want 1", len(api.got))
		}
		req := api.got[0].GetObject().(*authv1.TokenRequest)
		if api.got[0].GetNamespace() != "iamlet-system" || req.Spec.BoundObjectRef != nil ||
			len(req.Spec.Audiences) != 1 || req.Spec.Audiences[0] != satoken.CheckAudience || *req.Spec.ExpirationSeconds != 600 {
			t.Errorf("the check asked for %s/%+v, want an unbound 600 s token for %s in iamlet-system", api.got[0].GetNamespace(), req.Spec, satoken.CheckAudience)
		}
	})
}

// TestCheckNoGrant: minting as the node, only RBAC's refusal of the ServiceAccount's own request passes; a token
// granted, or refused only by the admission policy (RBAC allowed it), means a cluster-wide grant is bound.
func TestCheckNoGrant(t *testing.T) {
	sa := schema.GroupResource{Resource: "serviceaccounts"}
	cases := []checkCase{
		{"RBAC refuses", apierrors.NewForbidden(sa, "iamlet", errors.New(
			`User "system:serviceaccount:iamlet-system:iamlet" cannot create resource "serviceaccounts/token" in API group "" in the namespace "iamlet-system"`)), true, false},
		{"granted", nil, false, true},
		{"the admission policy refuses", apierrors.NewForbidden(sa, "iamlet", errors.New(
			"ValidatingAdmissionPolicy 'iamlet-token-requests' with binding 'iamlet-token-requests' denied request: iamlet may only request tokens bound to a Pod")), false, true},
		{"apiserver unavailable", apierrors.NewServiceUnavailable("down"), false, false},
	}
	check := func(ctx context.Context, s *satoken.Source) error {
		return s.CheckNoGrant(ctx, "iamlet-system", "iamlet")
	}
	runCheck(t, "CheckNoGrant", check, cases, func(t *testing.T, _ *tokenAPI, err error) {
		if err != nil && strings.Contains(err.Error(), minted) {
			t.Errorf("CheckNoGrant's error carries the token: %v", err)
		}
	})
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]satoken.Mode{"node": satoken.AsNode, "cluster": satoken.ClusterWide} {
		if got, err := satoken.ParseMode(in); got != want || err != nil {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := satoken.ParseMode("cluster-wide"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
}
