package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is a pod object in the apiserver plus a network namespace holding its address.
type Pod struct {
	Name, Namespace, ServiceAccount string
	UID                             string
	IP, IPv6                        string
	NetNS                           string
	veth                            string
	n                               int // the address index, 10.200.0.n
	s                               *Stack
	removeNet                       sync.Once
}

// PodOptions shape NewPod.
type PodOptions struct {
	Namespace      string // default "default"
	ServiceAccount string
	// IP reuses an address (the index n of 10.200.0.n) that no live pod holds; 0 allocates one.
	IP int
	// NoStatus leaves the pod without a status IP, so the agent does not know its address.
	NoStatus bool
	// HostNetwork marks the pod hostNetwork (its address is then the node's).
	HostNetwork bool
}

// NewPod creates the pod's network namespace and the Pod object (Running, with its IPs), and removes
// both when the test ends. It may be called from several goroutines at once.
func (s *Stack) NewPod(t TB, name string, o PodOptions) *Pod {
	t.Helper()
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	n, err := s.addrs.get(o.IP)
	if err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	p := &Pod{
		Name: name, Namespace: o.Namespace, ServiceAccount: o.ServiceAccount,
		IP: fmt.Sprintf("10.200.0.%d", n), IPv6: fmt.Sprintf("fd00:200::%x", n),
		NetNS: podNetNS(s.Run, n), veth: podVeth(s.Run, n), n: n, s: s,
	}
	t.Cleanup(p.deleteNetwork)
	if err := p.network(); err != nil {
		t.Fatalf("pod %s network: %v", name, err)
	}
	p.create(t, o)
	return p
}

// The names of pod n's namespace and of the node side of its link (at most 15 bytes: ia + 4 + p + 3).
func podNetNS(run string, n int) string { return fmt.Sprintf("iamlet-%s-p%d", run, n) }
func podVeth(run string, n int) string  { return fmt.Sprintf("ia%sp%d", run, n) }

// Pod address indexes: 10.200.0.1 is the node, .255 the pods' /24 broadcast.
const (
	firstPodAddr = 2
	lastPodAddr  = 254
)

// podAddrs hands out pod address indexes. Never-used ones go first, in order, so a test run sees the addresses it
// always saw; after that, the one released longest ago, so whatever still remembers its last pod (conntrack, the
// agent's index) has had the most time to forget it. An address comes back only once its pod's namespace, link
// and routes are gone: the next pod recreates them under the same names.
type podAddrs struct {
	mu     sync.Mutex
	next   int          // lowest index never handed out (0: firstPodAddr)
	free   []int        // released and checked gone, oldest first
	inUse  map[int]bool // held by a pod whose network has not been deleted
	stuck  map[int]bool // released but something of the old pod remained: never handed out
	reused int
}

// AddressStats is how the pod addresses have been used.
type AddressStats struct {
	InUse  int // held by pods now
	Reused int // handed to a pod after an earlier pod released them
	Stuck  int // released with leftovers of the old pod's network, so never handed out again
}

// PodAddressStats reports how the pod addresses have been used so far.
func (s *Stack) PodAddressStats() AddressStats {
	a := &s.addrs
	a.mu.Lock()
	defer a.mu.Unlock()
	return AddressStats{InUse: len(a.inUse), Reused: a.reused, Stuck: len(a.stuck)}
}

// get takes address want, or the next one by the order above when want is 0.
func (a *podAddrs) get(want int) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inUse == nil {
		a.inUse, a.stuck = map[int]bool{}, map[int]bool{}
		a.next = max(a.next, firstPodAddr)
	}
	if want != 0 {
		return want, a.claim(want)
	}
	for a.next <= lastPodAddr && a.known(a.next) { // taken by an explicit request before its turn
		a.next++
	}
	if a.next <= lastPodAddr {
		a.next++
		a.inUse[a.next-1] = true
		return a.next - 1, nil
	}
	if len(a.free) == 0 {
		return 0, fmt.Errorf("all pod addresses 10.200.0.%d-%d are in use (%d) or stuck (%d)", firstPodAddr, lastPodAddr, len(a.inUse), len(a.stuck))
	}
	n := a.free[0]
	a.free = a.free[1:]
	a.inUse[n] = true
	a.reused++
	return n, nil
}

