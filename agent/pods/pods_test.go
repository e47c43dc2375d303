package pods_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientfeatures "k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/pods"
)

const node = "node-a"

type podOpt func(*corev1.Pod)

func pod(name string, ips []string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node, ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for i, ip := range ips {
		if i == 0 {
			p.Status.PodIP = ip
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func hostNetwork(p *corev1.Pod)       { p.Spec.HostNetwork = true }
func terminating(p *corev1.Pod) {
	now := metav1.Now()
	p.DeletionTimestamp = &now
}
func noServiceAccount(p *corev1.Pod) { p.Spec.ServiceAccountName = "" }

// booted is when the index's node booted.
var booted = time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)

// sandbox gives the pod the kubelet's PodReadyToStartContainers condition, last changed at.
func sandbox(ready corev1.ConditionStatus, at time.Time) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReadyToStartContainers,
			Status: ready, LastTransitionTime: metav1.NewTime(at), Message: "long text the index need not keep"})
	}
}

// start runs an index over a fake clientset holding objs until the test ends, and waits for it to sync.
// Call it inside a synctest bubble.
func start(t *testing.T, wait time.Duration, objs ...*corev1.Pod) (*pods.Index, *fake.Clientset) {
	t.Helper()
	var ros []runtime.Object
	for _, o := range objs {
		ros = append(ros, o)
	}
	client := fake.NewClientset(ros...)
	ix := pods.New(kubetest.Client{Interface: client}, node, booted, wait)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ix.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	synctest.Wait() // the informer has listed, indexed and gone idle
	if !ix.HasSynced() {
		t.Fatal("HasSynced() = false once the informer is idle, want true")
	}
	select {
	case <-ix.Synced():
	default:
		t.Fatal("Synced() not closed once the informer has synced")
	}
	return ix, client
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name    string
		pods    []*corev1.Pod
		caller  string
		want    string // pod name; "" when an error is wanted
		wantErr error
	}{
		{"ipv4", []*corev1.Pod{pod("web", []string{"10.0.0.5"})}, "10.0.0.5", "web", nil},
		{"ipv6", []*corev1.Pod{pod("web", []string{"fd00:10::5"})}, "fd00:10::5", "web", nil},
		{"dual-stack by ipv4", []*corev1.Pod{pod("web", []string{"10.0.0.5", "fd00:10::5"})}, "10.0.0.5", "web", nil},
		{"dual-stack by ipv6", []*corev1.Pod{pod("web", []string{"10.0.0.5", "fd00:10::5"})}, "fd00:10::5", "web", nil},
		{"ipv6 written long", []*corev1.Pod{pod("web", []string{"fd00:10:0:0:0:0:0:5"})}, "fd00:10::5", "web", nil},
		{"ipv4-mapped caller", []*corev1.Pod{pod("web", []string{"10.0.0.5"})}, "::ffff:10.0.0.5", "web", nil},
		{"ipv6 caller with zone", []*corev1.Pod{pod("web", []string{"fe80::5"})}, "fe80::5%eth0", "web", nil},
		{"pending", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, phase(corev1.PodPending))}, "10.0.0.5", "web", nil},
		{"succeeded", []*corev1.Pod{pod("job", []string{"10.0.0.5"}, phase(corev1.PodSucceeded))}, "10.0.0.5", "", pods.ErrNotFound},
		{"failed", []*corev1.Pod{pod("job", []string{"10.0.0.5"}, phase(corev1.PodFailed))}, "10.0.0.5", "", pods.ErrNotFound},
		{"unknown phase", []*corev1.Pod{pod("job", []string{"10.0.0.5"}, phase(corev1.PodUnknown))}, "10.0.0.5", "", pods.ErrNotFound},
		{"terminating", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, terminating)}, "10.0.0.5", "", pods.ErrNotFound},
		{"ip reused after completion", []*corev1.Pod{
			pod("old", []string{"10.0.0.5"}, phase(corev1.PodSucceeded)),
			pod("new", []string{"10.0.0.5"}),
		}, "10.0.0.5", "new", nil},
		{"ip reused while terminating", []*corev1.Pod{
			pod("old", []string{"10.0.0.5"}, terminating),
			pod("new", []string{"10.0.0.5"}, phase(corev1.PodPending)),
		}, "10.0.0.5", "new", nil},
		{"sandbox ready since the node booted", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted.Add(time.Minute)))}, "10.0.0.5", "web", nil},
		{"sandbox ready as the node booted", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted))}, "10.0.0.5", "web", nil},
		// The node rebooted and the kubelet has not reported the pod's new sandbox yet: its address may be another's.
		{"sandbox from before the node booted", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted.Add(-61*time.Second)))}, "10.0.0.5", "", pods.ErrNotFound},
		// The kernel's boot time moves with a clock stepped after boot: a minute's step is allowed for.
		{"sandbox ready a little before the node's boot time", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted.Add(-time.Minute)))}, "10.0.0.5", "web", nil},
		{"sandbox gone", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionFalse, booted.Add(time.Hour)))}, "10.0.0.5", "", pods.ErrNotFound},
		{"sandbox unknown", []*corev1.Pod{pod("web", []string{"10.0.0.5"}, sandbox(corev1.ConditionUnknown, booted.Add(time.Hour)))}, "10.0.0.5", "", pods.ErrNotFound},
		{"stale address and its new holder", []*corev1.Pod{
			pod("before-reboot", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted.Add(-time.Hour))),
			pod("new", []string{"10.0.0.5"}, sandbox(corev1.ConditionTrue, booted.Add(time.Minute))),
		}, "10.0.0.5", "new", nil},
		{"host network with a sandbox from before the node booted", []*corev1.Pod{
			pod("agent", []string{"192.168.1.10"}, hostNetwork, sandbox(corev1.ConditionTrue, booted.Add(-time.Hour))),
		}, "192.168.1.10", "", pods.ErrHostNetwork},
		{"two live pods", []*corev1.Pod{pod("a", []string{"10.0.0.5"}), pod("b", []string{"10.0.0.5"})}, "10.0.0.5", "", pods.ErrAmbiguous},
		{"two live pods by ipv6", []*corev1.Pod{pod("a", []string{"10.0.0.5", "fd00::5"}), pod("b", []string{"10.0.0.6", "fd00::5"})}, "fd00::5", "", pods.ErrAmbiguous},
		{"host network", []*corev1.Pod{pod("agent", []string{"192.168.1.10"}, hostNetwork)}, "192.168.1.10", "", pods.ErrHostNetwork},
		{"host network sharing with a pod", []*corev1.Pod{
			pod("agent", []string{"192.168.1.10"}, hostNetwork),
			pod("web", []string{"192.168.1.10"}),
		}, "192.168.1.10", "", pods.ErrHostNetwork},
		{"host network sharing with two pods", []*corev1.Pod{
			pod("web", []string{"192.168.1.10"}),
			pod("agent", []string{"192.168.1.10"}, hostNetwork),
			pod("api", []string{"192.168.1.10"}),
		}, "192.168.1.10", "", pods.ErrHostNetwork},
		{"unknown", []*corev1.Pod{pod("web", []string{"10.0.0.5"})}, "10.0.0.6", "", pods.ErrNotFound},
		{"no ip yet", []*corev1.Pod{pod("web", nil, phase(corev1.PodPending))}, "10.0.0.5", "", pods.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ix, _ := start(t, 0, tt.pods...)
				got, err := ix.Lookup(context.Background(), netip.MustParseAddr(tt.caller))
				if tt.wantErr != nil {
					// The index hands its matches back in map order: the answer must not depend on it.
					for range 20 {
						if got, err := ix.Lookup(context.Background(), netip.MustParseAddr(tt.caller)); !errors.Is(err, tt.wantErr) || got.UID != "" {
							t.Fatalf("Lookup(%s) = %+v, %v, want the zero Pod and %v", tt.caller, got, err, tt.wantErr)
						}
					}
					return
				}
				if err != nil || got.Name != tt.want {
					t.Fatalf("Lookup(%s) = %v, %v, want %v", tt.caller, got.Name, err, tt.want)
				}
				if got.UID != types.UID("uid-"+tt.want) || got.Namespace != "ns" || got.ServiceAccount != "sa-"+tt.want {
					t.Errorf("Lookup(%s) = %+v, want UID, namespace and service account of %s", tt.caller, got, tt.want)
				}
			})
		})
	}
}

func TestLookupPodFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix, _ := start(t, 0, pod("web", []string{"10.0.0.5", "fd00::5"}, noServiceAccount))
		got, err := ix.Lookup(context.Background(), netip.MustParseAddr("10.0.0.5"))
		if err != nil {
			t.Fatalf("Lookup() error = %v", err)
		}
		want := pods.Pod{UID: "uid-web", Namespace: "ns", Name: "web", ServiceAccount: "default",
			IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}}
		if got.UID != want.UID || got.Namespace != want.Namespace || got.Name != want.Name ||
			got.ServiceAccount != want.ServiceAccount || got.HostNetwork || !slices.Equal(got.IPs, want.IPs) {
			t.Errorf("Lookup() = %+v, want %+v", got, want)
		}
	})
}

func TestLookupWaitsBoundedTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const wait = 2 * time.Second
		ix, _ := start(t, wait, pod("web", []string{"10.0.0.5"}))
		begin := time.Now()
		_, err := ix.Lookup(context.Background(), netip.MustParseAddr("10.0.0.6"))
		if !errors.Is(err, pods.ErrNotFound) {
			t.Errorf("Lookup(unknown) error = %v, want %v", err, pods.ErrNotFound)
		}
		if waited := time.Since(begin); waited != wait {
			t.Errorf("Lookup(unknown) waited %v, want %v", waited, wait)
		}
	})
}

