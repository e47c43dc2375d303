package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/iamlet/iamlet/e2e/stack"
)

const (
	startupTaint   = "iamlet.dev/agent-not-ready" // the chart's startupTaint and the flag's default
	startupPolicy  = "iamlet-startup-taint"
	otherNodeTaint = "dedicated"
)

// TestStartupTaintLeavesOnlyWhenTheAgentServes: a node registered with the start-up taint keeps it until the agent
// on it is ready, which then removes it and nothing else. With the chart's RBAC and admission policy, the agent's
// own credentials (what root on its node holds) can remove that one taint from that one node and can change nothing
// else on any node.
func TestStartupTaintLeavesOnlyWhenTheAgentServes(t *testing.T) {
	ctx := context.Background()
	stopSharedAgent()
	ours := corev1.Taint{Key: startupTaint, Value: "true", Effect: corev1.TaintEffectNoSchedule}
	theirs := corev1.Taint{Key: otherNodeTaint, Value: "batch", Effect: corev1.TaintEffectNoSchedule}
	for _, n := range []string{stack.NodeName, stack.NodeName2} {
		setTaints(t, suite.Kube, n, ours, theirs)
		t.Cleanup(func() { setTaints(t, suite.Kube, n) })
	}

	agent := agentClient(t, "")
	refusals := []struct {
		what   string
		node   string
		change func(*corev1.Node)
	}{
		{"remove the start-up taint from another node", stack.NodeName2, func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{theirs} }},
		{"remove another taint from its node", stack.NodeName, func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{ours} }},
		{"add a taint to its node", stack.NodeName, func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "evict", Effect: corev1.TaintEffectNoExecute})
		}},
		{"remove the start-up taint and label its node", stack.NodeName, func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{theirs}
			n.Labels = map[string]string{"node-role.kubernetes.io/control-plane": ""}
		}},
		{"cordon its node", stack.NodeName, func(n *corev1.Node) { n.Spec.Unschedulable = true }},
		{"annotate its node", stack.NodeName, func(n *corev1.Node) { n.Annotations = map[string]string{"x": "y"} }},
	}
	// The policy takes effect once the apiserver's caches have it: wait for the first refusal.
	var last error
	if !eventually(machineDeadline, func() bool {
		last = updateNode(ctx, agent, refusals[0].node, refusals[0].change)
		return startupPolicyDenied(last)
	}) {
		t.Fatalf("as the agent, %s: %v, want a refusal from %s", refusals[0].what, last, startupPolicy)
	}
	for _, r := range refusals[1:] {
		if err := updateNode(ctx, agent, r.node, r.change); !startupPolicyDenied(err) {
			t.Errorf("as the agent, %s: %v, want a refusal from %s", r.what, err, startupPolicy)
		}
	}
	if err := agent.CoreV1().Nodes().Delete(ctx, stack.NodeName2, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}); !apierrors.IsForbidden(err) {
		t.Errorf("as the agent, delete a node: %v, want forbidden", err)
	}

	dedicatedAgent(t)
	if !eventually(machineDeadline, func() bool { return !slices.Contains(taintKeys(t, stack.NodeName), startupTaint) }) {
		t.Fatalf("the ready agent did not remove the start-up taint from its node: taints %v", taintKeys(t, stack.NodeName))
	}
	if got := taintKeys(t, stack.NodeName); !slices.Equal(got, []string{otherNodeTaint}) {
		t.Errorf("taints of the agent's node = %v, want only [%s]", got, otherNodeTaint)
	}
	if got := taintKeys(t, stack.NodeName2); !slices.Equal(got, []string{startupTaint, otherNodeTaint}) {
		t.Errorf("taints of the other node = %v, want both untouched", got)
	}
	waitMetric(t, "iamlet_node_startup_taint 0", machineDeadline, func(m stack.Metrics) bool {
		v, ok := m.Value("iamlet_node_startup_taint", nil)
		return ok && v == 0
	})
	p := suite.NewPod(t, "after-startup-taint", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p)
}

