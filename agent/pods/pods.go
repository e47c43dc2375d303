// Package pods keeps the node's live pods indexed by IP, so the agent can tell which pod sent a request.
// It fails closed: an address that no live pod holds, that two live pods claim, or that belongs to a
// hostNetwork pod identifies nobody.
package pods

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
)

// Pod is what the agent needs to know of a pod.
type Pod struct {
	UID            types.UID
	Namespace      string
	Name           string
	ServiceAccount string
	HostNetwork    bool
	IPs            []netip.Addr
}

// Errors Lookup returns; each means the caller is refused.
var (
	ErrNotFound    = errors.New("no live pod on this node has this address")
	ErrAmbiguous   = errors.New("more than one live pod on this node has this address")
	ErrHostNetwork = errors.New("address belongs to a hostNetwork pod, which cannot be told apart from the node")
)

const (
	byIP  = "ip"
	byUID = "host-uid" // live hostNetwork pods only: they are told apart by their cgroup, not their address
)

// Index is the node's pods, indexed by address, as a reflector keeps them (a pod informer without its queue: the
// index is replaced in the step that ends its staleness, see store).
type Index struct {
	pods      cache.Indexer
	reflector *cache.Reflector
	wait      time.Duration
	booted    time.Time

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every event, to wake waiting lookups
	handlers []func()

	synced   chan struct{} // closed by the first Replace: the initial list is indexed
	syncOnce sync.Once

	stale *kube.Staleness // whether the apiserver refused, or has long not answered, the reflector's list or watch
}

// API lists and watches the pods of every namespace whose fields match a field selector (kube.Client).
type API interface {
	Pods(fieldSelector string) cache.ListerWatcher
}

// New watches the pods scheduled to nodeName, which booted at booted. Lookup waits up to wait for an address not yet
// known.
func New(api API, nodeName string, booted time.Time, wait time.Duration) *Index {
	ix := &Index{wait: wait, booted: booted, changed: make(chan struct{}), synced: make(chan struct{})}
	var lw cache.ListerWatcher
	lw, ix.stale = kube.TrackStaleness("this node's pods", api.Pods(fields.OneTermEqualSelector("spec.nodeName", nodeName).String()))
	ipKeys := func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok || !live(p) || !addressVouched(p, booted) {
			return nil, nil
		}
		return podIPs(p), nil
	}
	ix.pods = cache.NewIndexer(cache.DeletionHandlingMetaNamespaceKeyFunc, cache.Indexers{byIP: ipKeys, byUID: hostUIDKeys})
	ix.reflector = cache.NewReflectorWithOptions(lw, &corev1.Pod{}, store{ix}, cache.ReflectorOptions{Name: "iamlet pods"})
	return ix
}

// Run lists and watches until ctx is done.
func (ix *Index) Run(ctx context.Context) { ix.reflector.RunWithContext(ctx) }

// HasSynced reports whether the initial list has been indexed.
func (ix *Index) HasSynced() bool {
	select {
	case <-ix.synced:
		return true
	default:
		return false
	}
}

// Synced is closed once the initial list has been indexed: what start-up waits on, without polling.
func (ix *Index) Synced() <-chan struct{} { return ix.synced }

// AddHandler registers h, called after every change to the index (the agent uses it to prefetch and evict). Call
// it before Run; h runs on the reflector's goroutine and must not block.
func (ix *Index) AddHandler(h func()) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.handlers = append(ix.handlers, h)
}

func (ix *Index) notify() {
	ix.mu.Lock()
	close(ix.changed)
	ix.changed = make(chan struct{})
	hs := ix.handlers
	ix.mu.Unlock()
	for _, h := range hs {
		h()
	}
}

// store is what the reflector fills: the index, each pod slimmed first. Replace ends staleness, once the index holds
// a list the apiserver answered since: a streamed list's request succeeds long before its last pod arrives.
type store struct{ ix *Index }

func (s store) Add(obj any) error    { return s.done(s.ix.pods.Add(slimmed(obj))) }
func (s store) Update(obj any) error { return s.done(s.ix.pods.Update(slimmed(obj))) }
func (s store) Delete(obj any) error { return s.done(s.ix.pods.Delete(obj)) }
func (s store) Resync() error        { return nil }