// claim takes address n on a test's explicit request, as long as no pod holds it (a test gives two pods one
// address through SetStatus, never through the network). Called with mu held.
func (a *podAddrs) claim(n int) error {
	if n < firstPodAddr || n > lastPodAddr {
		return fmt.Errorf("pod address 10.200.0.%d is outside 10.200.0.%d-%d", n, firstPodAddr, lastPodAddr)
	}
	if a.inUse[n] {
		return fmt.Errorf("pod address 10.200.0.%d is still held by a pod; remove that pod first", n)
	}
	if a.stuck[n] {
		return fmt.Errorf("pod address 10.200.0.%d still has leftovers of an earlier pod's network", n)
	}
	if i := indexOf(a.free, n); i >= 0 {
		a.free = append(a.free[:i], a.free[i+1:]...)
		a.reused++
	}
	a.inUse[n] = true
	return nil
}

// known reports whether n has been handed out before (it is held, free or stuck). Called with mu held.
func (a *podAddrs) known(n int) bool { return a.inUse[n] || a.stuck[n] || indexOf(a.free, n) >= 0 }

// release gives n back when nothing of its pod's network is left over; otherwise n is never handed out again, so
// no pod gets an address whose namespace, link or routes still exist.
func (a *podAddrs) release(n int, leftover error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inUse, n)
	if leftover != nil {
		fmt.Fprintf(os.Stderr, "e2e: pod address 10.200.0.%d is not reused: %v\n", n, leftover)
		a.stuck[n] = true
		return
	}
	a.free = append(a.free, n)
}

func indexOf(s []int, v int) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func (p *Pod) network() error {
	v6 := p.IPv6
	return runAll([][]string{
		{"ip", "netns", "add", p.NetNS},
		{"ip", "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		{"ip", "addr", "add", NodeIP + "/32", "dev", p.veth},
		{"ip", "-6", "addr", "add", NodeIPv6 + "/128", "dev", p.veth, "nodad"},
		{"ip", "link", "set", p.veth, "up"},
		{"ip", "route", "add", p.IP + "/32", "dev", p.veth},
		{"ip", "-6", "route", "add", v6 + "/128", "dev", p.veth},
		{"ip", "-n", p.NetNS, "link", "set", "lo", "up"},
		{"ip", "-n", p.NetNS, "addr", "add", p.IP + "/24", "dev", "eth0"},
		{"ip", "-n", p.NetNS, "-6", "addr", "add", v6 + "/64", "dev", "eth0", "nodad"},
		{"ip", "-n", p.NetNS, "link", "set", "eth0", "up"},
		{"ip", "-n", p.NetNS, "route", "add", "default", "via", NodeIP, "dev", "eth0", "onlink"},
		{"ip", "-n", p.NetNS, "-6", "route", "add", "default", "via", NodeIPv6, "dev", "eth0", "onlink"},
	})
}

// deleteNetwork removes the pod's namespace and link, once (Remove and the test's cleanup both call it), and then
// gives its address back.
func (p *Pod) deleteNetwork() {
	p.removeNet.Do(func() {
		_ = exec.Command("ip", "link", "del", p.veth).Run()
		_ = exec.Command("ip", "netns", "delete", p.NetNS).Run()
		p.s.addrs.release(p.n, p.waitNetworkGone(10*time.Second))
	})
}

// waitNetworkGone waits until nothing the next pod at this address would collide with remains: the namespace's
// name, the node side's link (by its current name and the one the next pod will use) and the routes to both
// addresses. Deleting the link removes its routes at once; the deadline only bounds a failure.
func (p *Pod) waitNetworkGone(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := p.networkLeftover()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// networkLeftover names the first part of the pod's network that still exists.
func (p *Pod) networkLeftover() error {
	if _, err := os.Stat(filepath.Join("/run/netns", p.NetNS)); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("namespace %s still exists (%v)", p.NetNS, err)
	}
	for _, link := range []string{p.veth, podVeth(p.s.Run, p.n)} {
		if _, err := net.InterfaceByName(link); err == nil {
			return fmt.Errorf("link %s still exists", link)
		}
	}
	for _, r := range [][]string{{"-4", p.IP + "/32"}, {"-6", p.IPv6 + "/128"}} {
		out, err := exec.Command("ip", r[0], "route", "show", "exact", r[1]).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			return fmt.Errorf("route to %s still exists or cannot be listed (%v): %s", r[1], err, out)
		}
	}
	return nil
}

