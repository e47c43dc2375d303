package stack

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Agent addresses in the node namespace.
const (
	AgentMetricsAddr = NodeIP + ":9180" // the manifests' --metrics-addr=$(POD_IP): a hostNetwork pod's IP is the node's
	AgentDebugAddr   = "127.0.0.1:9181"
	AgentPort        = "8181"
	// AgentMemoryLimit is the chart's limits.memory (96Mi), which the manifests pass as --memory-limit;
	// TestAgentRunsWithTheShippedArguments keeps the two equal.
	AgentMemoryLimit = "100663296"
)

// BuildAgent builds cmd/iamlet into dir and returns its path.
func BuildAgent(dir string) (string, error) { return BuildProgram(dir, "iamlet", "./cmd/iamlet") }

// repoRoot is the module root: the tests run in e2e/.
func repoRoot() string {
	wd, _ := os.Getwd()
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return wd
}

// AgentArgs are the flags that point the agent at this stack.
func (s *Stack) AgentArgs() []string {
	return []string{
		"--node-name=" + NodeName, "--kubeconfig=" + s.AgentKubeconfig,
		// As the manifests pass $(HOST_IPS) (status.hostIPs): bare addresses, the port from --metadata-port.
		"--metadata-addr=" + NodeIP + "," + NodeIPv6, "--metadata-port=" + AgentPort,
		"--metrics-addr=" + NodeIP, "--memory-limit=" + AgentMemoryLimit, "--debug-addr=" + AgentDebugAddr,
		"--region=us-east-1", "--sts-endpoint=" + STSEndpoint,
		"--node-imds=http://" + IMDSv4,
		"--token-key-file=" + filepath.Join(s.Dir, "imds-token.key"),
		"--log-level=debug",
	}
}

// StartAgent runs the iamlet binary with the stack's flags plus extra, waits until /readyz answers 200,
// and stops it (SIGTERM) when the test ends.
func (s *Stack) StartAgent(t TB, bin string, extra ...string) *Proc {
	t.Helper()
	p, err := StartProc(s.Dir, "iamlet", nil, bin, append(s.AgentArgs(), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	if err := p.WaitHTTP("http://"+AgentMetricsAddr+"/readyz", 60*time.Second); err != nil {
		t.Fatalf("agent not ready: %v", err)
	}
	return p
}

// Get fetches url from the node namespace and returns the body.
func Get(url string) (int, string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// BuildProgram builds the main package pkg (relative to the module root) into dir/name.
func BuildProgram(dir, name, pkg string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = repoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return out, nil
}
