package stack

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
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
	s                               *Stack
}

// PodOptions shape NewPod.
type PodOptions struct {
	Namespace      string // default "default"
	ServiceAccount string
	// IP reuses an address (the index n of 10.200.0.n); 0 allocates a new one.
	IP int
	// NoStatus leaves the pod without a status IP, so the agent does not know its address.
	NoStatus bool
	// HostNetwork marks the pod hostNetwork (its address is then the node's).
	HostNetwork bool
}

// NewPod creates the pod's network namespace and the Pod object (Running, with its IPs), and removes
// both when the test ends.
func (s *Stack) NewPod(t TB, name string, o PodOptions) *Pod {
	t.Helper()
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	n := o.IP
	if n == 0 {
		n = s.nextPod
		s.nextPod++
	}
	p := &Pod{
		Name: name, Namespace: o.Namespace, ServiceAccount: o.ServiceAccount,
		IP: fmt.Sprintf("10.200.0.%d", n), IPv6: fmt.Sprintf("fd00:200::%x", n),
		NetNS: fmt.Sprintf("iamlet-%s-p%d", s.Run, n), veth: fmt.Sprintf("ia%sp%d", s.Run, n), s: s,
	}
	if err := p.network(); err != nil {
		t.Fatalf("pod %s network: %v", name, err)
	}
	t.Cleanup(func() { p.deleteNetwork() })
	p.create(t, o)
	return p
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

func (p *Pod) deleteNetwork() {
	_ = exec.Command("ip", "link", "del", p.veth).Run()
	_ = exec.Command("ip", "netns", "delete", p.NetNS).Run()
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
	ctx := context.Background()
	api := p.s.Kube.CoreV1().Pods(p.Namespace)
	cur, err := api.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	cur.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
		PodIPs: []corev1.PodIP{{IP: ip}, {IP: ip6}}, HostIP: NodeIP}
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
