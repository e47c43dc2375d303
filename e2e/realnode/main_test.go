// Package realnode runs iamlet as users run it: the image built from the Dockerfile, installed with helm, as a
// DaemonSet pod on a real kubelet with containerd, the CNI bridge plugin, the controllers and kube-proxy, serving real
// pods (containers) that use real SDKs (issue 15). The stack is e2e/stack's, with a real node (stack.MainRealNode).
package realnode

import (
	"context"
	"fmt"
	"os"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/e2e/stack"
)

var node *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.MainRealNode(func(s *stack.Stack) int {
		node = s
		// The apiserver enforces baseline Pod Security by default; the tests' own hostNetwork pods (the documented
		// manual clean-up) run in default, so it is privileged. The agent's namespace is the chart's to label.
		patch := []byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"privileged"}}}`)
		if _, err := s.Kube.CoreV1().Namespaces().Patch(context.Background(), "default", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			fmt.Fprintln(os.Stderr, "realnode: labelling namespace default:", err)
			return 1
		}
		return m.Run()
	}))
}
