package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent's installation as the Helm chart renders it, and the identity a DaemonSet pod on NodeName has.
const (
	AgentNamespace      = "iamlet-system"
	AgentServiceAccount = "iamlet"
	AgentPodName        = "iamlet-" + NodeName
	// NodeName2 is a second node: its pods are another node's, whose tokens the agent on NodeName must not get.
	NodeName2 = "node-2"
)

// AgentUser is the agent's ServiceAccount as the apiserver names its user.
var AgentUser = "system:serviceaccount:" + AgentNamespace + ":" + AgentServiceAccount

// ChartValues are the values this stack installs the chart with: a user's, for a cluster whose ServiceAccounts
// use two STS audiences.
var ChartValues = []string{"--set", "namespace.create=true", "--set", "admissionPolicy.audiences={" + AudienceA + "," + AudienceB + "," + AudienceC + "}"}

// HelmTemplate renders deploy/helm/iamlet as release name in namespace ns with ChartValues and more flags.
func HelmTemplate(name, ns string, flags ...string) ([]byte, error) {
	// No hooks: the uninstall clean-up runs only under `helm uninstall`, and the simulated node runs no controllers.
	args := append([]string{"template", name, RepoPath("deploy/helm/iamlet"), "--namespace", ns, "--no-hooks"}, ChartValues...)
	cmd := exec.Command(filepath.Join(BinDir(), "helm"), append(args, flags...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// Kubectl runs kubectl against the stack as its admin, with stdin.
func (s *Stack) Kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ExecRead runs a read-only command in a container and returns its standard output once done accepts it, or the
// last answer at the deadline. kubectl's exec over websockets now and then drops the first frame of output (it logs
// "Unknown stream id 1, discarding"), so a read whose answer did not arrive is run again.
func (s *Stack) ExecRead(namespace, pod, container string, deadline time.Duration, done func(stdout string) bool, argv ...string) (string, error) {
	end := time.Now().Add(deadline)
	for {
		cmd := exec.Command("kubectl", append([]string{"--kubeconfig", s.Kubeconfig, "-n", namespace, "exec", pod, "-c", container, "--"}, argv...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err == nil && done(string(out)) {
			return string(out), nil
		}
		if time.Now().After(end) {
			if err == nil {
				err = errors.New("not the answer waited for")
			}
			return string(out), fmt.Errorf("kubectl exec %s/%s -c %s %v: %w (stderr: %s)", namespace, pod, container, argv, err,
				bytes.TrimSpace(stderr.Bytes()))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// installAgent installs the chart's objects the way a user does (helm template | kubectl apply; no controller
// manager runs here, so the DaemonSet makes no pods), then gives the agent what the kubelet gives a DaemonSet
// pod: a Pod object bound to NodeName and a ServiceAccount token bound to that pod. The agent runs with that
// token (AgentKubeconfig) and the chart's RBAC and admission policy, nothing friendlier.
func (s *Stack) installAgent() error {
	ctx := context.Background()
	rendered, err := HelmTemplate("iamlet", AgentNamespace)
	if err != nil {
		return err
	}
	if out, err := s.Kubectl(rendered, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("kubectl apply of the chart: %w\n%s", err, out)
	}
	pod, err := s.Kube.CoreV1().Pods(AgentNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: AgentPodName, Namespace: AgentNamespace, Labels: map[string]string{"app.kubernetes.io/name": "iamlet"}},
		Spec: corev1.PodSpec{
			NodeName: NodeName, ServiceAccountName: AgentServiceAccount, HostNetwork: true,
			Containers: []corev1.Container{{Name: "iamlet", Image: "example.invalid/iamlet"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("the agent's pod: %w", err)
	}
	s.AgentPodUID = string(pod.UID)
	// The kubelet would run the agent in its pod's cgroup; hostNetwork interception exempts that cgroup.
	cg, err := s.PodCgroup(s.AgentPodUID, QoSBestEffort)
	if err != nil {
		return err
	}
	if _, err := makeCgroup(cg); err != nil {
		return fmt.Errorf("the agent's pod cgroup: %w", err)
	}
	// The kubelet asks for an hour and refreshes it; the suite outlives an hour only when something is wrong.
	secs := int64((6 * time.Hour).Seconds())
	tr, err := s.Kube.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentServiceAccount, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("the agent's pod-bound token: %w", err)
	}
	s.AgentKubeconfig = filepath.Join(s.Dir, "kubeconfig-agent")
	return os.WriteFile(s.AgentKubeconfig, kubeconfigFor(filepath.Join(s.Dir, "ca.crt"), tr.Status.Token), 0o600)
}
