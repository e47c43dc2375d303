package roles

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	readBucket = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::team/*","arn:aws:s3:::team"]}]}`
	readTeamA  = `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::team/a/*"}}`
	writeTeam  = `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::team/*"}}`
	nsCeiling  = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::team/*"},
		{"Sid":"NoDelete","Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}`
	managedA = "arn:aws:iam::111122223333:policy/team-a"
	managedB = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
)

func TestNarrowing(t *testing.T) {
	tests := []struct {
		name       string
		in         narrowingInput
		wantPolicy string // compact JSON sent; "" none
		wantARNs   []string
		wantErr    string // substring; "" success
	}{
		{name: "none", in: narrowingInput{}},
		{name: "service account inline, compacted", in: narrowingInput{saPolicy: "  " + readTeamA + "\n"},
			wantPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::team/a/*"}]}`},
		{name: "service account managed", in: narrowingInput{saARNs: managedA + ",\n" + managedB + "," + managedA},
			wantARNs: []string{managedA, managedB}},
		{name: "namespace is the default", in: narrowingInput{nsPolicy: readBucket, nsARNs: managedB},
			wantPolicy: string(mustCompact(t, readBucket)), wantARNs: []string{managedB}},
		{name: "within the namespace's, with its denies added", in: narrowingInput{saPolicy: readTeamA, nsPolicy: nsCeiling},
			wantPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::team/a/*"},{"Sid":"NoDelete","Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}`},
		{name: "beyond the namespace's", in: narrowingInput{saPolicy: writeTeam, nsPolicy: readBucket}, wantErr: "not within the namespace's"},
		{name: "managed beyond the namespace's list", in: narrowingInput{saARNs: managedA, nsARNs: managedB}, wantErr: "does not list"},
		{name: "managed within the namespace's list", in: narrowingInput{saARNs: managedB, nsARNs: managedA + "," + managedB}, wantARNs: []string{managedB}},
		{name: "inline against a managed-only ceiling", in: narrowingInput{saPolicy: readTeamA, nsARNs: managedB}, wantErr: "names only managed policies"},
		{name: "not JSON", in: narrowingInput{saPolicy: `{"Version":`}, wantErr: "ServiceAccount iamlet.dev/session-policy"},
		{name: "namespace's not a policy", in: narrowingInput{nsPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}`},
			wantErr: "Namespace iamlet.dev/session-policy"},
		{name: "principal in a session policy", in: narrowingInput{saPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}]}`},
			wantErr: "iamlet.dev/session-policy"},
		{name: "over STS's size", in: narrowingInput{saPolicy: bigPolicy(2100)}, wantErr: "over STS's 2048"},
		{name: "bad managed ARN", in: narrowingInput{saARNs: "arn:aws:iam::111122223333:role/not-a-policy"}, wantErr: "not a managed policy ARN"},
		{name: "too many managed", in: narrowingInput{saARNs: manyARNs(11)}, wantErr: "over STS's 10"},
		{name: "chained role", in: narrowingInput{chain: "arn:aws:iam::444455556666:role/reader", externalID: "team-a:prod"}},
		{name: "chained role not a role", in: narrowingInput{chain: "arn:aws:iam::444455556666:user/x"}, wantErr: "iamlet.dev/chain-role-arn"},
		{name: "external ID without a chained role", in: narrowingInput{externalID: "abc"}, wantErr: "without iamlet.dev/chain-role-arn"},
		{name: "bad external ID", in: narrowingInput{chain: "arn:aws:iam::444455556666:role/reader", externalID: "has space"}, wantErr: "chain-external-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := narrowingFor(tt.in)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("narrowingFor = %+v, %v; want ErrInvalidPolicy containing %q", n, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Policy != tt.wantPolicy {
				t.Errorf("policy sent = %s\nwant %s", n.Policy, tt.wantPolicy)
			}
			if strings.Join(n.PolicyARNs, ",") != strings.Join(tt.wantARNs, ",") {
				t.Errorf("policy ARNs = %v, want %v", n.PolicyARNs, tt.wantARNs)
			}
			if (n.Key == "") != (tt.in == narrowingInput{}) {
				t.Errorf("Key = %q for %+v", n.Key, tt.in)
			}
			if (n.PolicyHash == "") != (n.Policy == "") {
				t.Errorf("PolicyHash = %q for policy %q", n.PolicyHash, n.Policy)
			}
		})
	}
}

// A changed policy must be a new session at once: its key differs; the same policy, spelled differently, is not.
func TestNarrowingKey(t *testing.T) {
	key := func(in narrowingInput) string {
		t.Helper()
		n, err := narrowingFor(in)
		if err != nil {
			t.Fatal(err)
		}
		return n.Key
	}
	a := key(narrowingInput{saPolicy: readTeamA})
	if b := key(narrowingInput{saPolicy: strings.ReplaceAll(readTeamA, `","`, "\",\n \"")}); b != a {
		t.Errorf("the same policy spelled with spaces has key %s, want %s", b, a)
	}
	for _, other := range []narrowingInput{
		{saPolicy: readBucket},
		{saPolicy: readTeamA, saARNs: managedA},
		{saPolicy: readTeamA, chain: "arn:aws:iam::444455556666:role/reader"},
		{nsPolicy: readTeamA, chain: "arn:aws:iam::444455556666:role/reader", externalID: "x1"},
	} {
		if key(other) == a {
			t.Errorf("%+v has the same key as the first policy", other)
		}
	}
}

func mustCompact(t *testing.T, s string) []byte {
	t.Helper()
	doc, err := parsePolicy(s, "test")
	if err != nil {
		t.Fatal(err)
	}
	return doc.Compact()
}

func bigPolicy(chars int) string {
	var b strings.Builder
	b.WriteString(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":[`)
	for i := 0; b.Len() < chars; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"arn:aws:s3:::bucket/prefix-` + strings.Repeat("x", 20) + `/*"`)
	}
	b.WriteString(`]}]}`)
	return b.String()
}

func manyARNs(n int) string {
	var l []string
	for i := range n {
		l = append(l, fmt.Sprintf("%s-%d", managedA, i))
	}
	return strings.Join(l, ",")
}
