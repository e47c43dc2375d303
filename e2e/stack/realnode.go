package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A real node (issue 15): containerd with runc and the CNI bridge plugin, a kubelet registered as NodeName,
// kube-controller-manager, kube-scheduler and kube-proxy, beside the same apiserver, MinIO and metadata mock the
// simulated node uses. Everything runs in the run's node network namespace; unlike the simulated node the test binary
// enters it with nsenter, keeping the machine's mount namespace, because the kubelet's volume mounts must be seen by
// containerd and the cgroup hierarchies must stay visible. What the kubelet and containerd write outside their
// configured directories is found and removed by cleanupRealNode, which the outer process runs after the test binary,
// however it ended.

// The real node's pod network: the CNI bridge plugin with host-local addresses.
const (
	PodCIDR      = "10.244.0.0/24"
	PodGateway   = "10.244.0.1"
	cniBridge    = "cni0"
	realNodeCIDR = "10.244.0.0/16"
)

// realNodeSteps bring up a real node after the shared components (its certificates come before the apiserver).
func (s *Stack) realNodeSteps() []step {
	return []step{
		{"containerd", s.startContainerd},
		{"images", s.importImages},
		{"kubelet", s.startKubelet},
		{"controller manager and scheduler", s.startControllers},
		{"kube-proxy", s.startKubeProxy},
		{"node ready", s.waitNodeReady},
	}
}

type step struct {
	name string
	f    func() error
}

func (s *Stack) nodeCerts() error {
	for _, c := range []struct{ name, cn, group string }{
		{"kubelet", "system:node:" + NodeName, "system:nodes"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kube-proxy", "system:kube-proxy", ""},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"},
	} {
		var groups []string
		if c.group != "" {
			groups = []string{c.group}
		}
		if err := writeClientCert(s.Dir, c.name, c.cn, groups...); err != nil {
			return fmt.Errorf("%s certificate: %w", c.name, err)
		}
		kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %[3]s
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: %[3]s}
current-context: e2e
`, APIServerURL, filepath.Join(s.Dir, "ca.crt"), c.name, filepath.Join(s.Dir, c.name+".crt"), filepath.Join(s.Dir, c.name+".key"))
		if err := os.WriteFile(filepath.Join(s.Dir, "kubeconfig-"+c.name), []byte(kc), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ContainerdSocket is the real node's containerd socket.
func (s *Stack) ContainerdSocket() string {
	return filepath.Join(s.Dir, "containerd", "containerd.sock")
}

func (s *Stack) startContainerd() error {
	d := filepath.Join(s.Dir, "containerd")
	cniConf := filepath.Join(s.Dir, "cni", "net.d")
	for _, dir := range []string{d, cniConf, filepath.Join(s.Dir, "cni", "ipam")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "iamlet-%s",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q, "gateway": %q}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}`, s.Run, cniBridge, filepath.Join(s.Dir, "cni", "ipam"), PodCIDR, PodGateway)
	if err := os.WriteFile(filepath.Join(cniConf, "10-bridge.conflist"), []byte(conflist), 0o600); err != nil {
		return err
	}
	// restrict_oom_score_adj: the machine's processes lack CAP_SYS_RESOURCE, so runc cannot give the sandbox the
	// negative oom_score_adj it asks for (docs: ../shared/docs/real-node.md).
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[7]q
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), s.ContainerdSocket(), filepath.Join(d, "ttrpc.sock"),
		filepath.Join(d, "opt"), PauseImage, filepath.Join(d, "runc"), cniConf)
	cfgPath := filepath.Join(d, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	p, err := s.Start("containerd", nil, "containerd", "--config", cfgPath)
	if err != nil {
		return err
	}
	return p.Wait(60*time.Second, func() bool {
		return exec.Command("ctr", "--address", s.ContainerdSocket(), "version").Run() == nil
	})
}

// The start-up taint the kubelet registers the node with, as docs/startup-taint.md tells users to.
var startupTaint = corev1.Taint{Key: "iamlet.dev/agent-not-ready", Value: "true", Effect: corev1.TaintEffectNoSchedule}