func setTaints(t *testing.T, c kubernetes.Interface, node string, taints ...corev1.Taint) {
	t.Helper()
	if err := updateNode(context.Background(), c, node, func(n *corev1.Node) { n.Spec.Taints = taints }); err != nil {
		t.Fatalf("taint node %s: %v", node, err)
	}
}

// updateNode reads the node, changes it and writes it back, reading again after a conflict.
func updateNode(ctx context.Context, c kubernetes.Interface, node string, change func(*corev1.Node)) error {
	for {
		n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(n)
		_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

func taintKeys(t *testing.T, node string) []string {
	t.Helper()
	n, err := suite.Kube.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, x := range n.Spec.Taints {
		keys = append(keys, x.Key)
	}
	return keys
}

// startupPolicyDenied: refused by one of the policy's rules, not by an expression that failed to evaluate (which
// would refuse the agent's own removal too).
func startupPolicyDenied(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+startupPolicy+"'") &&
		strings.Contains(err.Error(), "denied request: iamlet may")
}

// TestFatalStartupErrorsExit: each error the agent cannot run past ends the process with a non-zero code and the
// reason in its log, at once, rather than leaving it up (healthz 200) with the error seen only at SIGTERM. How long
// each took is logged; a process still running after the deadline is the hang this guards against.
func TestFatalStartupErrorsExit(t *testing.T) {
	stopSharedAgent()
	// A copy of the binary that any user may run, for the unprivileged case.
	pub := t.TempDir()
	if err := os.Chmod(pub, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pub, "iamlet")
	if b, err := os.ReadFile(suite.agentBin); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatalf("copying the agent: %v", err)
	}
	hold := func(addr string) func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return func() { ln.Close() }
	}
	for _, c := range []struct {
		name  string
		setup func() func()
		env   []string
		pre   []string // before the binary: how it is run
		extra []string
		want  []string // in the log
	}{
		{name: "metadata port taken", setup: func() func() { return hold(stack.NodeIP + ":" + stack.AgentPort) },
			want: []string{stack.NodeIP + ":" + stack.AgentPort, "address already in use"}},
		{name: "metrics port taken", setup: func() func() { return hold(stack.AgentMetricsAddr) },
			want: []string{stack.AgentMetricsAddr, "address already in use"}},
		{name: "no iptables", env: []string{"PATH=/nonexistent"}, want: []string{"iptables"}},
		{name: "not root", pre: []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"},
			want: []string{"iptables"}},
		{name: "unreadable kubeconfig", extra: []string{"--kubeconfig=/nonexistent/kubeconfig"}, want: []string{"/nonexistent/kubeconfig"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				defer c.setup()()
			}
			// As the kubelet runs it (in its pod's cgroup), c.pre (setpriv) between that wrapper and the binary.
			argv0, pre := suite.AgentCommand(bin)
			args := append(slices.Clone(pre[:len(pre)-1]), c.pre...)
			args = append(append(append(args, bin), suite.AgentArgs()...), c.extra...)
			start := time.Now()
			p, err := stack.StartProc(suite.Dir, "iamlet-fatal-"+strings.ReplaceAll(c.name, " ", "-"), c.env, argv0, args...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Kill()
			if err := p.Wait(machineDeadline, func() bool { return false }); err == nil || !p.Exited() {
				t.Fatalf("still running after %s: a start-up error must end the process (%v)", machineDeadline, err)
			}
			took := time.Since(start)
			log, _ := os.ReadFile(p.Log)
			code := p.ExitCode()
			if code == 0 {
				t.Errorf("exit code 0, want non-zero:\n%s", log)
			}
			// The reason is the process's last word: one line, "iamlet: ...", after whatever it logged.
			var reason string
			for _, line := range strings.Split(string(log), "\n") {
				if strings.HasPrefix(line, "iamlet: ") {
					reason = line
				}
			}
			for _, w := range c.want {
				if !strings.Contains(reason, w) {
					t.Errorf("the final error %q does not say %q; log:\n%s", reason, w, log)
				}
			}
			t.Logf("exit %d after %s: %s", code, took.Round(time.Millisecond), reason)
		})
	}
}