func TestLookupFindsPodAppearingDuringWait(t *testing.T) {
	tests := []struct {
		name    string
		initial []*corev1.Pod
		change  func(ctx context.Context, client *fake.Clientset) error
	}{
		{"created", nil, func(ctx context.Context, client *fake.Clientset) error {
			_, err := client.CoreV1().Pods("ns").Create(ctx, pod("web", []string{"10.0.0.5"}), metav1.CreateOptions{})
			return err
		}},
		{"ip assigned", []*corev1.Pod{pod("web", nil, phase(corev1.PodPending))}, func(ctx context.Context, client *fake.Clientset) error {
			_, err := client.CoreV1().Pods("ns").UpdateStatus(ctx, pod("web", []string{"10.0.0.5"}), metav1.UpdateOptions{})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ix, client := start(t, time.Minute, tt.initial...)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				begin := time.Now()
				var got pods.Pod
				var err error
				done := make(chan struct{})
				go func() {
					defer close(done)
					got, err = ix.Lookup(ctx, netip.MustParseAddr("10.0.0.5"))
				}()
				synctest.Wait() // the lookup is waiting
				if err := tt.change(context.Background(), client); err != nil {
					cancel()
					<-done
					t.Fatalf("changing the pod: %v", err)
				}
				<-done
				if err != nil || got.Name != "web" {
					t.Errorf("Lookup() = %v, %v, want web", got.Name, err)
				}
				if waited := time.Since(begin); waited != 0 {
					t.Errorf("Lookup() returned after %v, want at once when the pod appears", waited)
				}
			})
		})
	}
}

func TestLookupCancelledDuringWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix, _ := start(t, time.Minute)
		ctx, cancel := context.WithCancel(context.Background())
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err = ix.Lookup(ctx, netip.MustParseAddr("10.0.0.5"))
		}()
		synctest.Wait()
		cancel()
		<-done
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Lookup() with its context cancelled error = %v, want %v", err, context.Canceled)
		}
	})
}

func TestLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix, client := start(t, 0,
			pod("web", []string{"10.0.0.5"}),
			pod("starting", nil, phase(corev1.PodPending)),
			pod("done", []string{"10.0.0.6"}, phase(corev1.PodSucceeded)),
			pod("failed", []string{"10.0.0.7"}, phase(corev1.PodFailed)),
			pod("leaving", []string{"10.0.0.8"}, terminating),
			pod("agent", []string{"192.168.1.10"}, hostNetwork),
		)
		names := func() []string {
			var out []string
			for _, p := range ix.Live() {
				out = append(out, p.Name)
			}
			slices.Sort(out)
			return out
		}
		if got, want := names(), []string{"starting", "web"}; !slices.Equal(got, want) {
			t.Errorf("Live() = %q, want %q", got, want)
		}
		if err := client.CoreV1().Pods("ns").Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting web: %v", err)
		}
		synctest.Wait()
		if got, want := names(), []string{"starting"}; !slices.Equal(got, want) {
			t.Errorf("Live() after deleting web = %q, want %q", got, want)
		}
		if _, err := ix.Lookup(context.Background(), netip.MustParseAddr("10.0.0.5")); !errors.Is(err, pods.ErrNotFound) {
			t.Errorf("Lookup(deleted pod's IP) error = %v, want %v", err, pods.ErrNotFound)
		}
	})
}

// TestHostPod: a caller traced to a pod UID by its cgroup is a live hostNetwork pod of this node or nobody: not an
// ordinary pod with that UID, not a terminating or finished one; a pod not yet indexed is waited for, boundedly.
func TestHostPod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix, client := start(t, time.Second,
			pod("shipper", []string{"192.168.1.10"}, hostNetwork),
			pod("leaving", []string{"192.168.1.10"}, hostNetwork, terminating),
			pod("done", []string{"192.168.1.10"}, hostNetwork, phase(corev1.PodSucceeded)),
			pod("web", []string{"10.0.0.5"}),
		)
		ctx := context.Background()
		if p, err := ix.HostPod(ctx, "uid-shipper"); err != nil || p.Name != "shipper" || p.ServiceAccount != "sa-shipper" {
			t.Errorf("HostPod(shipper) = %+v, %v", p, err)
		}
		for _, uid := range []types.UID{"uid-leaving", "uid-done", "uid-web", "uid-nobody"} {
			if p, err := ix.HostPod(ctx, uid); !errors.Is(err, pods.ErrNotFound) {
				t.Errorf("HostPod(%s) = %+v, %v; want %v", uid, p, err, pods.ErrNotFound)
			}
		}
		if got := ix.LiveHost(); len(got) != 1 || got[0].Name != "shipper" {
			t.Errorf("LiveHost() = %+v, want only shipper", got)
		}
		// A pod created while its caller waits is found.
		found := make(chan error, 1)
		go func() { _, err := ix.HostPod(ctx, "uid-late"); found <- err }()
		time.Sleep(100 * time.Millisecond)
		if _, err := client.CoreV1().Pods("ns").Create(ctx, pod("late", []string{"192.168.1.10"}, hostNetwork), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := <-found; err != nil {
			t.Errorf("HostPod of a pod indexed during the wait: %v", err)
		}
	})
}

