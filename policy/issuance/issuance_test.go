package issuance

import (
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	in := strings.Join([]string{
		`{"time":"2026-07-10T09:00:00Z","access_key_id":"ASIAFILE","role_arn":"arn:aws:iam::1:role/r","session_name":"ns.p@1","namespace":"ns","pod":"p","pod_uid":"u","service_account":"sa","expiration":"2026-07-10T10:00:00Z"}`,
		``,
		`[pod/iamlet-x/iamlet] {"time":"2026-07-10T09:00:00.5Z","level":"INFO","msg":"credentials issued","namespace":"ns","pod":"p","pod_uid":"u","service_account":"sa","role_arn":"arn:aws:iam::1:role/r","chained_role_arn":"arn:aws:iam::2:role/c","session_name":"ns.p@1","access_key_id":"ASIALOG","session_policy_arns":["arn:aws:iam::1:policy/x"],"expiration":"2026-07-10T10:00:00Z"}`,
		`{"time":"2026-07-10T09:00:01Z","level":"ERROR","msg":"issuance record not written","access_key_id":"ASIANOT"}`,
		`time=2026-07-10T09:00:01Z level=INFO msg="text log line"`,
	}, "\n")
	got, err := Decode(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].AccessKeyID != "ASIAFILE" || got[1].AccessKeyID != "ASIALOG" {
		t.Fatalf("Decode() = %+v, want the file record and the credentials issued line", got)
	}
	if got[1].ServedRole() != "arn:aws:iam::2:role/c" || got[0].ServedRole() != "arn:aws:iam::1:role/r" {
		t.Errorf("ServedRole() = %q, %q", got[0].ServedRole(), got[1].ServedRole())
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"time":"2026-07-10T09:00:00Z","access_key_id":"A"`, "line 1"},
		{"\n" + `{"time":"2026-07-10T09:00:00Z","access_key_id":"A","role_arn":"r","session_name":"s"}`, "line 2: record without namespace, service_account"},
		{`{"access_key_id":"A","role_arn":"r","session_name":"s","namespace":"n","service_account":"sa"}`, "without time"},
		{`{"msg":"credentials issued","time":"2026-07-10T09:00:00Z"}`, "record without access_key_id"},
	}
	for _, tt := range tests {
		if _, err := Decode(strings.NewReader(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Decode(%q) = %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

// TestDecodeSkipsOverlongLines: an agent log can hold a line longer than any record (a CI run's held a >1 MiB one);
// reading the log's records must not fail on it, whether it ends the log or not, with or without a final newline.
func TestDecodeSkipsOverlongLines(t *testing.T) {
	rec := func(key string) string {
		return `{"time":"2026-07-10T09:00:00Z","msg":"credentials issued","access_key_id":"` + key +
			`","role_arn":"arn:aws:iam::1:role/r","session_name":"ns.p@1","namespace":"ns","pod":"p","service_account":"sa"}`
	}
	long := `{"time":"2026-07-10T09:00:00Z","level":"DEBUG","msg":"` + strings.Repeat("x", maxLine+1) + `"}`
	for name, in := range map[string]string{
		"between records":     rec("ASIAONE") + "\n" + long + "\n" + rec("ASIATWO") + "\n",
		"last, no newline":    rec("ASIAONE") + "\n" + rec("ASIATWO") + "\n" + long,
		"first, crlf endings": long + "\r\n" + rec("ASIAONE") + "\r\n" + rec("ASIATWO"),
	} {
		got, err := Decode(strings.NewReader(in))
		if err != nil {
			t.Errorf("%s: Decode() error = %v", name, err)
			continue
		}
		if len(got) != 2 || got[0].AccessKeyID != "ASIAONE" || got[1].AccessKeyID != "ASIATWO" {
			t.Errorf("%s: Decode() = %+v, want the two records", name, got)
		}
	}
	// Line numbers still count the skipped line.
	_, err := Decode(strings.NewReader(long + "\n" + `{"broken"`))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("Decode(long, broken) error = %v, want one naming line 2", err)
	}
}
