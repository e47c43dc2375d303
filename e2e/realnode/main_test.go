// Package realnode runs iamlet as users run it: the image built from the Dockerfile, installed with helm, as a
// DaemonSet pod on a real kubelet with containerd, the CNI bridge plugin, the controllers and kube-proxy, serving real
// pods (containers) that use real SDKs (issue 15). The stack is e2e/stack's, with a real node (stack.MainRealNode).
package realnode

import (
	"os"
	"testing"

	"github.com/iamlet/iamlet/e2e/stack"
)

var node *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.MainRealNode(func(s *stack.Stack) int {
		node = s
		return m.Run()
	}))
}