func (s store) Replace(list []any, rv string) error {
	for i, obj := range list {
		list[i] = slimmed(obj)
	}
	if err := s.ix.pods.Replace(list, rv); err != nil {
		return err
	}
	s.ix.stale.Answered()
	s.ix.syncOnce.Do(func() { close(s.ix.synced) })
	s.ix.notify()
	return nil
}

// Transformer slims the pods of a streamed list as they arrive.
func (s store) Transformer() cache.TransformFunc { return slim }

func (s store) done(err error) error {
	if err == nil {
		s.ix.notify()
	}
	return err
}

func (ix *Index) changes() <-chan struct{} {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.changed
}

// HostPod returns the live hostNetwork pod of this node with this UID, the identity of a caller traced from its
// socket's cgroup. Like Lookup it waits, up to the configured bound, for a pod not yet indexed.
func (ix *Index) HostPod(ctx context.Context, uid types.UID) (Pod, error) {
	return ix.waitFor(ctx, "hostNetwork pod "+string(uid), func() (Pod, error) {
		objs, err := ix.pods.ByIndex(byUID, string(uid))
		switch {
		case err != nil:
			return Pod{}, fmt.Errorf("index lookup of pod %s: %w", uid, err)
		case len(objs) != 1:
			return Pod{}, fmt.Errorf("hostNetwork pod %s: %w", uid, ErrNotFound)
		}
		return toPod(objs[0].(*corev1.Pod)), nil
	})
}

// LiveHost lists the live hostNetwork pods of the node.
func (ix *Index) LiveHost() []Pod {
	var out []Pod
	for _, o := range ix.pods.List() {
		if p, ok := o.(*corev1.Pod); ok && live(p) && p.Spec.HostNetwork {
			out = append(out, toPod(p))
		}
	}
	return out
}

// Lookup returns the one live pod holding ip. An address not yet indexed is waited for, up to the
// configured bound, because pods often call the metadata service before their IP reaches the API.
func (ix *Index) Lookup(ctx context.Context, ip netip.Addr) (Pod, error) {
	// Pods' addresses are indexed bare: an IPv4-mapped caller is its IPv4 address, and a link-local
	// caller's zone names our interface, not the pod.
	ip = ip.Unmap().WithZone("")
	key := ip.String()
	return ix.waitFor(ctx, key, func() (Pod, error) { return ix.lookup(key) })
}

// waitFor runs lookup until it finds a pod or fails otherwise than ErrNotFound, again after each event, for up to
// the configured bound. While the apiserver refuses the index's list, nobody is identified.
func (ix *Index) waitFor(ctx context.Context, what string, lookup func() (Pod, error)) (Pod, error) {
	var timer *time.Timer
	for {
		if err := ix.Stale(); err != nil {
			return Pod{}, err
		}
		changed := ix.changes() // taken before the read, so no event can slip between them
		p, err := lookup()
		if !errors.Is(err, ErrNotFound) || ix.wait <= 0 {
			return p, err
		}
		if timer == nil {
			timer = time.NewTimer(ix.wait)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-timer.C:
			return Pod{}, err
		case <-ctx.Done():
			return Pod{}, fmt.Errorf("waiting for %s to appear: %w", what, ctx.Err())
		}
	}
}

// lookup finds the pod whose address is key (a bare address's String).
func (ix *Index) lookup(key string) (Pod, error) {
	objs, err := ix.pods.ByIndex(byIP, key)
	if err != nil {
		return Pod{}, fmt.Errorf("index lookup of %s: %w", key, err)
	}
	var found *corev1.Pod
	n := 0
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			if p.Spec.HostNetwork {
				return Pod{}, ErrHostNetwork // whatever else holds the address: it is the node's
			}
			found, n = p, n+1
		}
	}
	switch n {
	case 0:
		return Pod{}, ErrNotFound
	case 1:
		return toPod(found), nil
	default:
		return Pod{}, ErrAmbiguous
	}
}

// Unvouched counts the live pods whose address identifies nobody because the kubelet does not vouch for it
// (sandboxCurrent): after a reboot, those waiting for the kubelet to report their new sandbox.
func (ix *Index) Unvouched() int {
	n := 0
	for _, o := range ix.pods.List() {
		if p, ok := o.(*corev1.Pod); ok && live(p) && len(podAddrs(p)) > 0 && !addressVouched(p, ix.booted) {
			n++
		}
	}
	return n
}

