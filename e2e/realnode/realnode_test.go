package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/e2e/stack"
)

// deadline bounds every wait: generous, because the machine may be loaded; what is measured is reported, not bounded.
const deadline = 2 * time.Minute

// values are what a user on this cluster sets: the image, the two STS audiences its ServiceAccounts use, (as on any
// cluster whose STS is not AWS's) the STS endpoint, and a node directory for the issuance records, to ship to where
// `iamlet policy` runs. Nothing else differs from the chart's defaults.
func values(tag string) string {
	return fmt.Sprintf(`image:
  repository: %s
  tag: %s
admissionPolicy:
  audiences: [%s, %s]
extraArgs:
  - --sts-endpoint=%s
issuanceRecords:
  hostPath: %s
`, stack.AgentImageRepo, tag, stack.AudienceA, stack.AudienceB, stack.STSEndpoint, issuanceDir())
}

// issuanceDir is the node directory the chart mounts for the issuance records: in the run's scratch directory, so the
// run's clean-up removes it.
func issuanceDir() string { return filepath.Join(node.Dir, "issuance") }

func writeValues(t *testing.T, tag string) string {
	t.Helper()
	p := filepath.Join(node.Dir, "values-"+tag+".yaml")
	if err := os.WriteFile(p, []byte(values(tag)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// agentPod waits for the DaemonSet's pod on the node to run the image tag and be Ready, and returns it.
func agentPod(t *testing.T, tag string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	var last *corev1.Pod
	end := time.Now().Add(deadline)
	for time.Now().Before(end) {
		pods, err := node.Kube.CoreV1().Pods(stack.AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=iamlet"})
		if err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp != nil || p.Spec.Containers[0].Image != stack.AgentImageRepo+":"+tag {
					continue
				}
				last = p
				if isReady(p) {
					return p
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no Ready agent pod with tag %s within %s: %s\n%s", tag, deadline, stack.DescribePod(last), agentLogs(last))
	return nil
}

// agentLogs are the tails of the agent pod's two containers' logs, for a failure's message.
func agentLogs(p *corev1.Pod) string {
	if p == nil {
		return node.ComponentLog("kubelet", 30)
	}
	var b strings.Builder
	for _, c := range []string{"iamlet", "host-rules"} {
		out, _ := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", p.Name, "-c", c, "--tail=25")
		fmt.Fprintf(&b, "--- %s:\n%s\n", c, out)
	}
	return b.String()
}

// startTimes says when, after t0, the pod was created, its agent container started and it became Ready (the
// apiserver's timestamps have a second's resolution).
func startTimes(p *corev1.Pod, t0 time.Time) string {
	at := func(ts metav1.Time) string { return ts.Sub(t0).Round(time.Second).String() }
	out := "created " + at(p.CreationTimestamp)
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == "iamlet" && c.State.Running != nil {
			out += ", container started " + at(c.State.Running.StartedAt)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out += ", Ready " + at(c.LastTransitionTime)
		}
	}
	return out
}

// readyLogged says when, after t0, the agent logged that it was ready.
func readyLogged(p *corev1.Pod, t0 time.Time) string {
	out, _ := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", p.Name, "-c", "iamlet")
	for _, line := range strings.Split(out, "\n") {
		var entry struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "iamlet ready" {
			return "the agent logged ready at " + entry.Time.Sub(t0).Round(time.Millisecond).String()
		}
	}
	return "no ready line in the agent's log"
}

// readyRegion is the region the agent's "iamlet ready" line names in its log.
func readyRegion(log string) string {
	for _, line := range strings.Split(log, "\n") {
		var entry struct {
			Msg    string `json:"msg"`
			Region string `json:"region"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "iamlet ready" {
			return entry.Region
		}
	}
	return ""
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func hasStartupTaint(t *testing.T) bool {
	t.Helper()
	n, err := node.Kube.CoreV1().Nodes().Get(context.Background(), stack.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, taint := range n.Spec.Taints {
		if taint.Key == "iamlet.dev/agent-not-ready" {
			return true
		}
	}
	return false
}

// TestRealNode runs in order what a platform team does: install, check, use, upgrade, uninstall.
func TestRealNode(t *testing.T) {
	ctx := context.Background()
	if !hasStartupTaint(t) {
		t.Fatal("the kubelet registered the node without the start-up taint")
	}
	var agent *corev1.Pod
	t.Run("helm install", func(t *testing.T) {
		t0 := time.Now()
		out, err := node.Helm("install", "iamlet", stack.RepoPath("deploy/helm/iamlet"), "--namespace", stack.AgentNamespace,
			"--create-namespace", "--values", writeValues(t, stack.AgentImageTag))
		if err != nil {
			t.Fatalf("helm install: %v\n%s", err, out)
		}
		if !strings.Contains(out, "Check it works:") || !strings.Contains(out, "exec daemonset/iamlet -c iamlet -- iamlet status") {
			t.Errorf("helm install printed no NOTES telling how to check it works:\n%s", out)
		}
		// Baseline is enforced by default here: the agent's pod is admitted because the chart's hook labelled the
		// namespace helm install --create-namespace made.
		ns, err := node.Kube.CoreV1().Namespaces().Get(context.Background(), stack.AgentNamespace, metav1.GetOptions{})
		if err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
			t.Errorf("namespace %s after helm install: %v, labels %v; want pod-security.kubernetes.io/enforce=privileged", stack.AgentNamespace, err, ns.GetLabels())
		}
		agent = agentPod(t, stack.AgentImageTag)
		t.Logf("agent pod %s Ready %s after helm install; %s; %s", agent.Name, time.Since(t0).Round(time.Millisecond), startTimes(agent, t0), readyLogged(agent, t0))
		end := time.Now().Add(deadline)
		for hasStartupTaint(t) {
			if time.Now().After(end) {
				t.Fatalf("the start-up taint is still on the node %s after the agent became Ready", deadline)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("start-up taint removed %s after helm install", time.Since(t0).Round(time.Millisecond))
	})
	if agent == nil {
		t.FailNow()
	}
	t.Run("kubectl logs and iamlet status", func(t *testing.T) {
		out, err := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", agent.Name, "-c", "iamlet")
		if err != nil || !strings.Contains(out, `"msg":"iamlet ready"`) {
			t.Errorf("kubectl logs: %v\n%s", err, out)
		}
		// The chart passes no --region: the agent asked the node's IMDS, at start, with its own rules in place.
		_, want, err := stack.Get("http://" + stack.IMDSv4 + "/latest/meta-data/placement/region")
		if got := readyRegion(out); err != nil || got == "" || got != want {
			t.Errorf("the agent's ready line says region %q; the node's IMDS says %q (%v)", got, want, err)
		}
		// A healthy start logs no error: an operator reading it at 3 a.m. must not be sent looking for one.
		if strings.Contains(out, `"level":"ERROR"`) {
			t.Errorf("the agent logged an error on a healthy start:\n%s", out)
		}
		// host-rules, in its container as the chart runs it, gets the kernel's nftables notifications (it puts its
		// table back on them) and writes its table.
		hr, err := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", agent.Name, "-c", "host-rules")
		if err != nil || !strings.Contains(hr, "hostNetwork interception rules written") || strings.Contains(hr, "nftables notifications") ||
			strings.Contains(hr, `"level":"ERROR"`) {
			t.Errorf("host-rules' log: %v\n%s", err, hr)
		}
		out, err = node.ExecRead(stack.AgentNamespace, agent.Name, "iamlet", deadline, func(out string) bool {
			return strings.Contains(out, "ready: true") && strings.Contains(out, "hostNetwork pods: covered")
		}, "iamlet", "status")
		t.Logf("iamlet status:\n%s", out)
		if err != nil {
			t.Errorf("kubectl exec iamlet status: %v, want ready with hostNetwork pods covered", err)
		}
		// The Dockerfile stamps the build's VERSION into the binary.
		out, err = node.ExecRead(stack.AgentNamespace, agent.Name, "iamlet", deadline,
			func(out string) bool { return strings.HasPrefix(out, "iamlet "+stack.AgentImageVersion+" ") }, "iamlet", "version")
		if err != nil {
			t.Errorf("iamlet version in the image: %v %q, want iamlet %s ...", err, out, stack.AgentImageVersion)
		}
	})
	t.Run("the agent released the pages start-up touched", func(t *testing.T) { binaryReleased(t, agent) })
	t.Run("real pods get their own roles", func(t *testing.T) { ownRoles(t) })
	t.Run("attack spellings from a container", func(t *testing.T) { attackSpellings(t) })
	t.Run("first request at container start", func(t *testing.T) { firstRequests(t, 30) })
	t.Run("minting with the kubelet's token", func(t *testing.T) { kubeletTokenMinting(t, agent) })
	t.Run("prometheus scrapes as the ServiceMonitor says", func(t *testing.T) { prometheusScrapes(t) })
	t.Run("rolling update under load", func(t *testing.T) { rollingUpdate(t) })
	t.Run("helm uninstall removes the rules", func(t *testing.T) { uninstall(t) })
	t.Run("kustomize install, delete and the documented clean-up", func(t *testing.T) { kustomizeInstall(t) })
	_ = ctx
}
