package metadata

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection holds the line from style.md: metadata never imports the agent, client-go or the AWS SDK
// (tests may use the SDK as a client; the package itself must not).
func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/iamlet/iamlet/agent", "k8s.io/", "github.com/aws/"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("metadata depends on %s", dep)
			}
		}
	}
}
