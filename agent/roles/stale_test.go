package roles_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
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

// TestStaleListNamesNoRole: a reflector keeps what it last saw through any error. Once the apiserver refuses the list or
// watch of ServiceAccounts or of Namespaces, or has not answered it for kube.StaleAfter, a role annotation or an
// allow-list may have changed since, so RoleFor names no role (kube.ErrRefused or kube.ErrUnanswered, the agent's
// 503) until the store holds a list the apiserver answered since, and the handlers hear when it does. A shorter
// silence changes nothing.
func TestStaleListNamesNoRole(t *testing.T) {
	modes := []struct {
		name string
		set  func(*kubetest.Gate, bool)
		want error
	}{
		{"refused", (*kubetest.Gate).Refuse, kube.ErrRefused},
		{"cut off", (*kubetest.Gate).CutOff, kube.ErrUnanswered},
	}
	for _, mode := range modes {
		for _, list := range []string{"ServiceAccounts", "Namespaces"} {
			t.Run(mode.name+"/"+list, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					client := fake.NewClientset(namespace(ptr(reader)), serviceAccount("app", map[string]string{roles.AnnotationRoleARN: reader}))
					k := kubetest.Client{Interface: client}
					api := gatedAPI{sas: kubetest.NewGate("serviceaccounts", k.ServiceAccounts()), namespaces: kubetest.NewGate("namespaces", k.Namespaces())}
					g := map[string]*kubetest.Gate{"ServiceAccounts": api.sas, "Namespaces": api.namespaces}[list]
					m := roles.New(api, roles.Config{})
					var calls atomic.Int32 // the two reflectors' goroutines call it
					m.AddHandler(func() { calls.Add(1) })
					ctx, cancel := context.WithCancel(t.Context())
					m.Start(ctx)
					defer func() { cancel(); m.Shutdown() }()
					synctest.Wait()
					served := func(when string) {
						t.Helper()
						if r, err := m.RoleFor("ns", "app"); err != nil || r.ARN != reader || m.Stale() != nil {
							t.Errorf("%s: RoleFor = %q, %v; Stale = %v; want %s, nil, nil", when, r.ARN, err, m.Stale(), reader)
						}
					}
					served("before")

					// A watch that lasted and then ended is resumed where it left off, not relisted: the path on
					// which answers come back after an outage without the store being replaced.
					time.Sleep(2 * time.Second)
					mode.set(g, true)
					if mode.want == kube.ErrUnanswered {
						time.Sleep(kube.StaleAfter / 2)
						synctest.Wait()
						served("unanswered for less than kube.StaleAfter")
					}
					time.Sleep(time.Minute) // the watch ended: past the reflector's back-off it lists again, and fails
					synctest.Wait()
					if r, err := m.RoleFor("ns", "app"); !errors.Is(err, mode.want) {
						t.Errorf("RoleFor = %q, %v; want %v", r.ARN, err, mode.want)
					}
					if err := m.Stale(); !errors.Is(err, mode.want) || !strings.Contains(err.Error(), list) {
						t.Errorf("Stale() = %v, want %v naming %s", err, mode.want, list)
					}

					calls.Store(0)
					mode.set(g, false)
					// Past the back-off and the error handler's: apimachinery keeps the last error's time in a global,
					// which a test outside this bubble may have set in real time, decades after the bubble's clock.
					time.Sleep(50 * 365 * 24 * time.Hour)
					synctest.Wait()
					served("once answered again")
					// Nothing changed meanwhile, but the agent left its cache alone while stale: it must hear the end.
					if calls.Load() == 0 {
						t.Error("the staleness ended without a handler call")
					}
				})
			})
		}
	}
}
