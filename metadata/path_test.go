package metadata

import "testing"

func TestNormalise(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		dir     bool
		wantErr bool
	}{
		{"/latest/meta-data/instance-id", "/latest/meta-data/instance-id", false, false},
		{"/latest/meta-data/", "/latest/meta-data", true, false},
		{"/", "/", false, false},
		{"", "/", false, false},
		{"latest/meta-data", "/latest/meta-data", false, false},
		{"//latest///meta-data//", "/latest/meta-data", true, false},
		{"/latest/./meta-data/.", "/latest/meta-data", true, false},
		{"/latest/meta-data/..", "/latest", true, false},
		{"/../../latest", "/latest", false, false},
		{"/latest/meta-data/%2e%2e/user-data", "/latest/user-data", false, false},
		{"/latest%2Fuser-data", "/latest/user-data", false, false},
		{"/latest/user-data%2f", "/latest/user-data", true, false},
		{"/LATEST/User-Data", "/LATEST/User-Data", false, false}, // case kept; matching folds
		{"/latest/user-data?x=1/../../y", "/latest/user-data", false, false},
		{"/latest/a%3fb", "/latest/a?b", false, false},
		{"/latest/a;b#c", "/latest/a;b#c", false, false},
		{"/latest/%252e", "", false, true},
		{"/latest/%25", "", false, true},
		{"/latest/%", "", false, true},
		{"/latest/%2", "", false, true},
		{"/latest/%g0", "", false, true},
		{"/latest/%00", "", false, true},
		{"/latest/%7f", "", false, true},
		{"/latest/a\tb", "", false, true},
		{"/latest/a\x00", "", false, true},
	}
	for _, tt := range tests {
		got, err := normalise(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("normalise(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (got.p != tt.want || got.dir != tt.dir) {
			t.Errorf("normalise(%q) = %q dir=%v, want %q dir=%v", tt.in, got.p, got.dir, tt.want, tt.dir)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		in   string
		kind routeKind
		name string
	}{
		{"/latest/api/token", routeToken, ""},
		{"/latest/meta-data/iam/security-credentials", routeCredsList, ""},
		{"/latest/meta-data/iam/security-credentials/My-Role", routeCredsDoc, "My-Role"},
		{"/latest/meta-data/iam/security-credentials/a/b", routeNone, ""},
		{"/latest/meta-data/iam/security-credentials-extended/r", routeCredsExtDoc, "r"},
		{"/latest/meta-data/iam/security-credentialsX", routeNone, ""},
		{"/latest/meta-data/iam/info", routeNone, ""},
		{"/LATEST/META-DATA/PLACEMENT/REGION", routeFact, ""},
		{"/latest/meta-data/placement", routeListing, ""},
		{"/latest/user-data", routeNone, ""},
		{"/latest/meta-data/instance-id\u212a", routeNone, ""},
	}
	for _, tt := range tests {
		rp, err := normalise(tt.in)
		if err != nil {
			t.Fatalf("normalise(%q): %v", tt.in, err)
		}
		if got := match(rp); got.kind != tt.kind || got.name != tt.name {
			t.Errorf("match(%q) = kind %d name %q, want kind %d name %q", tt.in, got.kind, got.name, tt.kind, tt.name)
		}
	}
	if !equalFoldASCII("/latest/meta-data/placement/region", "/LATEST/META-DATA/PLACEMENT/REGION") ||
		equalFoldASCII("k", "\u212a"[:1]) {
		t.Error("equalFoldASCII folds the wrong things")
	}
}
