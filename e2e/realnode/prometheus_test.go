package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
)

// serviceMonitorScrapeConfig is the scrape configuration the Prometheus Operator makes of the chart's ServiceMonitor:
// the endpoints of the release's Service (targetsFile, endpointTargets), the operator's own target labels, then the
// ServiceMonitor's relabelings as written.
func serviceMonitorScrapeConfig(t *testing.T, targetsFile string) string {
	out, err := node.Helm("template", "iamlet", stack.RepoPath("deploy/helm/iamlet"), "--namespace", stack.AgentNamespace,
		"--set", "serviceMonitor.enabled=true", "--show-only", "templates/servicemonitor.yaml")
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var sm struct {
		Spec struct {
			Selector  struct{ MatchLabels map[string]string }
			Endpoints []struct {
				Port, Path  string
				HonorLabels bool
				Relabelings []struct {
					SourceLabels []string `json:"sourceLabels"`
					TargetLabel  string   `json:"targetLabel"`
					Replacement  *string  `json:"replacement"`
					Regex        string   `json:"regex"`
					Action       string   `json:"action"`
				}
			}
		}
	}
	if err := sigsyaml.Unmarshal([]byte(out), &sm); err != nil || len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("the chart's ServiceMonitor: %v\n%s", err, out)
	}
	ep := sm.Spec.Endpoints[0]
	type relabel struct {
		SourceLabels []string `json:"source_labels,omitempty"`
		TargetLabel  string   `json:"target_label,omitempty"`
		Replacement  *string  `json:"replacement,omitempty"`
		Regex        string   `json:"regex,omitempty"`
		Action       string   `json:"action,omitempty"`
	}
	str := func(s string) *string { return &s }
	var rel []relabel
	for k, v := range sm.Spec.Selector.MatchLabels {
		rel = append(rel, relabel{SourceLabels: []string{"__meta_kubernetes_service_label_" + regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(k, "_")}, Regex: v, Action: "keep"})
	}
	rel = append(rel,
		relabel{SourceLabels: []string{"__meta_kubernetes_endpoint_port_name"}, Regex: ep.Port, Action: "keep"},
		relabel{SourceLabels: []string{"__meta_kubernetes_namespace"}, TargetLabel: "namespace"},
		relabel{SourceLabels: []string{"__meta_kubernetes_service_name"}, TargetLabel: "service"},
		relabel{SourceLabels: []string{"__meta_kubernetes_pod_name"}, TargetLabel: "pod"},
		relabel{SourceLabels: []string{"__meta_kubernetes_pod_container_name"}, TargetLabel: "container"},
		relabel{SourceLabels: []string{"__meta_kubernetes_service_name"}, TargetLabel: "job"},
		relabel{TargetLabel: "endpoint", Replacement: str(ep.Port)})
	for _, r := range ep.Relabelings {
		rel = append(rel, relabel{SourceLabels: r.SourceLabels, TargetLabel: r.TargetLabel, Replacement: r.Replacement, Regex: r.Regex, Action: r.Action})
	}
	// Debian's Prometheus is built without Kubernetes discovery: the test plays it, writing for each endpoint of the
	// chart's Service the target and the __meta_kubernetes_* labels the endpoints role gives, for the relabelings.
	cfg := map[string]any{
		"global":     map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"rule_files": []string{stack.RepoPath("deploy/helm/iamlet/files/alerts.yaml")},
		"scrape_configs": []any{map[string]any{
			"job_name": "serviceMonitor/" + stack.AgentNamespace + "/iamlet/0", "honor_labels": ep.HonorLabels, "metrics_path": ep.Path,
			"file_sd_configs": []any{map[string]any{"files": []string{targetsFile}, "refresh_interval": "1s"}},
			"relabel_configs": rel,
		}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// endpointTargets is what Prometheus's Kubernetes endpoints discovery finds for the chart's Service, as file_sd
// targets: each ready address with its port, and the meta labels the relabelings read.
func endpointTargets(t *testing.T) []byte {
	ctx := context.Background()
	svc, err := node.Kube.CoreV1().Services(stack.AgentNamespace).Get(ctx, "iamlet", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var eps *corev1.Endpoints
	end := time.Now().Add(deadline)
	for eps == nil || len(eps.Subsets) == 0 {
		if time.Now().After(end) {
			t.Fatalf("the Service %s/iamlet has no endpoints", stack.AgentNamespace)
		}
		eps, _ = node.Kube.CoreV1().Endpoints(stack.AgentNamespace).Get(ctx, "iamlet", metav1.GetOptions{})
		time.Sleep(200 * time.Millisecond)
	}
	var groups []map[string]any
	for _, sub := range eps.Subsets {
		for _, port := range sub.Ports {
			for _, a := range sub.Addresses {
				labels := map[string]string{
					"__meta_kubernetes_namespace":          stack.AgentNamespace,
					"__meta_kubernetes_service_name":       svc.Name,
					"__meta_kubernetes_endpoint_port_name": port.Name,
				}
				for k, v := range svc.Labels {
					labels["__meta_kubernetes_service_label_"+regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(k, "_")] = v
				}
				if a.NodeName != nil {
					labels["__meta_kubernetes_endpoint_node_name"] = *a.NodeName
				}
				if a.TargetRef != nil && a.TargetRef.Kind == "Pod" {
					pod, err := node.Kube.CoreV1().Pods(stack.AgentNamespace).Get(ctx, a.TargetRef.Name, metav1.GetOptions{})
					if err != nil {
						t.Fatal(err)
					}
					labels["__meta_kubernetes_pod_name"] = pod.Name
					labels["__meta_kubernetes_pod_node_name"] = pod.Spec.NodeName
					for _, c := range pod.Spec.Containers {
						for _, cp := range c.Ports {
							if cp.ContainerPort == port.Port {
								labels["__meta_kubernetes_pod_container_name"] = c.Name
							}
						}
					}
				}
				groups = append(groups, map[string]any{"targets": []string{fmt.Sprintf("%s:%d", a.IP, port.Port)}, "labels": labels})
			}
		}
	}
	b, err := json.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// promQuery runs an instant query against the test's Prometheus.
func promQuery(q string) ([]map[string]string, error) {
	resp, err := http.Get("http://127.0.0.1:9090/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status, Error string
		Data          struct {
			Result []struct {
				Metric map[string]string
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s", r.Error)
	}
	var out []map[string]string
	for _, s := range r.Data.Result {
		out = append(out, s.Metric)
	}
	return out, nil
}

// prometheusScrapes: a real Prometheus (Debian's), configured as the Prometheus Operator configures it from the
// chart's ServiceMonitor and loading the chart's alert rules, scrapes the agent on the real node. The agent's target
// carries the node; per-pod series keep the workload's namespace and pod (no exported_* labels); every dashboard
// query returns data; every alert expression, without its threshold, returns series labelled with the node.
func prometheusScrapes(t *testing.T) {
	ctx := context.Background()
	// Something of each kind to see: a running pod with a role (per-pod series), and a ServiceAccount whose role STS
	// refuses (STS errors).
	if _, err := node.Kube.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "sts-refuses", Annotations: map[string]string{roles.AnnotationRoleARN: "arn:minio:iam:::role/no-such-role"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{stack.ClientPod("prom-a", stack.SAA, stack.GoClientsImage, "/pause"),
		stack.ClientPod("prom-refused", "sts-refuses", stack.GoClientsImage, "/firstcreds", "-for", "10m", "-every", "1s")} {
		if _, err := node.Kube.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.DeletePod("default", p.Name) })
	}
	targetsFile := filepath.Join(node.Dir, "prometheus-targets.json")
	cfgFile := filepath.Join(node.Dir, "prometheus.yml")
	if err := os.WriteFile(targetsFile, endpointTargets(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, []byte(serviceMonitorScrapeConfig(t, targetsFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := stack.StartProc(node.Dir, "prometheus", nil, "prometheus", "--config.file="+cfgFile,
		"--storage.tsdb.path="+filepath.Join(node.Dir, "prometheus-data"), "--web.listen-address=127.0.0.1:9090")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	// Until the target has been up for a few scrapes (rates need two samples) and the new pod's series and the STS
	// refusal are in.
	ready := func() bool {
		up, _ := promQuery(`count_over_time(up{job="iamlet", node="` + stack.NodeName + `"}[1m]) >= 3`)
		pod, _ := promQuery(`iamlet_credentials_expiry_timestamp_seconds{namespace="default", pod="prom-a"}`)
		sts, _ := promQuery(`iamlet_sts_requests_total{result="error"}`)
		return len(up) == 1 && len(pod) == 1 && len(sts) > 0
	}
	if err := p.Wait(deadline, ready); err != nil {
		t.Fatalf("Prometheus never saw the agent, the pod's series and an STS error: %v", err)
	}
	if ex, _ := promQuery(`{exported_namespace!=""} or {exported_pod!=""}`); len(ex) > 0 {
		t.Errorf("series with exported_* labels: the per-pod labels clashed with the target's: %v", ex[0])
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile(stack.RepoPath("deploy/helm/iamlet/files/dashboard.json"))
	if err != nil || json.Unmarshal(b, &d) != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, panel := range d.Panels {
		for _, tg := range panel.Targets {
			q := strings.ReplaceAll(tg.Expr, "$node", stack.NodeName)
			if res, err := promQuery(q); err != nil || len(res) == 0 {
				t.Errorf("dashboard panel %q: %s returns nothing (%v)", panel.Title, q, err)
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	b, err = os.ReadFile(stack.RepoPath("deploy/helm/iamlet/files/alerts.yaml"))
	if err != nil || sigsyaml.Unmarshal(b, &rules) != nil {
		t.Fatalf("alerts: %v", err)
	}
	threshold := regexp.MustCompile(`\s*(==|!=|<=|>=|<|>)\s*[0-9.]+`)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			q := threshold.ReplaceAllString(r.Expr, "")
			res, err := promQuery(q)
			if err != nil || len(res) == 0 {
				t.Errorf("%s: %s returns nothing (%v)", r.Alert, q, err)
				continue
			}
			for _, m := range res {
				if m["node"] != stack.NodeName {
					t.Errorf("%s: %s returns a series without node=%s: %v", r.Alert, q, stack.NodeName, m)
				}
			}
		}
	}
}
