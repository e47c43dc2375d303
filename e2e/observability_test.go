package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/agent"
	"github.com/iamlet/iamlet/e2e/stack"
)

// What operators see (issue 6), on the real stack.

// TestMetricsAndStatusShowEachPod: after two pods fetch credentials, /metrics has their per-pod series
// with the right labels and `iamlet status` shows both with their roles and expiries.
func TestMetricsAndStatusShowEachPod(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewPod(t, "obs-a", stack.PodOptions{ServiceAccount: saA})
	b := suite.NewPod(t, "obs-b", stack.PodOptions{ServiceAccount: saB})
	waitCached(t, a, b)
	for _, p := range []*stack.Pod{a, b} {
		if r := p.Exec(ctx, nil, suite.gov2Bin); r.Err != nil {
			t.Fatalf("%s: %v\n%s", p.Name, r.Err, r.Output())
		}
	}
	m, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	now := float64(time.Now().Unix())
	for _, c := range []struct {
		p    *stack.Pod
		role string
	}{{a, stack.RoleARN(stack.AudienceA)}, {b, stack.RoleARN(stack.AudienceB)}} {
		labels := map[string]string{"namespace": "default", "pod": c.p.Name, "service_account": c.p.ServiceAccount, "role_arn": c.role}
		exp, ok := m.Value("iamlet_credentials_expiry_timestamp_seconds", labels)
		if !ok || exp < now+45*60 || exp > now+61*60 {
			t.Errorf("expiry series for %v = %v (present %v), want about an hour from now", labels, exp, ok)
		}
		if v, ok := m.Value("iamlet_credentials_last_refresh_timestamp_seconds", labels); !ok || v > now+1 || v < now-300 {
			t.Errorf("last refresh series for %v = %v (present %v), want within the last minutes", labels, v, ok)
		}
		if v := m.Sum("iamlet_pod_credential_requests_total", labels); v < 1 {
			t.Errorf("request series for %v = %v, want >= 1", labels, v)
		}
	}

	out, err := exec.Command(suite.agentBin, "status", "--debug-addr", stack.AgentDebugAddr).CombinedOutput()
	if err != nil {
		t.Fatalf("iamlet status: %v\n%s", err, out)
	}
	for _, want := range []string{"ready: true (ok: node-confined minting; hostNetwork pods covered)", "interception: in place", "minting: node-confined minting", "hostNetwork pods: covered", "obs-a", "obs-b", stack.RoleARN(stack.AudienceA), stack.RoleARN(stack.AudienceB)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("iamlet status lacks %q:\n%s", want, out)
		}
	}
	out, err = exec.Command(suite.agentBin, "status", "--debug-addr", stack.AgentDebugAddr, "-o", "json").Output()
	if err != nil {
		t.Fatalf("iamlet status -o json: %v", err)
	}
	var st agent.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	found := 0
	for _, p := range st.Pods {
		if (p.Pod == "obs-a" || p.Pod == "obs-b") && p.State == "valid" && p.Expiration != nil && p.Expiration.After(time.Now().Add(45*time.Minute)) {
			found++
		}
	}
	if found != 2 {
		t.Errorf("status -o json: %d of the two pods valid with an expiry, want 2:\n%s", found, out)
	}
	for _, m := range stack.Markers {
		if strings.Contains(string(out), m) {
			t.Errorf("status carries the node secret %s", m)
		}
	}
}

