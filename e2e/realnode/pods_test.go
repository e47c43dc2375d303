package realnode

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
	"github.com/iamlet/iamlet/policy/issuance"
)

// roleName is the role name the agent lists for the role of audience.
func roleName(audience string) string { return roles.RoleName(stack.RoleARN(audience)) }

// ownRoles: containers with annotated ServiceAccounts get their own roles through aws-sdk-go-v2, the AWS CLI and
// boto3 over IMDSv2 and use them on MinIO (role A reads and may not write, role B writes and may not read); a pod
// without a role gets nothing of the node.
func ownRoles(t *testing.T) {
	s3 := []string{"-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket}
	cases := []struct {
		name, sa, image string
		cmd             []string
		want            []string
		fails           bool
	}{
		{"go-v2-a", stack.SAA, stack.GoClientsImage, append([]string{"/gov2"}, s3...), []string{"get ok", "put denied AccessDenied"}, false},
		{"go-v2-b", stack.SAB, stack.GoClientsImage, append([]string{"/gov2"}, s3...), []string{"get denied AccessDenied", "put ok"}, false},
		{"boto3-a", stack.SAA, stack.DebianClientsImage, []string{"/usr/bin/python3", "/boto3_client.py", "--endpoint", stack.MinIOFromPods, "--bucket", stack.Bucket},
			[]string{"creds iam-role ", "get ok", "put denied AccessDenied"}, false},
		{"aws-cli-a", stack.SAA, stack.DebianClientsImage, []string{"/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", "get-object",
			"--bucket", stack.Bucket, "--key", "seed", "/dev/null"}, []string{`"ContentLength": 4`}, false},
		{"aws-cli-b", stack.SAB, stack.DebianClientsImage, []string{"/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods, "s3api", "put-object",
			"--bucket", stack.Bucket, "--key", "from-cli", "--body", "/etc/hostname"}, []string{`"ETag"`}, false},
		{"go-v2-no-role", stack.SANoRole, stack.GoClientsImage, append([]string{"/gov2"}, s3...), nil, true},
		{"aws-cli-no-role", stack.SANoRole, stack.DebianClientsImage, []string{"/usr/bin/aws", "--endpoint-url", stack.MinIOFromPods,
			"s3api", "get-object", "--bucket", stack.Bucket, "--key", "seed", "/dev/null"}, []string{"Unable to locate credentials"}, true},
		{"raw-no-role", stack.SANoRole, stack.GoClientsImage, []string{"/firstcreds"}, []string{"firstcreds fail role 404"}, true},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	outs := map[string]string{}
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			phase, out := node.RunPod(t, stack.ClientPod(c.name, c.sa, c.image, c.cmd...), deadline)
			mu.Lock()
			outs[c.name] = out
			mu.Unlock()
			stack.AssertNoNodeSecrets(t, c.name, out)
			if failed := phase == corev1.PodFailed; failed != c.fails {
				t.Errorf("%s: pod %s, want failed=%v:\n%s", c.name, phase, c.fails, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("%s: no %q in:\n%s", c.name, w, out)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.Logf("the agent's refusals:\n%s", agentRefusals(t))
	}
	issuedOnTheNode(t, map[string]string{"go-v2-a": stack.SAA, "go-v2-b": stack.SAB}, outs)
}

// issuedOnTheNode: the chart's issuanceRecords.hostPath gives the agent a node file it appends a record to for every
// credential set it issues, readable by the reader `iamlet policy` uses, naming each pod's access key, pod and
// ServiceAccount.
func issuedOnTheNode(t *testing.T, want map[string]string, outs map[string]string) {
	t.Helper()
	file := filepath.Join(issuanceDir(), "issuance.jsonl")
	recs, err := issuance.ReadFiles(file)
	if err != nil {
		t.Fatalf("issuance records on the node: %v", err)
	}
	byKey := map[string]issuance.Record{}
	for _, r := range recs {
		byKey[r.AccessKeyID] = r
	}
	for pod, sa := range want {
		var key string
		for _, l := range strings.Split(outs[pod], "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "creds" {
				key = f[2]
			}
		}
		r, ok := byKey[key]
		if key == "" || !ok || r.Pod != pod || r.ServiceAccount != sa || r.Namespace != "default" {
			t.Errorf("%s used access key %q; the node's issuance records (%d in %s) say %+v", pod, key, len(recs), file, r)
		}
	}
}

// agentRefusals are the agent's log lines about refused requests.
func agentRefusals(t *testing.T) string {
	out, err := node.Kubectl(nil, "-n", stack.AgentNamespace, "logs", "daemonset/iamlet", "-c", "iamlet")
	if err != nil {
		return fmt.Sprintf("kubectl logs: %v: %s", err, out)
	}
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"refused"`) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// attackSpellings: the adversarial suite's spellings of the node's secrets, sent byte for byte from a container with
// and without an IMDSv2 token, are all refused and return nothing of the node.
func attackSpellings(t *testing.T) {
	for _, token := range []bool{false, true} {
		cmd := []string{"/probe"}
		if token {
			cmd = append(cmd, "-token")
		}
		name := fmt.Sprintf("attacker-token-%v", token)
		_, out := node.RunPod(t, stack.ClientPod(name, stack.SAA, stack.GoClientsImage, append(cmd, stack.AttackPaths...)...), deadline)
		stack.AssertNoNodeSecrets(t, name, out)
		answers := stack.ParseProbe(out)
		if len(answers) != len(stack.AttackPaths) {
			t.Fatalf("%s: %d answers to %d requests:\n%s", name, len(answers), len(stack.AttackPaths), out)
		}
		for _, a := range answers {
			if a.Status == "200" || strings.HasPrefix(a.Status, "error") {
				t.Errorf("%s: %s got %s, want the agent's refusal:\n%s", name, a.Request, a.Status, a.Body)
			}
		}
	}
}

// firstRequests: n pods whose container's first act is the IMDSv2 credential exchange, with no sleep and no retry,
// all get their role on that first try. The latencies (process start to credentials, and pod creation to the pod's
// end) are reported; pods start ten at a time, as a node's pods do after a scale-up.
func firstRequests(t *testing.T, n int) {
	var mu sync.Mutex
	var inPod, total []float64
	want := roleName(stack.AudienceA)
	before, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	for batch := 0; batch < n; batch += 10 {
		var wg sync.WaitGroup
		for i := batch; i < batch+10 && i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				phase, out := node.RunPod(t, stack.ClientPod(fmt.Sprintf("first-%02d", i), stack.SAA, stack.GoClientsImage, "/firstcreds"), deadline)
				elapsed := time.Since(t0)
				f := strings.Fields(out)
				if phase != corev1.PodSucceeded || len(f) != 5 || f[1] != "ok" || f[2] != want {
					t.Errorf("pod %d: %s, want its role %s on the first try:\n%s", i, phase, want, out)
					return
				}
				ms, err := strconv.ParseFloat(f[4], 64)
				if err != nil {
					t.Errorf("pod %d: %v", i, err)
					return
				}
				mu.Lock()
				inPod, total = append(inPod, ms), append(total, float64(elapsed.Milliseconds()))
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	if t.Failed() {
		t.Logf("the agent's refusals:\n%s", agentRefusals(t))
	}
	// Each pod's credentials were fetched when the pod was bound to the node, before its container started: its
	// request waited, if at all, for the kubelet's status update that tells the agent its address, never for STS.
	after, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	delta := func(m map[string]string) float64 {
		return after.Sum("iamlet_credentials_fetches_total", m) - before.Sum("iamlet_credentials_fetches_total", m)
	}
	prefetched, missed := delta(map[string]string{"reason": "prefetch", "result": "success"}), delta(map[string]string{"reason": "miss"})
	if prefetched < float64(n) || missed != 0 {
		t.Errorf("fetches during %d pod starts: %.0f prefetched, %.0f on a miss; want every pod prefetched and none missed", n, prefetched, missed)
	}
	t.Logf("fetches: %.0f prefetched, %.0f on a request's miss", prefetched, missed)
	t.Logf("first request, process start to credentials, %d pods: %s", len(inPod), summary(inPod))
	t.Logf("pod created to pod ended (includes the sandbox, CNI and the container's start): %s", summary(total))
}

func summary(ms []float64) string {
	if len(ms) == 0 {
		return "none"
	}
	s := slices.Clone(ms)
	slices.Sort(s)
	q := func(p float64) float64 { return s[int(p*float64(len(s)-1))] }
	return fmt.Sprintf("min %.1f ms, median %.1f ms, p90 %.1f ms, max %.1f ms", s[0], q(0.5), q(0.9), s[len(s)-1])
}

// loadPod starts a pod that makes the credential exchange every 50 ms for d, printing each round; more are firstcreds
// flags.
func loadPod(t *testing.T, name, sa string, d time.Duration, more ...string) {
	t.Helper()
	pod := stack.ClientPod(name, sa, stack.GoClientsImage, append([]string{"/firstcreds", "-for", d.String(), "-every", "50ms"}, more...)...)
	if _, err := node.Kube.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.DeletePod("default", name) })
}
