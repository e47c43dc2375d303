package stack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pods on the real node: Pod objects the kubelet runs in containers.

// ClientPod is a pod on the real node that runs one container to completion.
func ClientPod(name, sa, image string, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"iamlet-e2e": "client"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, RestartPolicy: corev1.RestartPolicyNever, NodeName: "",
			// Gone at once when deleted: the tests make many.
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "client", Image: image, ImagePullPolicy: corev1.PullNever, Command: command,
				Env: []corev1.EnvVar{{Name: "AWS_REGION", Value: "us-east-1"}, {Name: "AWS_EC2_METADATA_V1_DISABLED", Value: "true"}},
			}},
		},
	}
}

// RunPod creates pod, waits (up to timeout) until it has ended, and returns its phase and log; it is deleted when
// the test ends.
func (s *Stack) RunPod(t TB, pod *corev1.Pod, timeout time.Duration) (corev1.PodPhase, string) {
	t.Helper()
	ctx := context.Background()
	created, err := s.Kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	t.Cleanup(func() { s.DeletePod(created.Namespace, created.Name) })
	phase, err := s.WaitPodEnded(ctx, created.Namespace, created.Name, timeout)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return phase, s.PodLog(ctx, created.Namespace, created.Name)
}

// WaitPodEnded waits for a pod to succeed or fail.
func (s *Stack) WaitPodEnded(ctx context.Context, ns, name string, timeout time.Duration) (corev1.PodPhase, error) {
	var last *corev1.Pod
	err := poll(timeout, func() bool {
		p, err := s.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = p
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	if err != nil {
		return "", fmt.Errorf("pod %s/%s did not end within %s: %s", ns, name, timeout, DescribePod(last))
	}
	return last.Status.Phase, nil
}

// PodLog is the log of a pod's first container (the kubelet's, through the apiserver).
func (s *Stack) PodLog(ctx context.Context, ns, name string) string {
	b, err := s.Kube.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// DeletePod deletes a pod at once and waits until its object is gone.
func (s *Stack) DeletePod(ns, name string) {
	ctx := context.Background()
	zero := int64(0)
	_ = s.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	_ = poll(60*time.Second, func() bool {
		_, err := s.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// DescribePod says where a pod is: its phase, conditions and each container's state, restarts and last exit.
func DescribePod(p *corev1.Pod) string {
	if p == nil {
		return "no pod object"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s phase %s", p.Name, p.Status.Phase)
	for _, c := range p.Status.Conditions {
		fmt.Fprintf(&b, "; %s=%s %s", c.Type, c.Status, c.Message)
	}
	for _, c := range p.Status.ContainerStatuses {
		fmt.Fprintf(&b, "; %s ready=%v restarts=%d", c.Name, c.Ready, c.RestartCount)
		if w := c.State.Waiting; w != nil {
			fmt.Fprintf(&b, " waiting %s: %s", w.Reason, w.Message)
		}
		if x := c.State.Terminated; x != nil {
			fmt.Fprintf(&b, " terminated %s (%d)", x.Reason, x.ExitCode)
		}
		if x := c.LastTerminationState.Terminated; x != nil {
			fmt.Fprintf(&b, " last exit %d %s", x.ExitCode, x.Reason)
		}
	}
	return b.String()
}

// Helm runs the stack's helm against the stack as its admin, with its caches in the scratch directory.
func (s *Stack) Helm(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(BinDir(), "helm"), append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(s.Dir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(s.Dir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(s.Dir, "helm", "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// ComponentLog is the tail of a stack component's log, for failure messages.
func (s *Stack) ComponentLog(name string, lines int) string {
	if p := s.Component(name); p != nil {
		return tail(p.Log, lines)
	}
	return ""
}

// AdminToken is the stack admin's bearer token, for clients configured by hand (Prometheus's Kubernetes discovery).
func (s *Stack) AdminToken() string { return adminToken }