func (s *Stack) startKubelet() error {
	d := filepath.Join(s.Dir, "kubelet")
	for _, dir := range []string{d, filepath.Join(s.Dir, "pod-logs"), filepath.Join(s.Dir, "volume-plugins")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	// cgroupfs: PID 1 is not systemd here. failCgroupV1: the machine mounts cgroup v1 hierarchies with the v2 one
	// beside them. The thresholds are loose because the machine's disk is shared and the images are never pulled.
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
registerWithTaints:
- {key: %q, value: %q, effect: %s}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: %q
volumePluginDir: %q
resolvConf: /etc/resolv.conf
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
`, s.ContainerdSocket(), filepath.Join(s.Dir, "ca.crt"), startupTaint.Key, startupTaint.Value, startupTaint.Effect,
		filepath.Join(s.Dir, "pod-logs"), filepath.Join(s.Dir, "volume-plugins"))
	cfgPath := filepath.Join(s.Dir, "kubelet-config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	_, err := s.Start("kubelet", nil, filepath.Join(BinDir(), "kubelet"),
		"--config="+cfgPath, "--kubeconfig="+filepath.Join(s.Dir, "kubeconfig-kubelet"),
		"--root-dir="+d, "--cert-dir="+filepath.Join(d, "pki"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP+","+NodeIPv6, "--v=1")
	return err
}

func (s *Stack) startControllers() error {
	d := s.Dir
	// The DaemonSet controller creates the agent's pods, the ServiceAccount and root-CA publishers give pods their
	// tokens' ConfigMap, node lifecycle keeps node conditions; the scheduler binds DaemonSet pods.
	if _, err := s.Start("kube-controller-manager", nil, filepath.Join(BinDir(), "kube-controller-manager"),
		"--kubeconfig="+filepath.Join(d, "kubeconfig-controller-manager"), "--leader-elect=false",
		"--use-service-account-credentials=true", "--service-account-private-key-file="+filepath.Join(d, "sa.key"),
		"--root-ca-file="+filepath.Join(d, "ca.crt"), "--bind-address=127.0.0.1", "--secure-port=10257",
		"--cluster-cidr="+realNodeCIDR, "--service-cluster-ip-range=10.96.0.0/16"); err != nil {
		return err
	}
	_, err := s.Start("kube-scheduler", nil, filepath.Join(BinDir(), "kube-scheduler"),
		"--kubeconfig="+filepath.Join(d, "kubeconfig-scheduler"), "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=10259")
	return err
}

func (s *Stack) startKubeProxy() error {
	// iptables mode, in the node namespace's own tables: the agent's in-cluster config reaches the apiserver through
	// the kubernetes Service's address. maxPerCore 0: a network namespace cannot set the conntrack table's size.
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: %q}
hostnameOverride: %s
clusterCIDR: %s
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
`, filepath.Join(s.Dir, "kubeconfig-kube-proxy"), NodeName, realNodeCIDR)
	cfgPath := filepath.Join(s.Dir, "kube-proxy-config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	_, err := s.Start("kube-proxy", nil, filepath.Join(BinDir(), "kube-proxy"), "--config="+cfgPath)
	return err
}

// waitNodeReady waits for the kubelet's node to be Ready, with the start-up taint it registered.
func (s *Stack) waitNodeReady() error {
	kubelet := s.Component("kubelet")
	return kubelet.Wait(120*time.Second, func() bool {
		n, err := s.Kube.CoreV1().Nodes().Get(context.Background(), NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

// realNodeSnapshot lists what exists, before the run, in the places the kubelet, containerd, runc and the CNI
// plugins write regardless of their configuration, so cleanupRealNode removes only what the run added.
type realNodeSnapshot map[string]bool

// realNodeStrays are the places outside the stack's directory that the real node writes to.
var realNodeStrays = []string{
	"/var/run/netns", "/run/containerd/s", "/run/containerd/runc", "/var/log/containers", "/var/log/pods",
	"/var/lib/cni/results", "/var/lib/kubelet", "/var/lib/kubelet/device-plugins", "/var/lib/kubelet/plugins_registry",
	"/var/lib/kubelet/pod-resources", "/var/lib/kubelet/plugins", "/run/containerd", "/var/lib/cni",
	// The chart's hostPath for the agent's IMDSv2 token key.
	"/var/lib/iamlet",
}

func snapshotRealNode() realNodeSnapshot {
	snap := realNodeSnapshot{}
	for _, dir := range realNodeStrays {
		if _, err := os.Lstat(dir); err != nil {
			continue
		}
		snap[dir] = true
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			snap[filepath.Join(dir, e.Name())] = true
		}
	}
	return snap
}

// cleanupRealNode removes everything a real node left: processes in the kubelet's pod cgroups and the node
// namespace (containerd's shims), mounts under the stack directory, the pods' network namespaces and what the
// components wrote outside it. It runs in the outer process, after the test binary, however that ended.
func cleanupRealNode(nodeNS, dir string, before realNodeSnapshot) {
	killPodCgroups()
	if pids, err := exec.Command("ip", "netns", "pids", nodeNS).Output(); err == nil {
		for _, p := range strings.Fields(string(pids)) {
			_ = exec.Command("kill", "-9", p).Run()
		}
	}
	removePodCgroups()
	unmountUnder(dir)
	// New entries in the stray places, deepest first; a network namespace is deleted with ip so its mount goes too.
	var added []string
	for _, d := range realNodeStrays {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if p := filepath.Join(d, e.Name()); !before[p] {
				added = append(added, p)
			}
		}
		if !before[d] {
			added = append(added, d)
		}
	}
	sort.Slice(added, func(i, j int) bool { return len(added[i]) > len(added[j]) })
	for _, p := range added {
		if filepath.Dir(p) == "/var/run/netns" {
			_ = exec.Command("ip", "netns", "delete", filepath.Base(p)).Run()
		}
		unmountUnder(p)
		_ = os.RemoveAll(p)
	}
}

// realNodeLeftovers lists what cleanupRealNode could not remove: a teardown that leaves pods' cgroups, mounts, network
// namespaces or files behind would make the next run's node start dirty, so the run fails on it.
func realNodeLeftovers(dir string, before realNodeSnapshot) []string {
	left := podCgroupDirs()
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 && (unescapeMount(f[4]) == dir || strings.HasPrefix(unescapeMount(f[4]), dir+"/")) {
			left = append(left, "mount "+unescapeMount(f[4]))
		}
	}
	for p := range snapshotRealNode() {
		if !before[p] {
			left = append(left, p)
		}
	}
	sort.Strings(left)
	return left
}

// podCgroupDirs are the kubelet's pods cgroups (cgroupfs driver, cgroup root "/") in every mounted hierarchy.
func podCgroupDirs() []string {
	var dirs []string
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range append(hierarchies, "/sys/fs/cgroup") {
		top := filepath.Join(h, "kubepods")
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

func killPodCgroups() {
	for _, d := range podCgroupDirs() {
		killCgroup(d)
	}
}

func removePodCgroups() {
	dirs := podCgroupDirs()
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		deadline := time.Now().Add(10 * time.Second)
		for os.Remove(d) != nil && time.Now().Before(deadline) {
			if _, err := os.Stat(d); err != nil {
				break
			}
			killCgroup(d)
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if mp := unescapeMount(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, mp := range points {
		_ = exec.Command("umount", "-l", mp).Run()
	}
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
