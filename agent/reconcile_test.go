package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
)

// gatedAPI serves pods, ServiceAccounts and Namespaces from a fake clientset, each through a gate.
type gatedAPI struct{ pods, sas, namespaces *kubetest.Gate }

func (a gatedAPI) Pods(string) cache.ListerWatcher      { return a.pods }
func (a gatedAPI) ServiceAccounts() cache.ListerWatcher { return a.sas }
func (a gatedAPI) Namespaces() cache.ListerWatcher      { return a.namespaces }

type noFetch struct{}

func (noFetch) Fetch(context.Context, creds.Request) (creds.Credentials, error) {
	return creds.Credentials{}, errors.New("not fetched in this test")
}

// TestReconcileLeavesTheCacheAloneWhileRefused: while the apiserver refuses the list of pods or of ServiceAccounts,
// reconciling names no role for anyone; it must not take that for "no pod has a role" and drop every credential set
// (each pod's next request a miss, a burst of STS calls once the refusal ends). Once the relist ends the refusal,
// the cache holds the pods' roles as before.
func TestReconcileLeavesTheCacheAloneWhileRefused(t *testing.T) {
	for _, refused := range []string{"pods", "ServiceAccounts"} {
		t.Run(refused, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				booted := time.Now().Add(-time.Hour)
				k := kubetest.Client{Interface: fake.NewClientset(
					&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}},
					&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app",
						Annotations: map[string]string{roles.AnnotationRoleARN: testRoleARN}}},
					&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-web"},
						Spec:   corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "app"},
						Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5"}},
				)}
				api := gatedAPI{pods: kubetest.NewGate("pods", k.Pods("")), sas: kubetest.NewGate("serviceaccounts", k.ServiceAccounts()),
					namespaces: kubetest.NewGate("namespaces", k.Namespaces())}
				gate := map[string]*kubetest.Gate{"pods": api.pods, "ServiceAccounts": api.sas}[refused]
				index := pods.New(api, "node-a", booted, 0)
				mapper := roles.New(api, roles.Config{})
				ctx, cancel := context.WithCancel(t.Context())
				go index.Run(ctx)
				mapper.Start(ctx)
				defer func() { cancel(); mapper.Shutdown() }()
				synctest.Wait()
				c := creds.New(noFetch{}, creds.Config{})
				reconcile := func() int {
					reconcileCache(index, mapper, c, false, nil, "")
					return c.Len()
				}
				if n := reconcile(); n != 1 {
					t.Fatalf("before the refusal: %d entries, want 1 (web's role)", n)
				}

				gate.Refuse(true)
				time.Sleep(time.Minute) // the watch ended: past the back-off the reflector lists again, and is refused
				synctest.Wait()
				if index.Stale() == nil && mapper.Stale() == nil {
					t.Fatal("no refusal noted")
				}
				if n := reconcile(); n != 1 {
					t.Errorf("while the apiserver refuses the list of %s: %d entries, want web's kept", refused, n)
				}

				gate.Refuse(false)
				// Past the back-off and the error handler's: apimachinery keeps the last error's time in a global,
				// which a test outside this bubble may have set in real time, decades after the bubble's clock.
				time.Sleep(50 * 365 * 24 * time.Hour)
				synctest.Wait()
				if n := reconcile(); n != 1 || index.Stale() != nil || mapper.Stale() != nil {
					t.Errorf("once answered again: %d entries (refusals %v, %v), want 1", n, index.Stale(), mapper.Stale())
				}
			})
		})
	}
}

// TestReconciledWithoutANudge: the cache is reconciled on every nudge and, with none, once per interval, so an entry
// no pod wants (a request added it just as the pod's role changed) does not outlive the next pass by long.
func TestReconciledWithoutANudge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		dirty := make(chan struct{}, 1)
		var passes atomic.Int32
		done := make(chan struct{})
		go func() {
			defer close(done)
			keepReconciled(ctx, dirty, time.Minute, func() { passes.Add(1) })
		}()
		synctest.Wait()
		if n := passes.Load(); n != 1 {
			t.Fatalf("passes at start = %d, want 1", n)
		}
		dirty <- struct{}{}
		synctest.Wait()
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := passes.Load(); n != 2 {
			t.Errorf("passes after a nudge = %d, want 2", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := passes.Load(); n != 3 {
			t.Errorf("passes a minute in, with no further nudge = %d, want 3", n)
		}
		cancel()
		<-done
	})
}
