package metadata

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRefusals aims at user-data and the node's own credentials and identity with every spelling we could think of,
// over a real connection so the request target arrives exactly as written. The node's IMDS behind the handler
// answers every path with leakMarker; no response may carry it, and the node's IMDS must never be asked anything
// off the allow-list.
func TestRefusals(t *testing.T) {
	node := newFakeNodeIMDS(t)
	e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	tok := e.token(t, "127.0.0.1", 3600)

	tests := []struct {
		method string
		target string
		token  string // "" none, "valid", or a literal bad token
		extra  string // extra header lines
		want   int
	}{
		// user-data, spelled every which way
		{"GET", "/latest/user-data", "", "", 404},
		{"GET", "/latest/user-data/", "", "", 404},
		{"GET", "/latest//user-data", "", "", 404},
		{"GET", "//latest/user-data", "", "", 404},
		{"GET", "/latest/./user-data", "", "", 404},
		{"GET", "/latest/meta-data/../user-data", "", "", 404},
		{"GET", "/latest/meta-data/../meta-data/../user-data", "", "", 404},
		{"GET", "/latest/meta-data/instance-id/../../user-data", "", "", 404},
		{"GET", "/latest/meta-data/placement/region/../../../user-data", "", "", 404},
		{"GET", "/latest/meta-data/%2e%2e/user-data", "", "", 404},
		{"GET", "/latest/meta-data/%2E%2E/user-data", "", "", 404},
		{"GET", "/latest/meta-data/.%2e/user-data", "", "", 404},
		{"GET", "/latest/meta-data%2f..%2fuser-data", "", "", 404},
		{"GET", "/latest%2fuser-data", "", "", 404},
		{"GET", "/latest%2Fuser-data", "", "", 404},
		{"GET", "/latest/%75ser-data", "", "", 404},
		{"GET", "/latest/user%2ddata", "", "", 404},
		{"GET", "/latest/%2575ser-data", "", "", 400},
		{"GET", "/latest/meta-data/%252e%252e/user-data", "", "", 400},
		{"GET", "/latest/meta-data/%25252e%25252e/user-data", "", "", 400},
		{"GET", "/latest/user-data%00", "", "", 400},
		{"GET", "/latest/user-data%0a", "", "", 400},
		{"GET", "/latest/user-data%", "", "", 400},
		{"GET", "/latest/user-data%zz", "", "", 400},
		{"GET", "/LATEST/USER-DATA", "", "", 404},
		{"GET", "/Latest/User-Data/", "", "", 404},
		{"GET", "/latest/user-data?x", "", "", 404},
		{"GET", "/latest/user-data?x=/latest/meta-data/instance-id", "", "", 404},
		{"GET", "/latest/user-data/..%3f/x", "", "", 404},
		{"GET", "/latest/user-data%3f/../x", "", "", 404},
		{"GET", "/latest/user-data#frag", "", "", 404},
		{"GET", "/latest/user-data;x", "", "", 404},
		{"GET", "/latest/meta-data\\..\\user-data", "", "", 404},
		{"GET", "/latest/user-data%20", "", "", 404},
		{"GET", "/latest/user-data", "valid", "", 404},
		{"GET", "/latest/user-data", "not-a-token", "", 404},
		{"HEAD", "/latest/user-data", "", "", 404},
		{"POST", "/latest/user-data", "", "", 404},
		{"PUT", "/latest/user-data", "", "", 404},
		{"PUT", "/latest/user-data", "", "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n", 404},
		{"DELETE", "/latest/user-data", "", "", 404},
		{"PATCH", "/latest/user-data", "valid", "", 404},
		{"GET", "/2009-04-04/user-data", "", "", 404},
		{"GET", "/1.0/user-data", "", "", 404},
		{"GET", "http://169.254.169.254/latest/user-data", "", "", 404},
		{"GET", "http://169.254.169.254/latest/meta-data/../user-data", "", "", 404},

		// the node role's credentials and instance profile
		{"GET", "/latest/meta-data/iam/security-credentials/" + nodeRole, "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + nodeRole, "valid", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + nodeRole + "/", "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/NODE-ROLE", "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/%6eode-role", "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole + "/../" + nodeRole, "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + nodeRole + "%2f", "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole + "%2f..%2f" + nodeRole, "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole + "/" + nodeRole, "", "", 404},
		{"GET", "/latest/meta-data/iam/security-credentials-extended/" + nodeRole, "", "", 404},
		{"GET", "/latest/meta-data/iam//security-credentials//" + nodeRole, "", "", 404},
		{"GET", "/2009-04-04/meta-data/iam/security-credentials/" + nodeRole, "", "", 404},
		{"GET", "/2009-04-04/meta-data/iam/security-credentials/", "", "", 404},
		{"GET", "/latest/meta-data/iam/info", "", "", 404},
		{"GET", "/latest/meta-data/iam/info/", "", "", 404},
		{"GET", "/latest/meta-data/iam/INFO", "valid", "", 404},
		{"GET", "/latest/meta-data/iam/./info", "", "", 404},
		{"GET", "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance", "", "", 404},
		{"GET", "/latest/meta-data/identity-credentials/ec2/info", "", "", 404},
		{"GET", "/latest/meta-data/public-keys/0/openssh-key", "", "", 404},
		{"GET", "/latest/meta-data/hostname", "", "", 404},
		{"GET", "/latest/meta-data/placement/availability-zone/../../iam/info", "", "", 404},

		// signed identity documents: proof of being the node
		{"GET", "/latest/dynamic/instance-identity/pkcs7", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/signature", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/rsa2048", "valid", "", 404},
		{"GET", "/latest/dynamic/instance-identity/PKCS7/", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/document/../pkcs7", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/document/signature", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/document%2f..%2fsignature", "", "", 404},
		{"GET", "/latest/dynamic/instance-identity/", "", "", 404},
		{"GET", "/latest/dynamic/", "", "", 404},
		{"GET", "/latest/dynamic/fws/instance-monitoring", "", "", 404},
		{"GET", "/2021-01-03/dynamic/instance-identity/document", "", "", 404},

		// directory listings that would reveal or lead to the above
		{"GET", "/", "", "", 404},
		{"GET", "/latest", "", "", 404},
		{"GET", "/latest/", "", "", 404},
		{"GET", "/latest/meta-data/..", "", "", 404},

		// protocol refusals on allowed paths
		{"PUT", "/latest/api/token", "", "X-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.9.9.9\r\n", 403},
		// relayed by a proxy: the source address would be the proxy pod's, and so would the role
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole, "", "X-Forwarded-For: 10.9.9.9\r\n", 403},
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole, "valid", "Via: 1.1 squid\r\n", 403},
		{"GET", "/latest/meta-data/iam/security-credentials/", "", "forwarded: for=10.9.9.9\r\n", 403},
		{"GET", "/latest/meta-data/iam/security-credentials/" + podRole, "", "x-real-ip: 10.9.9.9\r\n", 403},
		{"GET", "/latest/meta-data/instance-id", "", "X-Forwarded-For: \r\n", 403},
		{"GET", "/latest/api/token", "", "", 405},
		{"POST", "/latest/meta-data/iam/security-credentials/", "", "", 405},
		{"DELETE", "/latest/meta-data/iam/security-credentials/" + podRole, "valid", "", 405},
		{"OPTIONS", "/latest/meta-data/instance-id", "", "", 405},
		{"GET", "/latest/meta-data/iam/security-credentials/", "not-a-token", "", 401},
		{"GET", "/latest/meta-data/instance-id", strings.Repeat("A", tokenLen), "", 401},
	}
	if len(tests) < 40 {
		t.Fatalf("only %d refusal cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			req := tt.method + " " + tt.target + " HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n" + tt.extra
			switch tt.token {
			case "":
			case "valid":
				req += headerToken + ": " + tok + "\r\n"
			default:
				req += headerToken + ": " + tt.token + "\r\n"
			}
			req += "\r\n"
			resp, body := rawRequest(t, addr, req)
			if resp.StatusCode != tt.want {
				t.Errorf("%s %q = %d, want %d (body %q)", tt.method, tt.target, resp.StatusCode, tt.want, body)
			}
			if resp.StatusCode < 400 {
				t.Errorf("%s %q = %d, want a refusal", tt.method, tt.target, resp.StatusCode)
			}
			if strings.Contains(body, leakMarker) || strings.Contains(strings.Join(flatten(resp.Header), "\n"), leakMarker) {
				t.Errorf("%s %q leaked the node's answer: %q", tt.method, tt.target, body)
			}
			if strings.Contains(body, podCredentials().SecretAccessKey) {
				t.Errorf("%s %q: refusal carries credentials: %q", tt.method, tt.target, body)
			}
		})
	}
	assertUpstreamCanonical(t, node)
	if seen := node.seen(); len(seen) != 0 {
		t.Errorf("node IMDS was asked %q while answering only refusals, want nothing", seen)
	}
}

