package roles_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/roles"
)

type gatedAPI struct{ sas, namespaces *kubetest.Gate }

func (a gatedAPI) ServiceAccounts() cache.ListerWatcher { return a.sas }
func (a gatedAPI) Namespaces() cache.ListerWatcher      { return a.namespaces }

// TestRefusedListNamesNoRole: a reflector keeps what it last saw through any error; once the apiserver refuses the
// list or watch of ServiceAccounts or of Namespaces, a role annotation or an allow-list may have changed since, so
// RoleFor names no role (kube.ErrRefused, the agent's 503) until the store holds a list the apiserver answered since,
// and the handlers hear when it does.
func TestRefusedListNamesNoRole(t *testing.T) {
	for _, refused := range []string{"ServiceAccounts", "Namespaces"} {
		t.Run(refused, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := fake.NewClientset(namespace(ptr(reader)), serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader}))
				k := kubetest.Client{Interface: client}
				api := gatedAPI{sas: kubetest.NewGate("serviceaccounts", k.ServiceAccounts()), namespaces: kubetest.NewGate("namespaces", k.Namespaces())}
				g := map[string]*kubetest.Gate{"ServiceAccounts": api.sas, "Namespaces": api.namespaces}[refused]
				m := roles.New(api, roles.Config{})
				calls := 0
				m.AddHandler(func() { calls++ })
				ctx, cancel := context.WithCancel(t.Context())
				m.Start(ctx)
				defer func() { cancel(); m.Shutdown() }()
				synctest.Wait()
				if r, err := m.RoleFor("ns", "app"); err != nil || r.ARN != reader || m.Refused() != nil {
					t.Fatalf("before the refusal: RoleFor = %q, %v; Refused = %v; want %s, nil, nil", r.ARN, err, m.Refused(), reader)
				}

				g.Refuse(true)
				time.Sleep(time.Minute) // the watch ended: past the reflector's back-off it lists again, and is refused
				synctest.Wait()
				r, err := m.RoleFor("ns", "app")
				if !errors.Is(err, kube.ErrRefused) {
					t.Errorf("while the apiserver refuses the list of %s: RoleFor = %q, %v; want kube.ErrRefused", refused, r.ARN, err)
				}
				if err := m.Refused(); !errors.Is(err, kube.ErrRefused) || !strings.Contains(err.Error(), refused) {
					t.Errorf("Refused() = %v, want kube.ErrRefused naming %s", err, refused)
				}

				calls = 0
				g.Refuse(false)
				// Past the back-off and the error handler's: apimachinery keeps the last error's time in a global,
				// which a test outside this bubble may have set in real time, decades after the bubble's clock.
				time.Sleep(50 * 365 * 24 * time.Hour)
				synctest.Wait()
				if r, err := m.RoleFor("ns", "app"); err != nil || r.ARN != reader || m.Refused() != nil {
					t.Errorf("once answered again: RoleFor = %q, %v; Refused = %v; want %s, nil, nil", r.ARN, err, m.Refused(), reader)
				}
				// Nothing changed meanwhile, but the agent left its cache alone while refused: it must hear the end.
				if calls == 0 {
					t.Error("the refusal ended without a handler call")
				}
			})
		})
	}
}
