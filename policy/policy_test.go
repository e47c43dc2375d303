package policy

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func mustParse(t testing.TB, s string) *Document {
	t.Helper()
	d, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	return d
}

func TestParseCompact(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "object statement, string lists",
			in: `{
				"Version": "2012-10-17",
				"Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}
			}`,
			want: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}]}`,
		},
		{
			name: "one-element arrays become strings, key order fixed",
			in: `{"Statement": [{"Resource": ["*"], "Action": ["sts:GetCallerIdentity"], "Effect": "Allow", "Sid": "Who"}],
				"Id": "p1", "Version": "2008-10-17"}`,
			want: `{"Version":"2008-10-17","Id":"p1","Statement":[{"Sid":"Who","Effect":"Allow","Action":"sts:GetCallerIdentity","Resource":"*"}]}`,
		},
		{
			name: "two statements, NotAction, NotResource, condition sorted and compacted, no HTML escaping",
			in: `{"Version":"2012-10-17","Statement":[
				{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::b/<k>&"},
				{"Effect":"Deny","NotAction":"s3:*","NotResource":["arn:aws:s3:::b","arn:aws:s3:::b/*"],
				 "Condition":{"StringNotEquals":{"aws:RequestedRegion":[ "eu-west-1" ,"eu-west-2" ]},"Bool":{"aws:SecureTransport":false}}}]}`,
			want: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::b/<k>&"},` +
				`{"Effect":"Deny","NotAction":"s3:*","NotResource":["arn:aws:s3:::b","arn:aws:s3:::b/*"],` +
				`"Condition":{"Bool":{"aws:SecureTransport":false},"StringNotEquals":{"aws:RequestedRegion":["eu-west-1","eu-west-2"]}}}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := mustParse(t, tt.in)
			if got := string(d.Compact()); got != tt.want {
				t.Errorf("Compact() =\n%s\nwant\n%s", got, tt.want)
			}
			again := mustParse(t, string(d.Compact()))
			if again.Hash() != d.Hash() {
				t.Errorf("Hash() changed across Parse(Compact()): %s != %s", again.Hash(), d.Hash())
			}
		})
	}
}

func TestHash(t *testing.T) {
	a := mustParse(t, `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}`)
	b := mustParse(t, "{ \"Version\" : \"2012-10-17\",\n \"Statement\" : [ {\"Effect\":\"Allow\",\"Action\":[\"s3:GetObject\"],\"Resource\":[\"*\"]} ] }")
	c := mustParse(t, `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"s3:PutObject","Resource":"*"}}`)
	if a.Hash() != b.Hash() {
		t.Errorf("Hash() differs for the same policy written two ways: %s, %s", a.Hash(), b.Hash())
	}
	if a.Hash() == c.Hash() {
		t.Errorf("Hash() equal for different policies")
	}
	// The SHA-256 of the compact text, so an operator can reproduce it with sha256sum.
	const want = "dfd3e01fa93b1a5dd5b5144c96d987c080ba5f7739947b3435cc2673643d569f"
	if got := a.Hash(); got != want {
		t.Errorf("Hash() = %q, want %q", got, want)
	}
	if got := HashOf(a.Compact()); got != want {
		t.Errorf("HashOf(Compact()) = %q, want %q", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	const v = `"Version":"2012-10-17",`
	tests := []struct {
		name, in, want string // want: a substring of the error
	}{
		{"not JSON", `{`, "EOF"},
		{"not an object", `[]`, "want a JSON object"},
		{"trailing data", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}} {}`, "data after"},
		{"no version", `{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, "Version is required"},
		{"bad version", `{"Version":"2012-10-18","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, `Version "2012-10-18"`},
		{"lower-case key", `{"version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, `unknown key "version"`},
		{"repeated key", `{` + v + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, `"Version" appears twice`},
		{"no statement", `{` + v[:len(v)-1] + `}`, "Statement is required"},
		{"empty statements", `{` + v + `"Statement":[]}`, "no statements"},
		{"statement not object", `{` + v + `"Statement":"x"}`, "want an object or an array"},
		{"no effect", `{` + v + `"Statement":{"Action":"*","Resource":"*"}}`, "Statement[0]: Effect is required"},
		{"bad effect", `{` + v + `"Statement":{"Effect":"allow","Action":"*","Resource":"*"}}`, `Statement[0]: Effect: want "Allow" or "Deny"`},
		{"action and notaction", `{` + v + `"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Sid":"Two","Effect":"Allow","Action":"*","NotAction":"s3:*","Resource":"*"}]}`,
			`Statement[1] (Sid "Two"): exactly one of Action and NotAction`},
		{"no action", `{` + v + `"Statement":{"Effect":"Allow","Resource":"*"}}`, "exactly one of Action and NotAction"},
		{"no resource", `{` + v + `"Statement":{"Effect":"Allow","Action":"*"}}`, "exactly one of Resource and NotResource"},
		{"resource and notresource", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","NotResource":"*"}}`, "exactly one of Resource and NotResource"},
		{"principal", `{` + v + `"Statement":{"Sid":"P","Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}`, `Statement[0] (Sid "P"): Principal: not allowed`},
		{"notprincipal", `{` + v + `"Statement":{"Effect":"Allow","NotPrincipal":{"AWS":"x"},"Action":"*","Resource":"*"}}`, `NotPrincipal: not allowed`},
		{"unknown statement key", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Actions":"x"}}`, `Statement[0]: Actions: unknown key`},
		{"empty action list", `{` + v + `"Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}`, "Action: empty array"},
		{"action number", `{` + v + `"Statement":{"Effect":"Allow","Action":3,"Resource":"*"}}`, "Action: want a string or an array of strings"},
		{"action mixed array", `{` + v + `"Statement":{"Effect":"Allow","Action":["s3:GetObject",1],"Resource":"*"}}`, "Action: want a string or an array"},
		{"action without service", `{` + v + `"Statement":{"Effect":"Allow","Action":"GetObject","Resource":"*"}}`, `Action: "GetObject": want service:action`},
		{"action wildcard service", `{` + v + `"Statement":{"Effect":"Allow","Action":"s*:GetObject","Resource":"*"}}`, `want service:action`},
		{"resource not an ARN", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"my-bucket"}}`, `Resource: "my-bucket": want an ARN or *`},
		{"condition not object", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":[]}}`, "Condition: want a JSON object"},
		{"condition empty", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{}}}`, "Condition: empty"},
		{"condition operator empty", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{}}}}`, "at least one condition key"},
		{"condition value object", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"k":{}}}}}`, `StringEquals: "k": want a condition key`},
		{"condition value null", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Null":{"k":null}}}}`, `want a condition key`},
		{"condition empty array", `{` + v + `"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"k":[]}}}}`, `want a condition key`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%s) = %v, want an error containing %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	doc := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:Get*","s3:ListBucket"],"Resource":["arn:aws:s3:::data","arn:aws:s3:::data/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data/out/??.csv"},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/secret/*"},
		{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:ViaService":"s3.eu-west-1.amazonaws.com"}}},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/eu/*","Condition":{"StringNotEquals":{"aws:RequestedRegion":"eu-west-1"}}},
		{"Effect":"Allow","Action":"dynamodb:GetItem","Resource":"arn:aws:dynamodb:eu-west-1:111122223333:table/${aws:PrincipalTag/team}"},
		{"Effect":"Allow","NotAction":["iam:*","sts:*"],"Resource":"arn:aws:sqs:*:111122223333:jobs"},
		{"Effect":"Allow","Action":"sns:Publish","NotResource":"arn:aws:sns:*:*:private-*"},
		{"Effect":"Allow","Action":"logs:PutLogEvents","Resource":"arn:aws:logs:*:*:log-group:a${*}b:*"}
	]}`)
	tests := []struct {
		action, resource string
		want             Decision
	}{
		{"s3:GetObject", "arn:aws:s3:::data/x.txt", Allow},
		{"S3:getobject", "arn:aws:s3:::data/x.txt", Allow},        // actions are case-insensitive
		{"s3:GetObject", "arn:aws:s3:::DATA/x.txt", ImplicitDeny}, // resources are not
		{"s3:GetObjectTagging", "arn:aws:s3:::data/x.txt", Allow},
		{"s3:ListBucket", "arn:aws:s3:::data", Allow},
		{"s3:ListBucket", "arn:aws:s3:::data2", ImplicitDeny},
		{"s3:PutObject", "arn:aws:s3:::data/x.txt", ImplicitDeny},
		{"s3:PutObject", "arn:aws:s3:::data/out/ab.csv", Allow},
		{"s3:PutObject", "arn:aws:s3:::data/out/abc.csv", ImplicitDeny},
		{"s3:GetObject", "arn:aws:s3:::data/secret/k", ExplicitDeny},
		{"s3:GetObjectAcl", "arn:aws:s3:::data/secret/k", Allow},
		{"kms:Decrypt", "arn:aws:kms:eu-west-1:111122223333:key/1", AllowIfConditions},
		{"s3:GetObject", "arn:aws:s3:::data/eu/k", DenyIfConditions},
		{"dynamodb:GetItem", "arn:aws:dynamodb:eu-west-1:111122223333:table/orders", AllowIfConditions},
		{"dynamodb:GetItem", "arn:aws:dynamodb:us-east-1:111122223333:table/orders", ImplicitDeny},
		{"sqs:SendMessage", "arn:aws:sqs:eu-west-1:111122223333:jobs", Allow},
		{"iam:PassRole", "arn:aws:sqs:eu-west-1:111122223333:jobs", ImplicitDeny},
		{"sns:Publish", "arn:aws:sns:eu-west-1:111122223333:public", Allow},
		{"sns:Publish", "arn:aws:sns:eu-west-1:111122223333:private-x", ImplicitDeny},
		{"logs:PutLogEvents", "arn:aws:logs:eu-west-1:1:log-group:a*b:log-stream:s", Allow},
		{"logs:PutLogEvents", "arn:aws:logs:eu-west-1:1:log-group:axb:log-stream:s", ImplicitDeny},
	}
	for _, tt := range tests {
		if got := doc.Evaluate(tt.action, tt.resource); got != tt.want {
			t.Errorf("Evaluate(%q, %q) = %v, want %v", tt.action, tt.resource, got, tt.want)
		}
	}
}

func TestEvaluateAll(t *testing.T) {
	doc := func(effect, cond string) *Document {
		return mustParse(t, `{"Version":"2012-10-17","Statement":{"Effect":"`+effect+`","Action":"s3:GetObject","Resource":"*"`+cond+`}}`)
	}
	const ifTLS = `,"Condition":{"Bool":{"aws:SecureTransport":"true"}}`
	allow, maybeAllow, deny, maybeDeny := doc("Allow", ""), doc("Allow", ifTLS), doc("Deny", ""), doc("Deny", ifTLS)
	both := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"*"`+ifTLS+`}]}`)
	for _, tt := range []struct {
		name string
		docs []*Document
		want Decision
	}{
		{"none", nil, ImplicitDeny},
		{"allow", []*Document{allow}, Allow},
		{"maybe allow", []*Document{maybeAllow}, AllowIfConditions},
		{"maybe allow and allow", []*Document{maybeAllow, allow}, Allow},
		{"deny wins", []*Document{allow, deny, maybeAllow}, ExplicitDeny},
		{"conditional deny alone denies implicitly", []*Document{maybeDeny}, ImplicitDeny},
		{"allow with conditional deny", []*Document{both, maybeAllow}, DenyIfConditions},
	} {
		if got := EvaluateAll(tt.docs, "s3:GetObject", "arn:aws:s3:::b/k"); got != tt.want {
			t.Errorf("%s: EvaluateAll() = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestEvaluateVersion2008ReadsVariablesLiterally(t *testing.T) {
	doc := mustParse(t, `{"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/${aws:username}"}}`)
	for res, want := range map[string]Decision{
		"arn:aws:s3:::b/${aws:username}": Allow,
		"arn:aws:s3:::b/alice":           ImplicitDeny,
	} {
		if got := doc.Evaluate("s3:GetObject", res); got != want {
			t.Errorf("Evaluate(s3:GetObject, %q) = %v, want %v", res, got, want)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"", "a", false},
		{"a*b", "ab", true},
		{"a*b", "axxb", true},
		{"a*b", "axxbc", false},
		{"a*b*c", "abbbc", true},
		{"?", "é", true}, // one character, not one byte
		{"??", "é", false},
		{"a?c", "abc", true},
		{"*a", "bbbba", true},
		{"*a*", "bbbb", false},
	}
	for _, tt := range tests {
		if got := compile(tt.pattern, false, false).match(tt.s); got != tt.want {
			t.Errorf("match(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func TestContains(t *testing.T) {
	tests := []struct {
		ceiling, inner string
		want           bool
	}{
		{"*", "*", true},
		{"*", "a?b*", true},
		{"a*", "ab*", true},
		{"a*", "*", false},
		{"ab*", "a*", false},
		{"a*c", "a*b*c", true},
		{"a*c", "a*b*", false},
		{"a?c", "abc", true},
		{"a?c", "a?c", true},
		{"abc", "a?c", false},
		{"a?c", "a*c", false},
		{"a*", "a${aws:username}", true},
		{"a${aws:username}", "a${aws:username}", true},
		{"a${aws:username}", "alice", false},
		{"a${aws:username}", "a${aws:userid}", false},
		{"a?", "a${aws:username}", false}, // a variable may be longer than one character
	}
	for _, tt := range tests {
		if got := compile(tt.ceiling, false, true).contains(compile(tt.inner, false, true)); got != tt.want {
			t.Errorf("contains(%q, %q) = %v, want %v", tt.ceiling, tt.inner, got, tt.want)
		}
	}
}

func TestCovers(t *testing.T) {
	ceiling := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:Get*","s3:ListBucket"],"Resource":["arn:aws:s3:::data","arn:aws:s3:::data/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data/out/*"},
		{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":true}}},
		{"Effect":"Allow","NotAction":"iam:*","Resource":"arn:aws:sqs:*:*:jobs"},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/secret/*"}
	]}`)
	const v = `{"Version":"2012-10-17","Statement":`
	tests := []struct {
		name, inner string
		want        string // "" for covered, else a substring of the error
	}{
		{"exact", v + `{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/a"}}`, ""},
		{"narrower wildcard", v + `{"Effect":"Allow","Action":["s3:GetObject*","s3:listbucket"],"Resource":["arn:aws:s3:::data/in/*","arn:aws:s3:::data"]}}`, ""},
		{"condition on inner only narrows", v + `{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data/out/x","Condition":{"Bool":{"aws:SecureTransport":true}}}}`, ""},
		{"inner deny ignored", v + `[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"},{"Effect":"Deny","Action":"*","Resource":"*"}]}`, ""},
		{"only denies", v + `{"Effect":"Deny","Action":"*","Resource":"*"}}`, ""},
		{"broader action", v + `{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::data/a"}}`, `action "s3:*" on resource "arn:aws:s3:::data/a"`},
		{"action not granted", v + `{"Sid":"W","Effect":"Allow","Action":["s3:GetObject","s3:DeleteObject"],"Resource":"arn:aws:s3:::data/a"}}`, `Statement[0] (Sid "W"): action "s3:DeleteObject"`},
		{"resource outside", v + `{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data/in/x"}}`, `"arn:aws:s3:::data/in/x"`},
		{"pairs from different ceiling statements", v + `{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::data/out/x"}}`, ""},
		{"action of one ceiling statement, resource of another", v + `{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data"}}`, `action "s3:PutObject" on resource "arn:aws:s3:::data"`},
		{"ceiling conditional cannot cover", v + `{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*"}}`, `action "kms:Decrypt"`},
		{"ceiling NotAction cannot cover", v + `{"Effect":"Allow","Action":"sqs:SendMessage","Resource":"arn:aws:sqs:eu-west-1:1:jobs"}}`, `action "sqs:SendMessage"`},
		{"inner NotAction refused", v + `{"Effect":"Allow","NotAction":"s3:*","Resource":"arn:aws:s3:::data/a"}}`, "NotAction or NotResource"},
		{"inner NotResource refused", v + `{"Effect":"Allow","Action":"s3:GetObject","NotResource":"arn:aws:s3:::x"}}`, "NotAction or NotResource"},
		{"inner ? against ceiling literal", v + `{"Effect":"Allow","Action":"s3:GetObjec?","Resource":"arn:aws:s3:::data/a"}}`, ""}, // s3:Get* absorbs it
		{"inner variable within ceiling *", v + `{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/${aws:username}/*"}}`, ""},
		{"inner variable outside", v + `{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::data/${aws:username}"}}`, `action "s3:PutObject"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Covers(ceiling, mustParse(t, tt.inner))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Covers() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Covers() = %v, want an error containing %q", err, tt.want)
			}
			var nc *NotCoveredError
			if err != nil && !errors.As(err, &nc) {
				t.Errorf("Covers() error is %T, want *NotCoveredError", err)
			}
		})
	}
}

// TestCoversIsSound checks Covers against Evaluate: whatever a covered inner document allows, the ceiling allows.
func TestCoversIsSound(t *testing.T) {
	ceiling := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:Get*","s3:List?ucket"],"Resource":["arn:aws:s3:::d?ta/*","arn:aws:s3:::data"]},
		{"Effect":"Allow","Action":"s3:*Object","Resource":"arn:aws:s3:::data/out/*"}]}`)
	patterns := []string{"*", "s3:*", "s3:Get*", "s3:GetObject", "s3:G?tObject", "s3:PutObject", "s3:*Object", "s3:ListBucket", "s3:List*"}
	resources := []string{"*", "arn:aws:s3:::data", "arn:aws:s3:::data/*", "arn:aws:s3:::data/out/*", "arn:aws:s3:::d?ta/x", "arn:aws:s3:::data/o*", "arn:aws:s3:::dat?"}
	calls := []string{"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketPolicy", "s3:DeleteObject", "s3:ListBuckets"}
	arns := []string{"arn:aws:s3:::data", "arn:aws:s3:::data/x", "arn:aws:s3:::data/out/x", "arn:aws:s3:::dxta/x", "arn:aws:s3:::datx", "arn:aws:s3:::other/x"}
	for _, a := range patterns {
		for _, r := range resources {
			inner := &Document{Version: Version2012, Statement: []Statement{{Effect: EffectAllow, Action: []string{a}, Resource: []string{r}}}}
			if Covers(ceiling, inner) != nil {
				continue
			}
			for _, call := range calls {
				for _, arn := range arns {
					if inner.Evaluate(call, arn) == Allow && ceiling.Evaluate(call, arn) != Allow {
						t.Errorf("Covers accepted Action %q Resource %q, which allows %s on %s that the ceiling does not", a, r, call, arn)
					}
				}
			}
		}
	}
}

func TestWithDenies(t *testing.T) {
	ceiling := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Sid":"Read","Effect":"Allow","Action":"s3:*","Resource":"*"},
		{"Sid":"Secret","Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/secret/*"},
		{"Sid":"Mine","Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}`)
	inner := mustParse(t, `{"Version":"2012-10-17","Statement":{"Sid":"Mine","Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"}}`)
	got, err := inner.WithDenies(ceiling)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Version":"2012-10-17","Statement":[{"Sid":"Mine","Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/*"},` +
		`{"Sid":"Secret","Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::data/secret/*"},` +
		`{"Effect":"Deny","Action":"s3:DeleteObject","Resource":"*"}]}`
	if string(got.Compact()) != want {
		t.Errorf("WithDenies() =\n%s\nwant\n%s", got.Compact(), want)
	}
	if len(inner.Statement) != 1 {
		t.Errorf("WithDenies changed its receiver: %d statements", len(inner.Statement))
	}
	if d := got.Evaluate("s3:GetObject", "arn:aws:s3:::data/secret/k"); d != ExplicitDeny {
		t.Errorf("Evaluate(secret) = %v, want %v", d, ExplicitDeny)
	}

	old := mustParse(t, `{"Version":"2008-10-17","Statement":{"Effect":"Deny","Action":"s3:*","Resource":"arn:aws:s3:::${x}"}}`)
	if _, err := inner.WithDenies(old); err == nil {
		t.Errorf("WithDenies across versions with a ${ = nil error, want one")
	}
}

func TestDecisionText(t *testing.T) {
	for d := ImplicitDeny; d <= Allow; d++ {
		b, err := d.MarshalText()
		if err != nil || len(b) == 0 || strings.HasPrefix(d.String(), "Decision(") {
			t.Errorf("Decision %d: MarshalText() = %q, %v; String() = %q", int(d), b, err, d.String())
		}
		var back Decision
		if err := back.UnmarshalText(b); err != nil || back != d {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", b, back, err, d)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/*"}]}`,
		`{"Version":"2008-10-17","Id":"x","Statement":[{"Sid":"a","Effect":"Deny","NotAction":["iam:*"],"NotResource":"*",` +
			`"Condition":{"StringEquals":{"aws:PrincipalTag/team":["a","b"]},"NumericLessThan":{"s3:max-keys":10}}}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"arn:aws:s3:::b/${aws:username}/\u003c"}]}`,
		`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}`,
		`{}`, `[]`, `"x"`, `{"Version":"2012-10-17","Statement":[]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err != nil {
			return
		}
		compact := d.Compact()
		again, err := Parse(compact)
		if err != nil {
			t.Fatalf("Parse(Compact()) of %q: %v (compact %s)", data, err, compact)
		}
		if !bytes.Equal(again.Compact(), compact) {
			t.Fatalf("Compact() not stable:\n%s\n%s", compact, again.Compact())
		}
		if len(compact) > len(data)+2 && utf8.Valid(data) && !bytes.ContainsAny(data, "\u2028\u2029\\") {
			// Compact output may only grow where encoding/json escapes differently from the input, or by the brackets
			// of a lone statement written as an object.
			t.Fatalf("Compact() longer than the input: %d > %d\n%s\n%s", len(compact), len(data), data, compact)
		}
		for _, s := range d.Statement {
			for _, a := range append(s.Action, s.NotAction...) {
				for _, r := range append(s.Resource, s.NotResource...) {
					d.Evaluate(a, r) // must not panic
				}
			}
		}
		if err := Covers(d, d); err != nil {
			var nc *NotCoveredError
			if !errors.As(err, &nc) {
				t.Fatalf("Covers(d, d) = %T", err)
			}
		}
	})
}