func flatten(h http.Header) []string {
	var out []string
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, k+": "+v)
		}
	}
	return out
}

// TestAllowedSpellingsReachOnlyCanonicalPaths is the other half of TestRefusals: odd spellings of allowed node facts
// are served, and the node's IMDS is asked only the canonical path, once per fact (then cached).
func TestAllowedSpellingsReachOnlyCanonicalPaths(t *testing.T) {
	node := newFakeNodeIMDS(t)
	e := newTestEnv(t, func(c *Config) { c.Upstream = node.srv.URL })
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	targets := []string{
		"/latest/meta-data/instance-id",
		"/latest/meta-data/instance-id/",
		"/LATEST/Meta-Data/Instance-ID",
		"/latest//meta-data/./instance-id",
		"/latest/meta-data/iam/../instance-id",
		"/latest/meta-data/%69nstance-id",
		"/latest/meta-data/instance-id?x=../../user-data",
		"/latest/meta-data/user-data/../instance-id",
		"http://169.254.169.254/latest/meta-data/instance-id",
		"/latest/meta-data/placement/availability-zone/",
		"/latest/meta-data/placement//availability-zone",
		"/latest/meta-data/placement/region",
		"/latest/meta-data/placement/availability-zone-id",
		"/latest/meta-data/ami-id",
		"/latest/meta-data/instance-type",
		"/latest/meta-data/local-ipv4",
		"/latest/dynamic/instance-identity/document",
		"/latest/dynamic/instance-identity/signature/../document",
	}
	for _, target := range targets {
		resp, body := rawRequest(t, addr, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 || !strings.Contains(body, leakMarker) {
			t.Errorf("GET %q = %d %q, want 200 with the node's answer", target, resp.StatusCode, body)
		}
	}
	assertUpstreamCanonical(t, node)
	count := map[string]int{}
	for _, r := range node.seen() {
		count[r]++
	}
	for r, n := range count {
		if n > 1 && !strings.HasPrefix(r, http.MethodPut) {
			t.Errorf("node IMDS was asked %q %d times, want once (cached)", r, n)
		}
	}
	if n := count[http.MethodPut+" "+pathToken]; n != 1 {
		t.Errorf("node IMDS token PUTs = %d, want 1 (token reused)", n)
	}
}
