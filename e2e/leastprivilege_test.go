package e2e

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
	"github.com/iamlet/iamlet/policy"
)

// Least privilege from evidence (issue 17), on the real stack: two workloads share one broad role (MinIO's role C,
// anything on any bucket); MinIO's audit webhook records what each really called; a test-only converter turns
// that into CloudTrail records; `iamlet policy` learns a policy per ServiceAccount from them and the agent's
// issuance records; applied as the ServiceAccounts' session policies, each workload still does its work and no
// more.

// The two workloads: what each does, under its own prefix of the bucket.
var (
	reportsOps = []string{"put:" + stack.Bucket + "/reports/daily.csv", "get:" + stack.Bucket + "/reports/daily.csv",
		"head:" + stack.Bucket + "/reports/daily.csv", "list:" + stack.Bucket + "/reports/", "multipart:" + stack.Bucket + "/reports/archive.bin"}
	ingestOps = []string{"put:" + stack.Bucket + "/ingest/batch-1.json", "get:" + stack.Bucket + "/ingest/batch-1.json"}
)

func TestLeastPrivilegeFromEvidence(t *testing.T) {
	agent := sharedAgent(t)
	ns := newNamespace(t, "lp", nil)
	role := map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceC), roles.AnnotationAudience: stack.AudienceC}
	reportsSA := newServiceAccount(t, ns, "reports", role)
	ingestSA := newServiceAccount(t, ns, "ingest", role)
	reports := suite.NewPod(t, "reports", stack.PodOptions{Namespace: ns, ServiceAccount: reportsSA})
	ingest := suite.NewPod(t, "ingest", stack.PodOptions{Namespace: ns, ServiceAccount: ingestSA})
	waitCached(t, reports, ingest)

	// Observe: the broad role lets both do their work.
	keys := map[*stack.Pod]string{}
	for p, ops := range map[*stack.Pod][]string{reports: reportsOps, ingest: ingestOps} {
		keys[p] = s3ops(t, p, ops, nil)
	}
	// What MinIO saw: one audit entry per S3 call (a multipart upload is three).
	calls := 0
	for _, ops := range [][]string{reportsOps, ingestOps} {
		calls += len(ops) + 2*strings.Count(strings.Join(ops, " "), "multipart:")
	}
	entries := waitAudit(t, calls, keys[reports], keys[ingest])
	trail := t.TempDir()
	writeCloudTrail(t, filepath.Join(trail, "123456789012_CloudTrail_us-east-1_20261130T1200Z_lp.json.gz"), entries)

	// Learn: a policy per ServiceAccount, from CloudTrail and the agent's own log (its issuance records).
	policies := learnPolicies(t, trail, agent.Log)
	for sa, want := range map[string][]string{
		ns + "/" + reportsSA: {
			"s3:GetObject arn:aws:s3:::" + stack.Bucket + "/reports/daily.csv",
			"s3:ListBucket arn:aws:s3:::" + stack.Bucket,
			"s3:PutObject arn:aws:s3:::" + stack.Bucket + "/reports/archive.bin",
			"s3:PutObject arn:aws:s3:::" + stack.Bucket + "/reports/daily.csv",
		},
		ns + "/" + ingestSA: {
			"s3:GetObject arn:aws:s3:::" + stack.Bucket + "/ingest/batch-1.json",
			"s3:PutObject arn:aws:s3:::" + stack.Bucket + "/ingest/batch-1.json",
		},
	} {
		doc, ok := policies[sa]
		if !ok {
			t.Fatalf("no policy learned for %s; learned %v", sa, keysOf(policies))
		}
		if got := grants(t, doc); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: learned\n%s\nwant\n%s", sa, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Report-only first: on new records, `iamlet policy check` names what the learned policy would deny, here a
	// DeleteObject the broad role still allows; a workload that keeps to its habits passes.
	seen := len(suite.Audit(keys[reports], keys[ingest]))
	s3ops(t, reports, []string{"delete:" + stack.Bucket + "/reports/old.csv", "get:" + stack.Bucket + "/reports/daily.csv"}, nil)
	s3ops(t, ingest, ingestOps, nil)
	fresh := t.TempDir()
	writeCloudTrail(t, filepath.Join(fresh, "123456789012_CloudTrail_us-east-1_20261130T1300Z_lp.json.gz"), waitAudit(t, seen+4, keys[reports], keys[ingest])[seen:])
	if denied, code := checkPolicy(t, policies[ns+"/"+reportsSA], ns+"/"+reportsSA, fresh, agent.Log); code != 1 ||
		strings.Join(denied, "\n") != "s3:DeleteObject arn:aws:s3:::"+stack.Bucket+"/reports/old.csv" {
		t.Errorf("policy check for %s: exit %d, would deny %q; want exit 1 and only the DeleteObject", reportsSA, code, denied)
	}
	if denied, code := checkPolicy(t, policies[ns+"/"+ingestSA], ns+"/"+ingestSA, fresh, agent.Log); code != 0 || len(denied) != 0 {
		t.Errorf("policy check for %s: exit %d, would deny %q; want exit 0 and nothing", ingestSA, code, denied)
	}

	// Narrow: each learned policy becomes its ServiceAccount's session policy, and takes effect at once: a new session.
	for p, sa := range map[*stack.Pod]string{reports: reportsSA, ingest: ingestSA} {
		annotate(t, ns, sa, roles.AnnotationSessionPolicy, policies[ns+"/"+sa])
		waitNewKey(t, p, keys[p])
	}
	// Each workload still does its work, and iamlet status names the access key it holds and the policy narrowing it.
	narrowed := map[*stack.Pod]string{reports: s3ops(t, reports, reportsOps, nil), ingest: s3ops(t, ingest, ingestOps, nil)}
	st := agentStatus(t)
	for p, key := range narrowed {
		doc, err := policy.Parse([]byte(policies[ns+"/"+p.ServiceAccount]))
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, ps := range st.Pods {
			if ps.Namespace == ns && ps.Pod == p.Name {
				found = true
				if ps.AccessKeyID != key || ps.SessionPolicySHA256 != doc.Hash() || ps.State != "valid" {
					t.Errorf("iamlet status for %s: access key %q, session policy %q, state %s; want %q, %q, valid",
						p.Name, ps.AccessKeyID, ps.SessionPolicySHA256, ps.State, key, doc.Hash())
				}
			}
		}
		if !found {
			t.Errorf("%s not in iamlet status", p.Name)
		}
	}
	// ... and nothing the role allows beyond it.
	s3ops(t, reports, []string{"delete:" + stack.Bucket + "/reports/daily.csv", "put:" + stack.OtherBucket + "/reports/daily.csv",
		"get:" + stack.Bucket + "/ingest/batch-1.json", "put:" + stack.Bucket + "/reports/new.csv"}, []string{"AccessDenied"})
	s3ops(t, ingest, []string{"get:" + stack.Bucket + "/reports/daily.csv", "list:" + stack.Bucket + "/ingest/",
		"delete:" + stack.Bucket + "/ingest/batch-1.json"}, []string{"AccessDenied"})
}