func (p *Pod) create(t TB, o PodOptions) {
	t.Helper()
	ctx := context.Background()
	api := p.s.Kube.CoreV1().Pods(p.Namespace)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
		Spec: corev1.PodSpec{
			NodeName:                     NodeName,
			ServiceAccountName:           p.ServiceAccount,
			HostNetwork:                  o.HostNetwork,
			AutomountServiceAccountToken: new(bool),
			Containers:                   []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
		},
	}
	created, err := api.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	p.UID = string(created.UID)
	t.Cleanup(func() { p.Delete(t) })
	if o.NoStatus {
		return
	}
	ip, ip6 := p.IP, p.IPv6
	if o.HostNetwork {
		ip, ip6 = NodeIP, NodeIPv6
	}
	p.SetStatus(t, ip, ip6)
}

// SetStatus marks the pod Running with the given addresses, as the kubelet would once the CNI has
// given it an address. Tests use it to make the API lag the network, or to give two pods one address.
func (p *Pod) SetStatus(t TB, ip, ip6 string) {
	t.Helper()
	p.updateStatus(t, func(st *corev1.PodStatus) {
		*st = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}, {IP: ip6}}, HostIP: NodeIP}
	})
}

// SetSandbox gives the pod the kubelet's PodReadyToStartContainers condition: its sandbox ready or not, since at.
func (p *Pod) SetSandbox(t TB, ready bool, at time.Time) {
	t.Helper()
	c := corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionFalse, LastTransitionTime: metav1.NewTime(at)}
	if ready {
		c.Status = corev1.ConditionTrue
	}
	p.updateStatus(t, func(st *corev1.PodStatus) { st.Conditions = []corev1.PodCondition{c} })
}

// updateStatus reads the Pod object, changes its status and writes it back.
func (p *Pod) updateStatus(t TB, change func(*corev1.PodStatus)) {
	t.Helper()
	ctx := context.Background()
	api := p.s.Kube.CoreV1().Pods(p.Namespace)
	cur, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	change(&cur.Status)
	if _, err := api.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set status of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// Delete removes the Pod object at once (there is no kubelet to finish a graceful deletion).
func (p *Pod) Delete(t TB) {
	t.Helper()
	zero := int64(0)
	err := p.s.Kube.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// Remove deletes the Pod object and its network namespace now, freeing its address for another pod.
func (p *Pod) Remove(t TB) {
	t.Helper()
	p.Delete(t)
	p.deleteNetwork()
}

// Result is what a command in the pod printed.
type Result struct {
	Stdout, Stderr string
	Err            error
}

// Output is stdout and stderr together, for leak checks and messages.
func (r Result) Output() string { return r.Stdout + r.Stderr }

// Exec runs argv in the pod's network namespace (for at most 60 s unless ctx has a deadline) with exactly env (plus PATH and HOME): no credentials
// of the machine's leak into the pod.
func (p *Pod) Exec(ctx context.Context, env []string, argv ...string) Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
	}
	args := p.command(env, argv)
	cmd := exec.CommandContext(ctx, "ip", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// command is the `ip netns exec` argument list that runs argv in the pod with exactly env plus the
// base a pod gets: PATH, HOME, a region, IPv4 metadata, and no AWS configuration or credentials files.
func (p *Pod) command(env, argv []string) []string {
	base := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "AWS_CONFIG_FILE=/nonexistent",
		"AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_REGION=us-east-1", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4"}
	return append([]string{"netns", "exec", p.NetNS, "env", "-i"}, append(mergeEnv(base, env), argv...)...)
}

// mergeEnv returns base with the entries of over replacing those of the same name.
func mergeEnv(base, over []string) []string {
	out := append([]string(nil), over...)
	for _, b := range base {
		name, _, _ := strings.Cut(b, "=")
		found := false
		for _, o := range over {
			if strings.HasPrefix(o, name+"=") {
				found = true
				break
			}
		}
		if !found {
			out = append(out, b)
		}
	}
	return out
}

// RenameHostInterface gives the host side of the pod's link another name, as another CNI (or another mode of the
// same one) would have called it, and restores what the kernel drops with the link: the host side's IPv6
// address and the pod's routes.
func (p *Pod) RenameHostInterface(name string) error {
	old := p.veth
	for _, argv := range [][]string{
		{"ip", "link", "set", old, "down"},
		{"ip", "link", "set", old, "name", name},
		{"ip", "link", "set", name, "up"},
		// A link that goes down loses its IPv6 addresses (keep_addr_on_down is off by default) and its routes.
		{"ip", "-6", "addr", "replace", NodeIPv6 + "/128", "dev", name, "nodad"},
		{"ip", "route", "replace", p.IP + "/32", "dev", name},
		{"ip", "-6", "route", "replace", p.IPv6 + "/128", "dev", name},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out)
		}
		if argv[len(argv)-2] == "name" {
			p.veth = name // deleteNetwork removes it by this name
		}
	}
	return nil
}
