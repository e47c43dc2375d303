package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iamlet/iamlet/policy/trail"
)

// The evidence of policy/trail's golden tests: two workloads sharing one role, calling S3 as the end-to-end test does.
const testdata = "../../policy/trail/testdata/s3"

var evidence = []string{"--cloudtrail", testdata + "/cloudtrail", "--issuance", testdata + "/issuance.jsonl", "--issuance", testdata + "/agent.log"}

func runPolicy(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := policyCmd(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyGenerateJSON(t *testing.T) {
	out, _, err := runPolicy(t, append([]string{"generate", "-o", "json", "--service-account", "team-b/writer"}, evidence...)...)
	if err != nil {
		t.Fatal(err)
	}
	var rep trail.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not a report: %v\n%s", err, out)
	}
	if len(rep.Workloads) != 1 || rep.Workloads[0].Workload.String() != "team-b/writer" {
		t.Fatalf("workloads = %+v, want team-b/writer only", rep.Workloads)
	}
	want, err := os.ReadFile("../../policy/trail/testdata/golden/s3-team-b-writer.policy.json")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.MarshalIndent(rep.Workloads[0].Policy, "", "  ")
	if string(got)+"\n" != string(want) {
		t.Errorf("policy =\n%s\nwant the golden\n%s", got, want)
	}
}

func TestPolicyGenerateTable(t *testing.T) {
	role := writeFile(t, "role.json", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["s3:*Object"],"Resource":"arn:aws:s3:::iamlet-e2e-111122223333/*"}}`)
	// No subcommand: generate is the default.
	out, _, err := runPolicy(t, append([]string{"--role-policy", role}, evidence...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"== team-a/reader: 4 calls, role arn:aws:iam::111122223333:role/iamlet-e2e",
		"== team-b/writer: 8 calls",
		"denied by IAM (left out of the policy):",
		"used but not granted by those documents",
		"not attributed (no issuance record names their key or session):",
		"arn:aws:sts::111122223333:assumed-role/node-role/i-0123456789abcdef0",
		"not observable in CloudTrail:",
		`"Action": "s3:ListBucket"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table output lacks %q:\n%s", want, out)
		}
	}
}

func TestPolicyCheck(t *testing.T) {
	readerOnly := writeFile(t, "session.json", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],
		"Resource":["arn:aws:s3:::iamlet-e2e-111122223333","arn:aws:s3:::iamlet-e2e-111122223333/team-a/*"]}]}`)

	out, _, err := runPolicy(t, append([]string{"check", "--session-policy", readerOnly, "--service-account", "team-a/reader"}, evidence...)...)
	if err != nil {
		t.Errorf("check of the reader = %v, want nil (exit 0)\n%s", err, out)
	}
	if !strings.Contains(out, "the session policy allows every observed access") {
		t.Errorf("check output:\n%s", out)
	}

	out, _, err = runPolicy(t, append([]string{"check", "-o", "json", "--session-policy", readerOnly, "--service-account", "team-b/writer"}, evidence...)...)
	var usage *usageError
	if err == nil || errors.As(err, &usage) {
		t.Fatalf("check of the writer = %v, want a failure (exit 1)", err)
	}
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("output is not a check report: %v\n%s", err, out)
	}
	if len(rep.WouldDeny) != 3 {
		t.Errorf("would_deny = %+v, want the writer's 3 accesses outside team-a/", rep.WouldDeny)
	}

	_, _, err = runPolicy(t, append([]string{"check", "--session-policy", readerOnly, "--service-account", "team-c/nobody"}, evidence...)...)
	if err == nil || !strings.Contains(err.Error(), "no call of team-c/nobody") {
		t.Errorf("check of a workload with no calls = %v, want an error saying so", err)
	}
}

func TestPolicyUsageErrors(t *testing.T) {
	bad := writeFile(t, "bad.json", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}`)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown subcommand", []string{"apply"}, "want generate or check"},
		{"no cloudtrail", []string{"--issuance", "x"}, "--cloudtrail is required"},
		{"no issuance", []string{"--cloudtrail", "x"}, "--issuance is required"},
		{"bad format", append([]string{"-o", "yaml"}, evidence...), `-o "yaml"`},
		{"bad service account", append([]string{"--service-account", "writer"}, evidence...), "want NAMESPACE/NAME"},
		{"check without service account", append([]string{"check", "--session-policy", bad}, evidence...), "--service-account NAMESPACE/NAME is required"},
		{"check without session policy", append([]string{"check", "--service-account", "a/b"}, evidence...), "--session-policy is required"},
		{"invalid session policy", append([]string{"check", "--service-account", "a/b", "--session-policy", bad}, evidence...), "Principal: not allowed"},
		{"invalid role policy", append([]string{"--role-policy", bad}, evidence...), "--role-policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runPolicy(t, tt.args...)
			var usage *usageError
			if !errors.As(err, &usage) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("policyCmd(%q) = %v, want a usage error containing %q", tt.args, err, tt.want)
			}
		})
	}
}
