package pods_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientfeatures "k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/iamlet/iamlet/agent/kube/kubetest"
	"github.com/iamlet/iamlet/agent/pods"
)

const benchNode = "bench-node"

// benchIndex runs an index over a fake clientset holding n Running pods of benchNode (a node's worth:
// 110 is the kubelet's default maximum, 250 a large node) until the benchmark ends, and returns it
// synced, with the pods' addresses.
func benchIndex(b *testing.B, n int) (*pods.Index, []netip.Addr) {
	b.Helper()
	// The fake clientset sends no bookmark ending a watch-list stream, so the informer would wait 10 s
	// before falling back to a plain list; ask for the list at once.
	clientfeaturestesting.SetFeatureDuringTest(b, clientfeatures.WatchListClient, false)
	objs := make([]runtime.Object, 0, n)
	ips := make([]netip.Addr, 0, n)
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 14: byte(i >> 8), 15: byte(i)})
		ips = append(ips, ip)
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("pod-%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i))},
			Spec:       corev1.PodSpec{NodeName: benchNode, ServiceAccountName: "sa"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(),
				PodIPs: []corev1.PodIP{{IP: ip.String()}, {IP: v6.String()}}},
		})
	}
	ix := pods.New(kubetest.Client{Interface: fake.NewClientset(objs...)}, benchNode, time.Time{}, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ix.Run(ctx)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for !ix.HasSynced() || len(ix.Live()) < n {
		if time.Now().After(deadline) {
			b.Fatalf("index holds %d pods after 10s, want %d", len(ix.Live()), n)
		}
		time.Sleep(time.Millisecond)
	}
	return ix, ips
}

// BenchmarkLookup is identity lookup on the request path: source address to the one live pod.
func BenchmarkLookup(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{110, 250} {
		ix, ips := benchIndex(b, n)
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := ix.Lookup(ctx, ips[i%len(ips)]); err != nil {
					b.Fatalf("Lookup(%s) error = %v", ips[i%len(ips)], err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("pods=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := ix.Lookup(ctx, ips[i%len(ips)]); err != nil {
						b.Errorf("Lookup(%s) error = %v", ips[i%len(ips)], err)
						return
					}
					i++
				}
			})
		})
	}
	ix, _ := benchIndex(b, 110)
	b.Run("unknown", func(b *testing.B) {
		stranger := netip.MustParseAddr("10.9.9.9")
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ix.Lookup(ctx, stranger); err == nil {
				b.Fatalf("Lookup(%s) found a pod, want ErrNotFound", stranger)
			}
		}
	})
}

// BenchmarkLive is the list the agent rebuilds its wanted cache entries from on every pod,
// ServiceAccount or Namespace event.
func BenchmarkLive(b *testing.B) {
	for _, n := range []int{110, 250} {
		ix, _ := benchIndex(b, n)
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got := len(ix.Live()); got != n {
					b.Fatalf("len(Live()) = %d, want %d", got, n)
				}
			}
		})
	}
}
