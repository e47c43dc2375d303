package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/agent"
	"github.com/iamlet/iamlet/e2e/stack"
)

// agentStatus is what the agent's /status answers.
type agentStatus = agent.Status

// agentProc is one iamlet process of the benchmark.
type agentProc struct {
	p       *stack.Proc
	cgroup  string // its memory cgroup ("" without one), removed with it
	cgs     *memCgroups
	started time.Time
	ready   time.Duration // process start to /readyz 200
	logFrom int64         // where this process's lines begin in its log
}

// startAgent runs iamlet with the stack's flags, at production log level, plus extra, and waits for
// /readyz, polled every 5 ms so start-up is timed closely. Stop it with stop.
func (b *bench) startAgent(name string, extra ...string) (*agentProc, error) {
	return b.startAgentOn(name, -1, nil, extra...)
}

// startAgentOn is startAgent with the agent pinned to cpu (none if cpu < 0) and env added to its environment.
func (b *bench) startAgentOn(name string, cpu int, env []string, extra ...string) (*agentProc, error) {
	args := append(b.s.AgentArgs(), "--log-level=info")
	args = append(args, extra...)
	var logFrom int64
	if fi, err := os.Stat(filepath.Join(b.s.Dir, name+".log")); err == nil {
		logFrom = fi.Size() // the log is appended to by every process of this name
	}
	argv, cg := b.command(name, cpu, append([]string{b.bins.agent}, args...)...)
	t0 := time.Now()
	p, err := stack.StartProc(b.s.Dir, name, env, argv[0], argv[1:]...)
	if err != nil {
		b.cgroups.remove(cg)
		return nil, err
	}
	a := &agentProc{p: p, cgroup: cg, cgs: b.cgroups, started: t0, logFrom: logFrom}
	c := &http.Client{Timeout: time.Second}
	deadline := t0.Add(60 * time.Second)
	for {
		resp, err := c.Get("http://" + stack.AgentMetricsAddr + "/readyz")
		if err == nil {
			ok := resp.StatusCode == http.StatusOK
			resp.Body.Close()
			if ok {
				break
			}
		}
		if p.Exited() || time.Now().After(deadline) {
			a.stop()
			log, _ := os.ReadFile(p.Log)
			return nil, fmt.Errorf("agent %s not ready within 60s; log tail:\n%s", name, tail(string(log), 20))
		}
		time.Sleep(5 * time.Millisecond)
	}
	a.ready = time.Since(t0)
	return a, nil
}

// command is argv as the benchmark runs its servers: in a memory cgroup of its own, when the machine
// has a memory controller (see memCgroups), and, if cpu ≥ 0, pinned to that CPU from its exec on, so
// that the Go runtime sizes GOMAXPROCS to it. It returns the cgroup too, "" without one. The shell that
// moves the process into its cgroup (stack.InCgroup) is part of the process's start-up time (~1 ms).
func (b *bench) command(name string, cpu int, argv ...string) ([]string, string) {
	if cpu >= 0 {
		argv = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
	}
	if b.cgroups == nil {
		return argv, ""
	}
	dir, err := b.cgroups.make(name)
	if err != nil {
		logf("%s runs without a memory cgroup: %v", name, err)
		return argv, ""
	}
	return stack.InCgroup(dir, argv...), dir
}

// logTimes returns when the agent logged each of msgs first, since its start.
func (a *agentProc) logTimes(msgs ...string) map[string]time.Duration {
	out := map[string]time.Duration{}
	f, err := os.Open(a.p.Log)
	if err != nil {
		return out
	}
	defer f.Close()
	if _, err := f.Seek(a.logFrom, io.SeekStart); err != nil {
		return out
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		for _, m := range msgs {
			if _, seen := out[m]; !seen && l.Msg == m {
				out[m] = l.Time.Sub(a.started)
			}
		}
	}
	return out
}

func (a *agentProc) stop() {
	if a != nil {
		a.p.Stop()
		a.cgs.remove(a.cgroup)
	}
}