// TestReadinessWaitsForTheInformer: /healthz answers while /readyz says why the agent is not ready (here:
// it cannot reach the apiserver, so its informer cannot sync); with the apiserver reachable it is ready.
func TestReadinessWaitsForTheInformer(t *testing.T) {
	stopSharedAgent()
	kc, err := os.ReadFile(suite.AgentKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(bad, []byte(strings.ReplaceAll(string(kc), ":6443", ":6449")), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(suite.AgentArgs(), "--kubeconfig="+bad)
	p, err := stack.StartProc(suite.Dir, "iamlet-unready", nil, suite.agentBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if err := p.WaitHTTP("http://"+stack.AgentMetricsAddr+"/healthz", machineDeadline); err != nil {
		t.Fatal(err)
	}
	code, body, err := stack.Get("http://" + stack.AgentMetricsAddr + "/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "informers not synced") {
		t.Errorf("/readyz without an apiserver = %d %q (%v), want 503 'informers not synced'", code, body, err)
	}
	p.Stop()
	sharedAgent(t) // waits for /readyz 200 with the real apiserver
}

// TestRefusedWatchIsNotReady: installed with RBAC that does not let it list ServiceAccounts, the agent is not ready
// and /readyz names the refused list (the real apiserver's 403), rather than "informers not synced"; with the chart's
// RBAC back it syncs, becomes ready and serves. (While it ran, the same refusal makes it name no role:
// agent/roles.TestRefusedListNamesNoRole; the real apiserver ends a watch only after many minutes.)
func TestRefusedWatchIsNotReady(t *testing.T) {
	stopSharedAgent()
	t.Cleanup(func() { restoreStackInstall(t) })
	patch := `[{"op":"test","path":"/rules/0/resources","value":["serviceaccounts","namespaces"]},` +
		`{"op":"replace","path":"/rules/0/resources","value":["namespaces"]}]`
	if out, err := kubectl(nil, "patch", "clusterrole/iamlet", "--type=json", "-p", patch); err != nil {
		t.Fatalf("kubectl patch: %v\n%s", err, out)
	}
	direct := agentClient(t, "")
	if !eventually(machineDeadline, func() bool { // RBAC takes effect once the authorizer's cache has it
		_, err := direct.CoreV1().ServiceAccounts("").List(context.Background(), metav1.ListOptions{Limit: 1})
		return apierrors.IsForbidden(err)
	}) {
		t.Fatal("the agent's token still lists ServiceAccounts")
	}

	p, err := stack.StartProc(suite.Dir, "iamlet-refused", nil, suite.agentBin, suite.AgentArgs()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	const why = "the apiserver refuses the agent's list or watch of ServiceAccounts"
	code, body := waitReadyz(t, func(_ int, body string) bool { return strings.Contains(body, why) })
	// The reflector's first request may be a streamed list (a watch): "cannot list" or "cannot watch".
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `resource "serviceaccounts"`) {
		t.Errorf("/readyz = %d %q, want 503 naming %q and the apiserver's words", code, body, why)
	}
	// Not ready, yet the rules are kept: a table another program flushes meanwhile is put back, as once ready.
	backend := installedBackend(t)
	nodeRun(t, "iptables-"+backend, "-w", "5", "-t", "nat", "-F")
	waitRestored(t, backend)

	restoreStackInstall(t)
	waitReadyz(t, func(code int, _ string) bool { return code == http.StatusOK })
	pod := suite.NewPod(t, "refused-then-served", stack.PodOptions{ServiceAccount: saA})
	untilClientSays(t, pod, "get ok", "a pod served once the apiserver answers the agent's list")
}

// TestMonitoringQueriesNameExportedMetrics: every metric the Grafana dashboard and the alert rules query
// is one the running agent exports.
func TestMonitoringQueriesNameExportedMetrics(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "mon", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p)
	if r := p.Exec(context.Background(), nil, suite.gov2Bin); r.Err != nil {
		t.Fatalf("gov2: %v\n%s", r.Err, r.Output())
	}
	m, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	dashboard, err := os.ReadFile("../deploy/helm/iamlet/files/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	rules, err := os.ReadFile("../deploy/helm/iamlet/files/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(rules), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(l), "expr:"); ok {
			exprs = append(exprs, e)
		}
	}
	name := regexp.MustCompile(`iamlet_[a-z0-9_]+`)
	checked := 0
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			base := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suf); ok {
					if _, hist := m[b]; hist {
						base = b
					}
				}
			}
			if _, ok := m[base]; !ok {
				t.Errorf("query %q names %s, which the agent does not export", e, n)
			}
			checked++
		}
	}
	if checked < 15 {
		t.Errorf("only %d metric references found in the dashboard and rules; the parser is probably wrong", checked)
	}
}

