package agent

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/iamlet/iamlet/agent/satoken"
)

// answers is a whoAmI that gives its errors in turn (errHang: no answer until the request's context ends), then the
// agent's ServiceAccount.
type answers struct {
	errs  []error
	calls int
}

var errHang = errors.New("hang")

func (a *answers) WhoAmI(ctx context.Context) (authv1.UserInfo, error) {
	a.calls++
	if a.calls <= len(a.errs) {
		if a.errs[a.calls-1] == errHang {
			<-ctx.Done()
			return authv1.UserInfo{}, ctx.Err()
		}
		return authv1.UserInfo{}, a.errs[a.calls-1]
	}
	return authv1.UserInfo{Username: "system:serviceaccount:iamlet-system:iamlet",
		Extra: map[string]authv1.ExtraValue{nodeNameExtra: {"node-a"}}}, nil
}

// TestOwnServiceAccountOutlastsABlip: an apiserver that could not answer (503, 429, a timeout) is asked again for
// up to whoAmIWait, rather than the agent exiting into a crash loop that relists the cluster each time; one that
// answered no is not asked again.
func TestOwnServiceAccountOutlastsABlip(t *testing.T) {
	unavailable := apierrors.NewServiceUnavailable("etcd leader changed")
	gr := schema.GroupResource{Group: "authentication.k8s.io", Resource: "selfsubjectreviews"}
	for _, c := range []struct {
		name    string
		errs    []error
		calls   int           // 0: any number
		wait    time.Duration // at least this long before answering
		wantErr bool
	}{
		{"answered", nil, 1, 0, false},
		{"a blip", []error{unavailable, apierrors.NewTooManyRequests("slow down", 1), unavailable}, 4, 0, false},
		{"refused", []error{apierrors.NewForbidden(gr, "", errors.New("no"))}, 1, 0, true},
		{"a request hung", []error{errHang}, 2, whoAmIWait / 3, false},
		{"unanswered throughout", slices.Repeat([]error{unavailable}, 100), 0, whoAmIWait, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				api := &answers{errs: c.errs}
				start := time.Now()
				sa, err := ownServiceAccount(t.Context(), api, satoken.AsNode, "node-a")
				if (err != nil) != c.wantErr {
					t.Fatalf("ownServiceAccount = %v, %v; want error %v", sa, err, c.wantErr)
				}
				if c.calls != 0 && api.calls != c.calls {
					t.Errorf("%d calls, want %d", api.calls, c.calls)
				}
				if took := time.Since(start); took < c.wait {
					t.Errorf("answered after %s, want %s at least", took, c.wait)
				}
				if !c.wantErr && sa != (serviceAccountRef{namespace: "iamlet-system", name: "iamlet"}) {
					t.Errorf("ownServiceAccount = %+v, want iamlet-system/iamlet", sa)
				}
			})
		})
	}
}
