package stack

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
		// No --region, as the manifests pass none: the agent asks the node's IMDS (the mock), as it does on EKS.
		"--sts-endpoint=" + STSEndpoint,
		"--node-imds=http://" + IMDSv4,
		"--token-key-file=" + filepath.Join(s.Dir, "imds-token.key"),
		"--log-level=debug",
		// As the manifests pass them, but the pods cgroup is this run's (runs share the machine's hierarchy) and the
		// hierarchy is the machine's own rather than a hostPath mount of it.
		"--pod-uid=" + s.AgentPodUID, "--cgroup-root=/sys/fs/cgroup", "--pods-cgroup=" + s.PodsCgroup(),
		"--host-rules-dir=" + s.hostRulesDir(),
	}
}

// HostRulesArgs are the arguments of the agent pod's host-rules container, pointed at this stack.
func (s *Stack) HostRulesArgs() []string {
	return []string{"host-rules", "--metadata-addr=" + NodeIP + "," + NodeIPv6, "--pod-uid=" + s.AgentPodUID,
		"--cgroup-root=/sys/fs/cgroup", "--pods-cgroup=" + s.PodsCgroup(), "--dir=" + s.hostRulesDir()}
}

// StopHostRules stops the host-rules container until the next agent starts it again (EnsureHostRules), so that
// nothing restores its table meanwhile: its DNAT rule keeps the kernel tracking every flow in the node's namespace.
// Its last report goes too, so that the next start waits for the new process's first pass, not the old one's.
func (s *Stack) StopHostRules() {
	if s.hostRules != nil {
		s.hostRules.Stop()
		s.hostRules = nil
	}
	_ = os.Remove(s.hostRulesReport())
}

// hostRulesReport is the file host-rules writes after each pass, in hostRulesDir.
func (s *Stack) hostRulesReport() string { return filepath.Join(s.hostRulesDir(), "host-rules.json") }

// hostRulesDir is the directory the agent and host-rules share (the pod's emptyDir /run/iamlet).
func (s *Stack) hostRulesDir() string { return filepath.Join(s.Dir, "run") }

// EnsureHostRules runs the agent pod's host-rules container, once per stack: it outlives the agents tests start and
// stop, as the container outlives the agent container's restarts.
func (s *Stack) EnsureHostRules(t TB, bin string) {
	t.Helper()
	if s.hostRules != nil && !s.hostRules.Exited() {
		return
	}
	s.StartHostRules(t, bin)
}

// StartHostRules starts the host-rules container with the chart's arguments and extra, once StopHostRules has
// stopped the running one, and waits for its first good pass.
func (s *Stack) StartHostRules(t TB, bin string, extra ...string) {
	t.Helper()
	if err := os.MkdirAll(s.hostRulesDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	argv0, pre := s.AgentCommand(bin)
	p, err := StartProc(s.Dir, "host-rules", nil, argv0, append(append(pre, s.HostRulesArgs()...), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	s.hostRules = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(s.hostRulesReport()); err == nil && !strings.Contains(string(b), `"error"`) {
			return
		}
		if p.Exited() || time.Now().After(deadline) {
			log, _ := os.ReadFile(p.Log)
			t.Fatalf("host-rules did not report a good pass:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// AgentCommand is how the kubelet would run the agent binary: in its pod's cgroup.
func (s *Stack) AgentCommand(bin string) (string, []string) {
	cg, _ := s.PodCgroup(s.AgentPodUID, QoSBestEffort)
	argv := InCgroup(cg, bin)
	return argv[0], argv[1:]
}

// StartAgent runs the iamlet binary with the stack's flags plus extra, waits until /readyz answers 200,
// and stops it (SIGTERM) when the test ends.
func (s *Stack) StartAgent(t TB, bin string, extra ...string) *Proc {
	t.Helper()
	s.EnsureHostRules(t, bin)
	argv0, pre := s.AgentCommand(bin)
	p, err := StartProc(s.Dir, "iamlet", nil, argv0, append(append(pre, s.AgentArgs()...), extra...)...)
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

// BuildProgram builds the main package pkg (relative to the module root) into dir/name, as the Dockerfile builds the
// agent: static, without cgo. The memory the benchmarks measure is the mapped binary's too. The symbol table the
// Dockerfile strips is kept, for the benchmarks' profiles: it is not mapped, so it costs no memory.
func BuildProgram(dir, name, pkg string) (string, error) {
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return out, nil
}