// TestLogsCarryNoSecrets: after pods fetched full credential documents, no agent log holds a secret
// access key, a session token or a JWT (the web identity tokens the agent minted).
func TestLogsCarryNoSecrets(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "logs", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p)
	r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/"+roleName(stack.RoleARN(stack.AudienceA)))
	var doc struct{ AccessKeyId, SecretAccessKey, Token string }
	_, body, _ := strings.Cut(r.Stdout, "\n200\n")
	if err := json.Unmarshal([]byte(strings.TrimSpace(body)), &doc); err != nil || doc.SecretAccessKey == "" || doc.Token == "" {
		t.Fatalf("credential document: %v\n%s", err, r.Output())
	}
	logs, _ := filepath.Glob(filepath.Join(suite.Dir, "iamlet*.log"))
	if len(logs) == 0 {
		t.Fatal("no agent logs found")
	}
	jwt := regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.`)
	audited := false
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for what, secret := range map[string]string{"secret access key": doc.SecretAccessKey, "session token": doc.Token} {
			if strings.Contains(s, secret) {
				t.Errorf("%s contains the %s", filepath.Base(f), what)
			}
		}
		if loc := jwt.FindStringIndex(s); loc != nil {
			t.Errorf("%s contains a JWT at byte %d", filepath.Base(f), loc[0])
		}
		audited = audited || strings.Contains(s, `"credentials issued"`)
	}
	if !audited {
		t.Errorf("no agent log has an audit line for an issuance; is the grep looking at the right logs? %v", logs)
	}
}

func roleName(arn string) string { return arn[strings.LastIndex(arn, "/")+1:] }

// TestPerPodSeriesSwitch measures the agent's series on one node with n pods, with per-pod series on (the default)
// and off (--per-pod-metrics=false): off, no series names a pod and the count does not grow with pods; on, each pod
// adds its expiry, last-refresh and request series. The counts are logged for docs/troubleshooting.md#metrics.
func TestPerPodSeriesSwitch(t *testing.T) {
	const n = 10
	var pods []*stack.Pod
	for i := range n {
		pods = append(pods, suite.NewPod(t, fmt.Sprintf("series-%d", i), stack.PodOptions{ServiceAccount: saA}))
	}
	probe := clientBin(t, "probe")
	count := func(m stack.Metrics) (all, perPod int) {
		for name, mf := range m {
			// As Prometheus stores them: a histogram is its buckets, its sum and its count.
			for _, s := range mf.Metric {
				if strings.HasPrefix(name, "iamlet_") {
					all++
					if h := s.GetHistogram(); h != nil {
						all += len(h.GetBucket()) + 1
					}
				}
			}
			for _, s := range mf.Metric {
				for _, l := range s.Label {
					if l.GetName() == "pod" {
						perPod++
						break
					}
				}
			}
		}
		return all, perPod
	}
	measure := func(extra ...string) (all, perPod int) {
		agent := dedicatedAgent(t, extra...)
		defer agent.Stop()
		for _, p := range pods {
			if r := p.Exec(context.Background(), nil, probe, "-token", "/latest/meta-data/iam/security-credentials/"); r.Err != nil {
				t.Fatalf("probe in %s: %v\n%s", p.Name, r.Err, r.Output())
			}
		}
		// Every pod's credentials held (the node's earliest expiry is set) and every request counted.
		m := waitMetric(t, "the pods' requests counted", machineDeadline, func(m stack.Metrics) bool {
			return m.Sum("iamlet_credential_requests_total", nil) >= n && m.Sum("iamlet_credentials_cache_entries", nil) >= n
		})
		return count(m)
	}
	offAll, offPerPod := measure("--per-pod-metrics=false")
	onAll, onPerPod := measure()
	stopSharedAgent()
	if offPerPod != 0 {
		t.Errorf("with per-pod series off, %d series carry a pod label", offPerPod)
	}
	// Only the series with a pod label are compared: the node's aggregates carry outcome labels (a pod's first
	// request a hit or a miss, an STS error or none) whose set can differ by one or two between two agents' runs.
	if onPerPod < 3*n {
		t.Errorf("with per-pod series on: %d series with a pod label; want at least 3 per pod (%d pods)", onPerPod, n)
	}
	t.Logf("iamlet_* series on one node with %d pods: per-pod on %d (%d with a pod label), off %d; %.1f per pod", n, onAll, onPerPod, offAll, float64(onAll-offAll)/n)
}

// TestRegionFromTheNodeIMDS: started as the manifests start it (no --region), the agent asked the node's IMDS for its
// region, behind its own rules, and says so on its ready line.
func TestRegionFromTheNodeIMDS(t *testing.T) {
	sharedAgent(t)
	_, want, err := stack.Get("http://" + stack.IMDSv4 + "/latest/meta-data/placement/region")
	if err != nil || want == "" {
		t.Fatalf("the node's IMDS region: %q, %v", want, err)
	}
	b, err := os.ReadFile(suite.agent.Log)
	if err != nil {
		t.Fatal(err)
	}
	var asked, ready string
	for _, line := range strings.Split(string(b), "\n") {
		var e struct{ Msg, Region string }
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch e.Msg {
		case "region from the node's IMDS":
			asked = e.Region
		case "iamlet ready":
			ready = e.Region
		}
	}
	if asked != want || ready != want {
		t.Errorf("region asked of the node's IMDS %q, on the ready line %q; the node's IMDS says %q", asked, ready, want)
	}
}
