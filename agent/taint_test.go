package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/iamlet/iamlet/agent/kube/kubetest"
)

const testTaint = "iamlet.dev/agent-not-ready"

func taintedNode(taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Spec: corev1.NodeSpec{Taints: taints}}
}

func taintKeys(t *testing.T, kube *fake.Clientset) []string {
	t.Helper()
	n, err := kube.CoreV1().Nodes().Get(context.Background(), "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, x := range n.Spec.Taints {
		keys = append(keys, x.Key)
	}
	return keys
}

// TestStartupTaintWaitsForReadiness: nothing is read or written while the agent is not ready; once it is, only the
// start-up taint goes and the node's other taints stay.
func TestStartupTaintWaitsForReadiness(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		other := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
		kube := fake.NewClientset(taintedNode(corev1.Taint{Key: testTaint, Effect: corev1.TaintEffectNoSchedule}, other))
		var ready atomic.Bool
		var present atomic.Int32
		present.Store(-1)
		s := startupTaint{nodes: kubetest.Client{Interface: kube}, node: "node-1", key: testTaint, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			present: func(p bool) { present.Store(int32(b2f(p))) }}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go s.run(ctx, ready.Load)

		time.Sleep(time.Minute)
		synctest.Wait()
		if n := len(kube.Actions()); n != 0 {
			t.Fatalf("%d API calls before the agent was ready: %v", n, kube.Actions())
		}
		ready.Store(true)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := taintKeys(t, kube); len(got) != 1 || got[0] != "dedicated" {
			t.Errorf("taints after removal = %v, want only the node's own [dedicated]", got)
		}
		if present.Load() != 0 {
			t.Errorf("taint gauge = %d, want 0 once removed", present.Load())
		}

		// Registered again (a kubelet restart): gone again within a recheck, but only while the agent is ready.
		if _, err := kube.CoreV1().Nodes().Update(t.Context(), taintedNode(corev1.Taint{Key: testTaint, Effect: corev1.TaintEffectNoSchedule}, other), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ready.Store(false)
		time.Sleep(3 * taintRecheck)
		synctest.Wait()
		if got := taintKeys(t, kube); len(got) != 2 {
			t.Errorf("taints while not ready = %v, want both kept", got)
		}
		ready.Store(true)
		time.Sleep(taintRecheck)
		synctest.Wait()
		if got := taintKeys(t, kube); len(got) != 1 || got[0] != "dedicated" {
			t.Errorf("taints a recheck after the taint came back = %v, want only [dedicated]", got)
		}
	})
}

// TestStartupTaintAbsentIsOneReadAMinute: a node registered without the taint is read once a minute and left alone.
func TestStartupTaintAbsentIsOneReadAMinute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kube := fake.NewClientset(taintedNode())
		s := startupTaint{nodes: kubetest.Client{Interface: kube}, node: "node-1", key: testTaint, log: slog.New(slog.NewTextHandler(io.Discard, nil)), present: func(bool) {}}
		ctx, cancel := context.WithCancel(t.Context())
		go s.run(ctx, func() bool { return true })
		time.Sleep(10*taintRecheck - time.Second)
		synctest.Wait()
		cancel()
		acts := kube.Actions()
		for _, a := range acts {
			if a.GetVerb() != "get" {
				t.Errorf("action %v on an untainted node, want only reads", a)
			}
		}
		if len(acts) != 10 {
			t.Errorf("%d reads in ten minutes, want 10", len(acts))
		}
	})
}

// TestStartupTaintRetries: a refused update (admission, a conflict) is retried until the taint is gone; the gauge
// says the node is still tainted meanwhile.
func TestStartupTaintRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kube := fake.NewClientset(taintedNode(corev1.Taint{Key: testTaint, Effect: corev1.TaintEffectNoSchedule}))
		var refusals atomic.Int32
		kube.PrependReactor("update", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
			switch refusals.Add(1) {
			case 1:
				return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "nodes"}, "node-1", errors.New("changed"))
			case 2:
				return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "node-1", errors.New("denied by policy"))
			}
			return false, nil, nil
		})
		var sawPresent atomic.Bool
		s := startupTaint{nodes: kubetest.Client{Interface: kube}, node: "node-1", key: testTaint, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			present: func(p bool) { sawPresent.Store(sawPresent.Load() || p) }}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go s.run(ctx, func() bool { return true })
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := taintKeys(t, kube); len(got) != 0 {
			t.Errorf("taints = %v, want none", got)
		}
		if refusals.Load() != 3 || !sawPresent.Load() {
			t.Errorf("update attempts = %d (want 3), gauge showed the taint: %v", refusals.Load(), sawPresent.Load())
		}
	})
}