// scrape reads the agent's metrics, retrying briefly (the agent may be busy).
func scrape() (stack.Metrics, error) {
	var err error
	for range 5 {
		var m stack.Metrics
		if m, err = stack.Scrape(); err == nil {
			return m, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// histSum is the sum of the samples of histogram name.
func histSum(m stack.Metrics, name string) float64 {
	f, ok := m[name]
	if !ok {
		return 0
	}
	total := 0.0
	for _, s := range f.GetMetric() {
		total += s.GetHistogram().GetSampleSum()
	}
	return total
}

func stsCalls(m stack.Metrics) float64 { return m.Sum("iamlet_sts_requests_total", nil) }

// gcCycles is how many garbage collections the Go runtime has completed: the count of its pause summary.
func gcCycles(m stack.Metrics) float64 {
	f, ok := m["go_gc_duration_seconds"]
	if !ok || len(f.GetMetric()) == 0 {
		return 0
	}
	return float64(f.GetMetric()[0].GetSummary().GetSampleCount())
}

// status reads the agent's /status.
func status() (agent.Status, error) {
	var st agent.Status
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + stack.AgentDebugAddr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("/status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitStatus polls /status every 50 ms until cond holds, for at most timeout.
func waitStatus(ctx context.Context, what string, timeout time.Duration, cond func(agent.Status) bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		st, err := status()
		if err == nil && cond(st) {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: not seen within %s (last error: %v)", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// podStates maps "namespace/name" to the pod's state in st.
func podStates(st agent.Status) map[string]agent.PodStatus {
	m := make(map[string]agent.PodStatus, len(st.Pods))
	for _, p := range st.Pods {
		m[p.Namespace+"/"+p.Pod] = p
	}
	return m
}

// loadgen runs the load generator inside network namespace netns and decodes what it printed.
func (b *bench) loadgen(ctx context.Context, netns string, args ...string) (Load, error) {
	return b.loadgenOn(ctx, netns, -1, args...)
}

// loadgenOn is loadgen pinned to cpu (none if cpu < 0).
func (b *bench) loadgenOn(ctx context.Context, netns string, cpu int, args ...string) (Load, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	argv := append([]string{"netns", "exec", netns}, b.bins.loadgen)
	if cpu >= 0 {
		argv = append([]string{"netns", "exec", netns, "taskset", "-c", strconv.Itoa(cpu)}, b.bins.loadgen)
	}
	cmd := exec.CommandContext(ctx, "ip", append(argv, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return Load{}, fmt.Errorf("loadgen %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	var l Load
	if err := json.Unmarshal(out.Bytes(), &l); err != nil {
		return Load{}, fmt.Errorf("loadgen output %q: %w", out.String(), err)
	}
	return l, nil
}

// netPod is a network namespace of the benchmark's own, joined to the node like the harness's pods
// (a veth whose node end matches the agent's --interfaces pattern), so that a pod object can be given
// its address at a moment of the benchmark's choosing.
type netPod struct {
	NetNS, veth, IP string
}

func newNetPod(run string, n int) (*netPod, error) {
	p := &netPod{NetNS: fmt.Sprintf("iamlet-%s-b%d", run, n), veth: fmt.Sprintf("ia%sb%d", run, n), IP: fmt.Sprintf("10.200.1.%d", n)}
	for _, c := range [][]string{
		{"ip", "netns", "add", p.NetNS},
		{"ip", "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		{"ip", "addr", "add", stack.NodeIP + "/32", "dev", p.veth},
		{"ip", "link", "set", p.veth, "up"},
		{"ip", "route", "add", p.IP + "/32", "dev", p.veth},
		{"ip", "-n", p.NetNS, "link", "set", "lo", "up"},
		{"ip", "-n", p.NetNS, "addr", "add", p.IP + "/24", "dev", "eth0"},
		{"ip", "-n", p.NetNS, "link", "set", "eth0", "up"},
		{"ip", "-n", p.NetNS, "route", "add", "default", "via", stack.NodeIP, "dev", "eth0", "onlink"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			p.remove()
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return p, nil
}

func (p *netPod) remove() {
	_ = exec.Command("ip", "link", "del", p.veth).Run()
	_ = exec.Command("ip", "netns", "delete", p.NetNS).Run()
}

// ipAlloc hands out addresses for pods without a network namespace (no traffic is ever sent to them:
// they only have to be unique in the agent's index), from 10.208.0.0/12.
type ipAlloc struct {
	mu   sync.Mutex
	next uint32
}

func (a *ipAlloc) get() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	n := a.next
	return fmt.Sprintf("10.%d.%d.%d", 208+(n>>16)&0x7, (n>>8)&0xff, n&0xff)
}

// podSpec is a pod object as a controller would create it: a container with the usual trimmings, so
// objects in the apiserver are of a realistic size.
func podSpec(namespace, name, node, sa string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Labels: map[string]string{"app": "bench", "app.kubernetes.io/name": name[:min(len(name), 40)], "pod-template-hash": "5d9c8b7f6"}},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example.invalid/team/app:1.2.3",
				Args: []string{"--listen=:8080", "--log-format=json"},
				Env: []corev1.EnvVar{{Name: "AWS_REGION", Value: "us-east-1"}, {Name: "LOG_LEVEL", Value: "info"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			}},
		},
	}
}

// statusUpdate is when a pod's address went to the API: the status update was sent at Sent and
// answered at Answered; the apiserver stored it in between.
type statusUpdate struct{ Sent, Answered time.Time }

// createPod creates a pod object on node and, if ip is set, marks it Running with that address.
func (b *bench) createPod(ctx context.Context, namespace, name, node, sa, ip string) (*corev1.Pod, statusUpdate, error) {
	api := b.kube.CoreV1().Pods(namespace)
	p, err := api.Create(ctx, podSpec(namespace, name, node, sa), metav1.CreateOptions{})
	if err != nil {
		return nil, statusUpdate{}, fmt.Errorf("create pod %s/%s: %w", namespace, name, err)
	}
	if ip == "" {
		return p, statusUpdate{}, nil
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: stack.NodeIP}
	su := statusUpdate{Sent: time.Now()}
	if p, err = api.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return nil, su, fmt.Errorf("set status of pod %s/%s: %w", namespace, name, err)
	}
	su.Answered = time.Now()
	return p, su, nil
}

// deletePods deletes pods at once (no kubelet finishes a graceful deletion), 16 at a time.
func (b *bench) deletePods(ctx context.Context, namespace string, names []string) error {
	zero := int64(0)
	return parallel(16, len(names), func(i int) error {
		err := b.kube.CoreV1().Pods(namespace).Delete(ctx, names[i], metav1.DeleteOptions{GracePeriodSeconds: &zero})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	})
}

// parallel runs f(0..n-1) on up to workers goroutines and returns the first error.
func parallel(workers, n int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for range min(workers, n) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