// s3ops runs the s3ops client in p and checks every call's outcome: ok, or when denied is given, denied with that code.
// It returns the access key ID the client used.
func s3ops(t *testing.T, p *stack.Pod, ops, denied []string) string {
	t.Helper()
	r := p.Exec(context.Background(), nil, append([]string{clientBin(t, "s3ops"), "-endpoint", stack.MinIOFromPods}, ops...)...)
	if r.Err != nil {
		t.Fatalf("%s: s3ops: %v\n%s", p.Name, r.Err, r.Output())
	}
	key := ""
	sc := bufio.NewScanner(strings.NewReader(r.Stdout))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "creds":
			key = f[1]
		case len(f) >= 3:
			want := "ok"
			if denied != nil {
				want = "denied " + strings.Join(denied, " ")
			}
			if got := strings.Join(f[2:], " "); got != want {
				t.Errorf("%s: %s %s: %s, want %s", p.Name, f[0], f[1], got, want)
			}
		}
	}
	if key == "" || strings.Count(r.Stdout, "\n") != len(ops)+1 {
		t.Fatalf("%s: s3ops printed:\n%s", p.Name, r.Output())
	}
	return key
}

// waitAudit waits until MinIO's audit webhook has delivered n entries made with keys.
func waitAudit(t *testing.T, n int, keys ...string) []stack.AuditEntry {
	t.Helper()
	var got []stack.AuditEntry
	waitUntil(t, machineDeadline, fmt.Sprintf("%d audit entries from MinIO for %v", n, keys), func() bool {
		got = suite.Audit(keys...)
		return len(got) >= n
	})
	return got
}

// waitNewKey waits until the pod is served credentials other than old.
func waitNewKey(t *testing.T, p *stack.Pod, old string) {
	t.Helper()
	waitUntil(t, machineDeadline, p.Name+"'s new session after its session policy changed", func() bool {
		r := p.Exec(context.Background(), nil, clientBin(t, "s3ops"))
		f := strings.Fields(r.Stdout)
		return r.Err == nil && len(f) == 2 && f[1] != old
	})
}