// TestUnvouched: the live pods left out of the address index because the kubelet does not vouch for their
// sandbox are counted, so an operator can tell them from strangers.
func TestUnvouched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix, _ := start(t, 0,
			pod("current", []string{"10.0.0.1"}, sandbox(corev1.ConditionTrue, booted.Add(time.Hour))),
			pod("before-reboot", []string{"10.0.0.2"}, sandbox(corev1.ConditionTrue, booted.Add(-time.Hour))),
			pod("sandbox-gone", []string{"10.0.0.3"}, sandbox(corev1.ConditionFalse, booted.Add(time.Hour))),
			pod("no-condition", []string{"10.0.0.4"}),
			pod("done", []string{"10.0.0.5"}, phase(corev1.PodSucceeded), sandbox(corev1.ConditionFalse, booted.Add(time.Hour))),
			pod("host", []string{"192.168.1.10"}, hostNetwork, sandbox(corev1.ConditionTrue, booted.Add(-time.Hour))),
		)
		if got := ix.Unvouched(); got != 2 {
			t.Errorf("Unvouched() = %d, want 2 (before-reboot, sandbox-gone)", got)
		}
	})
}

// gatedPods serves a node's pods through a gate.
type gatedPods struct{ *kubetest.Gate }

func (g gatedPods) Pods(string) cache.ListerWatcher { return g.Gate }

// TestStaleIndexIdentifiesNobody: the index keeps what it last saw through any error. Once the apiserver refuses
// its list or watch (RBAC changed under the agent, a rollback), or has not answered them for kube.StaleAfter (the
// agent cut off from it while the kubelet goes on deleting pods and the CNI reusing their addresses), what it saw
// may name deleted pods, so nobody is identified until it holds a list answered since. A shorter silence changes
// nothing.
func TestStaleIndexIdentifiesNobody(t *testing.T) {
	clientfeaturestesting.SetFeatureDuringTest(t, clientfeatures.WatchListClient, false)
	for _, mode := range []struct {
		name string
		set  func(*kubetest.Gate, bool)
		want error
	}{
		{"refused", (*kubetest.Gate).Refuse, kube.ErrRefused},
		{"cut off", (*kubetest.Gate).CutOff, kube.ErrUnanswered},
	} {
		t.Run(mode.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := fake.NewClientset(pod("web", []string{"10.0.0.5"}))
				api := gatedPods{kubetest.NewGate("pods", kubetest.Client{Interface: client}.Pods(""))}
				ix := pods.New(api, node, booted, time.Second)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				go ix.Run(ctx)
				synctest.Wait()
				ip := netip.MustParseAddr("10.0.0.5")
				identified := func(when, want string) {
					t.Helper()
					if p, err := ix.Lookup(ctx, ip); err != nil || p.Name != want || ix.Stale() != nil {
						t.Errorf("%s: Lookup = %q, %v; Stale = %v; want %s, nil, nil", when, p.Name, err, ix.Stale(), want)
					}
				}
				identified("before", "web")

				// A watch that lasted and then ended is resumed where it left off, not relisted: the path on which
				// answers come back after an outage without the store being replaced.
				time.Sleep(2 * time.Second)
				mode.set(api.Gate, true)
				if mode.want == kube.ErrUnanswered {
					time.Sleep(kube.StaleAfter / 2)
					synctest.Wait()
					identified("unanswered for less than kube.StaleAfter", "web")
				}
				// Meanwhile web is deleted and its address given to another pod; the index cannot hear of it.
				if err := client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), "ns", "web"); err != nil {
					t.Fatal(err)
				}
				if err := client.Tracker().Add(pod("next", []string{"10.0.0.5"})); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Minute) // the watch ended: past the back-off the reflector lists again, and fails
				synctest.Wait()
				if p, err := ix.Lookup(ctx, ip); !errors.Is(err, mode.want) {
					t.Errorf("Lookup = %q, %v; want %v (not the deleted web)", p.Name, err, mode.want)
				}
				if !errors.Is(ix.Stale(), mode.want) {
					t.Errorf("Stale() = %v, want %v", ix.Stale(), mode.want)
				}

				mode.set(api.Gate, false)
				// Past the back-off and the error handler's: apimachinery keeps the last error's time in a global,
				// which a test outside this bubble may have set in real time, decades after the bubble's clock.
				time.Sleep(50 * 365 * 24 * time.Hour)
				synctest.Wait()
				identified("once answered again", "next")
				cancel()
				synctest.Wait()
			})
		})
	}
}