// Stale is kube.ErrRefused or kube.ErrUnanswered, with the apiserver's words, while the index may be stale: from a
// refusal of its list or watch until it holds a list answered since, or once they have failed for kube.StaleAfter.
// Meanwhile nobody is identified: a deleted pod's address may be another's by now.
func (ix *Index) Stale() error { return ix.stale.Err() }

// Live lists the live, non-hostNetwork pods of the node.
func (ix *Index) Live() []Pod {
	var out []Pod
	for _, o := range ix.pods.List() {
		if p, ok := o.(*corev1.Pod); ok && live(p) && !p.Spec.HostNetwork {
			out = append(out, toPod(p))
		}
	}
	return out
}

// live pods are the only ones that may hold an address: a Succeeded, Failed or terminating pod's IP may
// already belong to a new pod.
func live(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	return p.Status.Phase == corev1.PodPending || p.Status.Phase == corev1.PodRunning
}

// addressVouched reports whether a live pod's addresses may be indexed: a hostNetwork pod's are the node's (indexed
// so that they identify nobody); any other's only while its sandbox is current.
func addressVouched(p *corev1.Pod, booted time.Time) bool {
	return p.Spec.HostNetwork || sandboxCurrent(p, booted)
}

// sandboxCurrent reports whether the kubelet vouches for the pod's addresses now: the sandbox that holds them is
// ready (PodReadyToStartContainers) and became so since the node booted. A pod whose sandbox went away (the node
// rebooted, the sandbox was made anew) keeps its old addresses in the API until the kubelet reports new ones, while
// the CNI may already have given them to another pod, which would be served this pod's role. A hostNetwork pod's
// address is the node's and identifies no one anyway. Without the condition (a kubelet before 1.29, or the feature
// off) there is nothing to check. The boot time is the kernel's, wall time less time since boot, so a clock stepped
// after boot moves it: bootSkew spares the sandboxes of a node's first minute such a step would otherwise disown.
func sandboxCurrent(p *corev1.Pod, booted time.Time) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers {
			return c.Status == corev1.ConditionTrue && !c.LastTransitionTime.Time.Before(booted.Add(-bootSkew))
		}
	}
	return true
}

// bootSkew is how far a clock step after boot may move the boot time the kernel reports.
const bootSkew = time.Minute

func hostUIDKeys(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || !live(p) || !p.Spec.HostNetwork {
		return nil, nil
	}
	return []string{string(p.UID)}, nil
}

func podIPs(p *corev1.Pod) []string {
	addrs := podAddrs(p)
	keys := make([]string, len(addrs))
	for i, a := range addrs {
		keys[i] = a.String()
	}
	return keys
}

// podAddrs are the pod's addresses, bare (IPv4-mapped ones as IPv4) and each once.
func podAddrs(p *corev1.Pod) []netip.Addr {
	addrs := make([]netip.Addr, 0, 1+len(p.Status.PodIPs))
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(addrs, a.Unmap()) {
			addrs = append(addrs, a.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return addrs
}

func toPod(p *corev1.Pod) Pod {
	out := Pod{
		UID:            p.UID,
		Namespace:      p.Namespace,
		Name:           p.Name,
		ServiceAccount: p.Spec.ServiceAccountName,
		HostNetwork:    p.Spec.HostNetwork,
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	out.IPs = podAddrs(p)
	return out
}

// slimmed is obj slimmed, or obj when it is no pod.
func slimmed(obj any) any {
	out, _ := slim(obj)
	return out
}

// slim drops everything identification does not read before the index stores a pod.
func slim(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs,
			Conditions: sandboxCondition(p.Status.Conditions)},
	}, nil
}

// sandboxCondition is the one condition identification reads, PodReadyToStartContainers, without its message.
func sandboxCondition(cs []corev1.PodCondition) []corev1.PodCondition {
	for _, c := range cs {
		if c.Type == corev1.PodReadyToStartContainers {
			return []corev1.PodCondition{{Type: c.Type, Status: c.Status, LastTransitionTime: c.LastTransitionTime}}
		}
	}
	return nil
}