func annotate(t *testing.T, ns, sa, key, value string) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := suite.Kube.CoreV1().ServiceAccounts(ns).Patch(context.Background(), sa, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotate %s/%s: %v", ns, sa, err)
	}
}

// writeCloudTrail converts MinIO audit entries into CloudTrail records, as CloudTrail delivers them to S3 (a
// gzipped {"Records":[...]}), with S3 data events' shapes and names: MinIO's API names are its own (PutObjectPart,
// NewMultipartUpload, ListObjectsV2), CloudTrail's are S3's (UploadPart, CreateMultipartUpload, and ListObjects with
// list-type 2). Only what an audit entry says is used: the identity is the access key, as in CloudTrail's
// userIdentity.accessKeyId; the session name is left to the issuance records.
func writeCloudTrail(t *testing.T, path string, entries []stack.AuditEntry) {
	t.Helper()
	names := map[string]string{"PutObjectPart": "UploadPart", "NewMultipartUpload": "CreateMultipartUpload", "ListObjectsV2": "ListObjects"}
	var records []map[string]any
	for i, e := range entries {
		name := e.API.Name
		if n, ok := names[name]; ok {
			name = n
		}
		params := map[string]any{"bucketName": e.API.Bucket, "Host": "s3.us-east-1.amazonaws.com"}
		if e.API.Object != "" {
			params["key"] = e.API.Object
		}
		for k, v := range e.RequestQuery {
			params[k] = v
		}
		rec := map[string]any{
			"eventVersion": "1.09",
			"userIdentity": map[string]any{"type": "AssumedRole", "accountId": "123456789012", "accessKeyId": e.AccessKey},
			"eventTime":    e.Time, "eventSource": "s3.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
			"sourceIPAddress": e.RemoteHost, "userAgent": e.UserAgent, "requestParameters": params,
			"requestID": e.RequestID, "eventID": fmt.Sprintf("e2e-%d", i), "readOnly": strings.HasPrefix(name, "Get") || strings.HasPrefix(name, "Head") || strings.HasPrefix(name, "List"),
			"eventType": "AwsApiCall", "managementEvent": false, "recipientAccountId": "123456789012", "eventCategory": "Data",
		}
		if e.API.StatusCode >= 300 {
			rec["errorCode"] = "AccessDenied"
		}
		records = append(records, rec)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	if err := json.NewEncoder(zw).Encode(map[string]any{"Records": records}); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestBadSessionPolicy: a session policy annotation that cannot be honoured (not JSON, over STS's size, beyond the
// namespace's ceiling) refuses the pod with 403, never serves it the unnarrowed role, and says why in the agent's
// log and in `iamlet status`, naming the annotation.
func TestBadSessionPolicy(t *testing.T) {
	agent := sharedAgent(t)
	ceiling := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::` + stack.Bucket + `/*"}]}`
	ns := newNamespace(t, "lp-bad", map[string]string{roles.AnnotationSessionPolicy: ceiling})
	role := func(policy string) map[string]string {
		return map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceC), roles.AnnotationAudience: stack.AudienceC,
			roles.AnnotationSessionPolicy: policy}
	}
	for _, c := range []struct{ name, policy, why string }{
		{"not-json", `{"Version":"2012-10-17","Statement":[`, "ServiceAccount iamlet.dev/session-policy"},
		{"beyond-ceiling", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:PutObject","Resource":"*"}]}`, "not within the namespace's"},
		{"too-big", bigSessionPolicy(), "over STS's 2048"},
	} {
		sa := newServiceAccount(t, ns, c.name, role(c.policy))
		p := suite.NewPod(t, c.name, stack.PodOptions{Namespace: ns, ServiceAccount: sa})
		r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
		if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || ans[0].Status != "403" {
			t.Errorf("%s: want 403, got:\n%s", c.name, r.Output())
		}
		stack.AssertNoNodeSecrets(t, c.name, r.Output())
		var found bool
		for _, ps := range agentStatus(t).Pods {
			if ps.Namespace == ns && ps.Pod == c.name {
				found = true
				if ps.State != "bad_session_policy" || !strings.Contains(ps.Detail, c.why) {
					t.Errorf("%s: iamlet status says %s (%s), want bad_session_policy naming %q", c.name, ps.State, ps.Detail, c.why)
				}
			}
		}
		if !found {
			t.Errorf("%s: not in iamlet status", c.name)
		}
		waitLogLine(t, agent.Log, func(l map[string]any) bool {
			return l["msg"] == "refused" && l["pod"] == c.name && l["reason"] == "bad_session_policy" &&
				strings.Contains(fmt.Sprint(l["error"]), c.why)
		}, c.name+"'s refusal in the agent's log")
	}
	// Within the ceiling: served, and narrowed by the namespace's Deny-free ceiling-checked policy.
	ok := newServiceAccount(t, ns, "within", role(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::`+stack.Bucket+`/seed"}]}`))
	p := suite.NewPod(t, "within", stack.PodOptions{Namespace: ns, ServiceAccount: ok})
	waitCached(t, p)
	s3ops(t, p, []string{"get:" + stack.Bucket + "/seed"}, nil)
	s3ops(t, p, []string{"put:" + stack.Bucket + "/seed2", "get:" + stack.OtherBucket + "/seed"}, []string{"AccessDenied"})
}

func bigSessionPolicy() string {
	var res []string
	for i := range 60 {
		res = append(res, fmt.Sprintf(`"arn:aws:s3:::%s/prefix-%02d/*"`, stack.Bucket, i))
	}
	return `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":[` + strings.Join(res, ",") + `]}]}`
}

// waitLogLine waits until a JSON line of the log file at path satisfies match.
func waitLogLine(t *testing.T, path string, match func(map[string]any) bool, what string) {
	t.Helper()
	waitUntil(t, machineDeadline, what, func() bool {
		for _, line := range strings.Split(logText(t, path), "\n") {
			var l map[string]any
			if json.Unmarshal([]byte(line), &l) == nil && match(l) {
				return true
			}
		}
		return false
	})
}

// checkPolicy runs `iamlet policy check` of doc for the workload on the CloudTrail directory, and returns what it
// says the policy would deny ("ACTION RESOURCE", sorted) and its exit code.
func checkPolicy(t *testing.T, doc, workload, trail, issuance string) ([]string, int) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "session-policy.json")
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(suite.agentBin, "policy", "check", "--session-policy", file, "--service-account", workload,
		"--cloudtrail", trail, "--issuance", issuance, "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code != 1 {
		t.Fatalf("iamlet policy check: %v\n%s%s", err, out, stderr.String())
	}
	var report struct {
		WouldDeny []struct {
			Action   string `json:"action"`
			Resource string `json:"resource"`
		} `json:"would_deny"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("iamlet policy check -o json: %v\n%s", err, out)
	}
	var denied []string
	for _, f := range report.WouldDeny {
		denied = append(denied, f.Action+" "+f.Resource)
	}
	slices.Sort(denied)
	return denied, code
}

// grants lists what a policy document allows, a line "ACTION RESOURCE" per pair, sorted.
func grants(t *testing.T, doc string) []string {
	t.Helper()
	d, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("learned policy: %v\n%s", err, doc)
	}
	var out []string
	for _, s := range d.Statement {
		if s.Effect != policy.EffectAllow || len(s.Condition) > 0 {
			t.Fatalf("learned policy has a statement other than a plain Allow: %s", doc)
		}
		for _, a := range s.Action {
			for _, r := range s.Resource {
				out = append(out, a+" "+r)
			}
		}
	}
	slices.Sort(out)
	return out
}

// learnPolicies runs `iamlet policy` on the CloudTrail directory and the agent's log, and returns each
// ServiceAccount's learned policy (compact JSON) by NAMESPACE/NAME. No call may be left unattributed.
func learnPolicies(t *testing.T, trail, issuance string) map[string]string {
	t.Helper()
	cmd := exec.Command(suite.agentBin, "policy", "--cloudtrail", trail, "--issuance", issuance, "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("iamlet policy: %v\n%s%s", err, out, stderr.String())
	}
	var report struct {
		Workloads []struct {
			Namespace      string          `json:"namespace"`
			ServiceAccount string          `json:"service_account"`
			Policy         json.RawMessage `json:"policy"`
		} `json:"workloads"`
		Unattributed struct {
			Events int `json:"events"`
		} `json:"unattributed"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("iamlet policy -o json: %v\n%s", err, out)
	}
	if report.Unattributed.Events != 0 {
		t.Errorf("iamlet policy left %d calls unattributed:\n%s", report.Unattributed.Events, out)
	}
	policies := map[string]string{}
	for _, w := range report.Workloads {
		policies[w.Namespace+"/"+w.ServiceAccount] = string(w.Policy)
		t.Logf("learned for %s/%s: %s", w.Namespace, w.ServiceAccount, w.Policy)
	}
	return policies
}
