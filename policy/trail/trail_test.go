package trail

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iamlet/iamlet/policy"
	"github.com/iamlet/iamlet/policy/issuance"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

func loadMapping(t *testing.T) *Mapping {
	t.Helper()
	m, err := LoadMapping()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\n%s", name, got)
	}
}

func s3Scenario(t *testing.T) (*Mapping, *Analysis) {
	t.Helper()
	m := loadMapping(t)
	events, err := ReadCloudTrail("testdata/s3/cloudtrail")
	if err != nil {
		t.Fatal(err)
	}
	records, err := issuance.ReadFiles("testdata/s3/issuance.jsonl", "testdata/s3/agent.log")
	if err != nil {
		t.Fatal(err)
	}
	return m, Analyze(m, events, records)
}

// TestReadCloudTrailReadsEachFileOnce: a file named twice, or found both in a directory given and by its own name
// (spelled differently, relative or absolute), is read once, so its calls are not counted twice.
func TestReadCloudTrailReadsEachFileOnce(t *testing.T) {
	const dir = "testdata/s3/cloudtrail"
	once, err := ReadCloudTrail(dir)
	if err != nil {
		t.Fatal(err)
	}
	var file string
	if err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && file == "" {
			file = path
		}
		return err
	}); err != nil || file == "" {
		t.Fatalf("no file under %s: %v", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	events, err := ReadCloudTrail(dir, dir+"/", abs, "./"+file, file, dir+"/AWSLogs/../"+strings.TrimPrefix(file, dir+"/"))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != len(once) {
		t.Errorf("ReadCloudTrail read %d events through repeated paths, %d through the directory alone", len(events), len(once))
	}
}

// TestS3Golden: the S3 calls the end-to-end test makes, by two workloads that share one role, each attributed by a
// different route (its access key in the issuance file, in the agent's log, learned from the STS event, and by
// session name alone), give exactly the golden policies.
func TestS3Golden(t *testing.T) {
	m, a := s3Scenario(t)
	for _, w := range a.Workloads {
		b, err := json.MarshalIndent(w.Policy(), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "s3-"+w.Workload.Namespace+"-"+w.Workload.ServiceAccount+".policy.json", append(b, '\n'))
	}
	rep, err := json.MarshalIndent(a.Report(m, nil, nil), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "s3-report.json", append(rep, '\n'))

	if len(a.Workloads) != 2 {
		t.Fatalf("Analyze found %d workloads, want 2", len(a.Workloads))
	}
	if a.Issuance != 1 || a.Unattributed.Events != 1 {
		t.Errorf("Analyze: issuance %d, unattributed %d; want 1 and 1", a.Issuance, a.Unattributed.Events)
	}
	writer := a.Workload(Workload{"team-b", "writer"})
	if writer == nil || writer.Calls != 8 || len(writer.Denied) != 1 {
		t.Fatalf("team-b/writer = %+v, want 8 calls, 1 denied", writer)
	}
}

func TestS3RolePolicyDiff(t *testing.T) {
	m, a := s3Scenario(t)
	role, err := policy.Parse([]byte(`{"Version":"2012-10-17","Statement":[
		{"Sid":"Objects","Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject"],"Resource":"arn:aws:s3:::iamlet-e2e-111122223333/*"},
		{"Sid":"Tagging","Effect":"Allow","Action":"s3:PutObjectTagging","Resource":"*"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := json.MarshalIndent(a.Report(m, func(w Workload) bool { return w.Namespace == "team-b" }, []*policy.Document{role}), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "s3-writer-diff.json", append(rep, '\n'))

	d := a.Workload(Workload{"team-b", "writer"}).Diff([]*policy.Document{role})
	var unused []string
	for _, g := range d.GrantedUnused {
		unused = append(unused, g.Action)
	}
	if got := strings.Join(unused, ","); got != "s3:DeleteObject,s3:PutObjectTagging" {
		t.Errorf("GrantedUnused = %s, want s3:DeleteObject,s3:PutObjectTagging", got)
	}
	if len(d.UsedNotGranted) != 1 || d.UsedNotGranted[0].Action != "s3:ListBucket" {
		t.Errorf("UsedNotGranted = %+v, want s3:ListBucket on the bucket", d.UsedNotGranted)
	}
}

func TestCheck(t *testing.T) {
	_, a := s3Scenario(t)
	session, err := policy.Parse([]byte(`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::iamlet-e2e-111122223333","arn:aws:s3:::iamlet-e2e-111122223333/team-a/*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Workload(Workload{"team-a", "reader"}).Check(session); len(got) != 0 {
		t.Errorf("Check(reader) = %+v, want nothing denied", got)
	}
	got := a.Workload(Workload{"team-b", "writer"}).Check(session)
	var denied []string
	for _, f := range got {
		denied = append(denied, f.Action+" "+f.Resource+" "+f.Decision.String())
	}
	want := "s3:GetObject arn:aws:s3:::iamlet-e2e-111122223333/team-b/out.txt implicit deny\n" +
		"s3:PutObject arn:aws:s3:::iamlet-e2e-111122223333/team-b/big.bin implicit deny\n" +
		"s3:PutObject arn:aws:s3:::iamlet-e2e-111122223333/team-b/out.txt implicit deny"
	if strings.Join(denied, "\n") != want {
		t.Errorf("Check(writer) =\n%s\nwant\n%s", strings.Join(denied, "\n"), want)
	}
}

// TestAWSDocsWebIdentityEvent reads the AssumeRoleWithWebIdentity example of the IAM User Guide,
// https://docs.aws.amazon.com/IAM/latest/UserGuide/cloudtrail-integration.html#stscloudtrailexample_web-identity,
// kept verbatim in testdata/awsdocs. As published it is not JSON; the reader says so, and after the two repairs
// below it learns the session's access key from the response, which attributes the session's later calls.
func TestAWSDocsWebIdentityEvent(t *testing.T) {
	raw, err := os.ReadFile("testdata/awsdocs/iam-assumerolewithwebidentity.txt")
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(record string) string { return `{"Records":[` + record + `]}` }
	if _, err := DecodeCloudTrail(strings.NewReader(wrap(string(raw)))); err == nil {
		t.Fatal("DecodeCloudTrail accepted the documented example, which is not valid JSON")
	}
	fixed := strings.Replace(string(raw), `"roleSessionName": "MyAssignedRoleSessionName"`, `"roleSessionName": "MyAssignedRoleSessionName",`, 1)
	fixed = strings.Replace(fixed, "\"Project\"\n        ],\n  },", "\"Project\"\n        ]\n  },", 1)
	events, err := DecodeCloudTrail(strings.NewReader(wrap(fixed)))
	if err != nil {
		t.Fatalf("the repaired example: %v", err)
	}
	key, role, session, ok := minted(&events[0])
	if !ok || key != "ASIACQRSTUVWRAOEXAMPLE" || role != "FederatedWebIdentityRole" || session != "MyAssignedRoleSessionName" {
		t.Fatalf("minted() = %q, %q, %q, %v; want the documented key, role and session", key, role, session, ok)
	}

	// A later call with that key, known to no issuance record by key, is attributed through what the STS event
	// taught; the STS event itself is issuance, not the workload's.
	call := Event{EventSource: "s3.amazonaws.com", EventName: "ListBuckets", AWSRegion: "us-east-2", RecipientAccountID: "444455556666",
		UserIdentity: UserIdentity{Type: "AssumedRole", AccessKeyID: "ASIACQRSTUVWRAOEXAMPLE"}}
	records := []issuance.Record{{AccessKeyID: "ASIAOTHER", RoleARN: "arn:aws:iam::444455556666:role/FederatedWebIdentityRole",
		SessionName: "MyAssignedRoleSessionName", Namespace: "web", ServiceAccount: "site"}}
	a := Analyze(loadMapping(t), append(events, call), records)
	if a.Issuance != 1 || len(a.Workloads) != 1 || a.Workloads[0].Workload.String() != "web/site" {
		t.Fatalf("Analyze = issuance %d, workloads %+v; want the call attributed to web/site", a.Issuance, a.Workloads)
	}
	if p := a.Workloads[0].Policy(); string(p.Compact()) != `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}` {
		t.Errorf("Policy() = %s", p.Compact())
	}
}

// TestAWSDocsIRSAUserIdentity reads a documented call from an EKS pod with IRSA (the AWS Marketplace Seller
// Guide's RegisterUsage example,
// https://docs.aws.amazon.com/marketplace/latest/userguide/logging-aws-marketplace-api-calls-with-aws-cloudtrail.html,
// verbatim in testdata/awsdocs): attributed by session name to the issuance record naming that session, by
// access key when a record has it, and never when only the role matches.
func TestAWSDocsIRSAUserIdentity(t *testing.T) {
	raw, err := os.ReadFile("testdata/awsdocs/marketplace-irsa-registerusage.json")
	if err != nil {
		t.Fatal(err)
	}
	events, err := DecodeCloudTrail(strings.NewReader(`{"Records":[` + string(raw) + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	m := loadMapping(t)
	rec := func(key, session string) issuance.Record {
		return issuance.Record{AccessKeyID: key, RoleARN: "arn:aws:iam::123456789012:role/Alice", SessionName: session, Namespace: "billing", ServiceAccount: "meter"}
	}
	tests := []struct {
		name    string
		records []issuance.Record
		want    string // workload, or "" for unattributed
	}{
		{"by access key", []issuance.Record{rec("EXAMPLE_KEY_ID", "other-session")}, "billing/meter"},
		{"by session name", []issuance.Record{rec("ASIAOTHER", "botocore-session-1111111111")}, "billing/meter"},
		{"same role, other session", []issuance.Record{rec("ASIAOTHER", "botocore-session-2222222222")}, ""},
		{"session of another role", []issuance.Record{{AccessKeyID: "ASIAOTHER", RoleARN: "arn:aws:iam::123456789012:role/Bob",
			SessionName: "botocore-session-1111111111", Namespace: "billing", ServiceAccount: "meter"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Analyze(m, events, tt.records)
			got := ""
			if len(a.Workloads) == 1 {
				got = a.Workloads[0].Workload.String()
			}
			if got != tt.want {
				t.Errorf("Analyze attributed to %q, want %q (unattributed %d)", got, tt.want, a.Unattributed.Events)
			}
			if got != "" {
				uses := a.Workloads[0].Uses
				if len(uses) != 1 || uses[0].Action != "aws-marketplace:RegisterUsage" || uses[0].Resource != "*" {
					t.Errorf("Uses = %+v, want aws-marketplace:RegisterUsage on *", uses)
				}
			}
		})
	}
}
