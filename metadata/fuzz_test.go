package metadata

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"
)

func fuzzSeeds() []string {
	return []string{
		"/latest/meta-data/iam/security-credentials/pod-role",
		"/latest/user-data",
		"/latest/meta-data/%2e%2e/user-data",
		"/latest/meta-data%2f..%2fuser-data",
		"/latest/%252e%252e/user-data",
		"//latest/./meta-data/../user-data/",
		"/LATEST/META-DATA/IAM/INFO",
		"/latest/dynamic/instance-identity/document/../pkcs7",
		"/latest/meta-data/placement/availability-zone/",
		"/latest/user-data?x=/latest/meta-data",
		"latest/user-data",
		"/latest/user-data%00",
		"/latest/api/token",
		"",
	}
}

// referenceNormalise is normalise written the obvious way with the standard library, as an oracle. ok is false
// where normalise must refuse (bad escapes, '%' or control characters after decoding).
func referenceNormalise(escaped string) (p string, ok bool) {
	escaped, _, _ = strings.Cut(escaped, "?")
	d, err := url.PathUnescape(escaped)
	if err != nil || strings.Contains(d, "%") || strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", false
	}
	return path.Clean("/" + d), true
}

func FuzzNormalise(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, escaped string) {
		rp, err := normalise(escaped)
		ref, refOK := referenceNormalise(escaped)
		if (err == nil) != refOK {
			t.Fatalf("normalise(%q) error = %v, reference ok = %v", escaped, err, refOK)
		}
		if err != nil {
			return
		}
		if rp.p != ref {
			t.Fatalf("normalise(%q) = %q, reference %q", escaped, rp.p, ref)
		}
		p := rp.p
		switch {
		case !strings.HasPrefix(p, "/"):
			t.Fatalf("normalise(%q) = %q: not absolute", escaped, p)
		case strings.Contains(p, "//"), strings.Contains(p, "/./"), strings.Contains(p, "/../"),
			strings.HasSuffix(p, "/."), strings.HasSuffix(p, "/.."):
			t.Fatalf("normalise(%q) = %q: not clean", escaped, p)
		case p != "/" && strings.HasSuffix(p, "/"):
			t.Fatalf("normalise(%q) = %q: trailing slash kept", escaped, p)
		case strings.Contains(p, "%"):
			t.Fatalf("normalise(%q) = %q: '%%' survived", escaped, p)
		}
		if !strings.Contains(p, "?") {
			if again, err := normalise(p); err != nil || again.p != p {
				t.Fatalf("normalise(normalise(%q)) = %q, %v; want %q", escaped, again.p, err, p)
			}
		}
	})
}

// FuzzRouter sends arbitrary request lines through Go's own request parser into the handler, which sits in front
// of a node IMDS that answers everything with leakMarker. Whatever the input: no panic; a 200 only for a path the
// reference normalisation puts on the allow-list; the marker only in an allowed node fact; the node's IMDS asked
// only canonical paths.
func FuzzRouter(f *testing.F) {
	for _, s := range fuzzSeeds() {
		for _, m := range []string{"GET", "PUT"} {
			f.Add(m, s, false)
			f.Add(m, s, true)
		}
	}
	node := newFakeNodeIMDS(f)
	e := newTestEnv(f, func(c *Config) { c.Upstream = node.srv.URL })
	e.clock.Set(time.Now()) // the fake node's facts are fetched over real time; the clock only moves tokens
	e.prov.set("127.0.0.1", func() Credentials {
		c := podCredentials()
		c.Expiration = time.Now().Add(24 * time.Hour)
		return c
	}())
	tok := e.token(f, "127.0.0.1", 21600)

	allowed := map[string]bool{}
	for f := factNone + 1; f < numFacts; f++ {
		allowed[f.canonicalPath()] = true
	}
	for _, p := range []string{pathMetaData, pathIAM, pathPlacement, pathCreds, pathCredsExtended,
		pathCreds + "/" + podRole, pathCredsExtended + "/" + podRole} {
		allowed[p] = true
	}

	f.Fuzz(func(t *testing.T, method, target string, withToken bool) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\n"
		if withToken {
			raw += headerToken + ": " + tok + "\r\n" + headerTokenTTL + ": 60\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // a real server would have answered 400 itself
		}
		r.RemoteAddr = "127.0.0.1:40000"
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)

		ref, ok := referenceNormalise(r.URL.EscapedPath())
		ref = strings.ToLower(ref)
		body := w.Body.String()
		if w.Code == http.StatusOK {
			if !ok {
				t.Fatalf("%s %q = 200, but the path does not even decode", method, target)
			}
			if method == http.MethodPut && ref != pathToken || method != http.MethodPut && !allowed[ref] {
				t.Fatalf("%s %q (resolves to %q) = 200 %q, not on the allow-list", method, target, ref, body)
			}
			for _, bad := range []string{"user-data", "/iam/info", "pkcs7", "signature", "rsa2048", nodeRole, "identity-credentials"} {
				if strings.Contains(ref, bad) {
					t.Fatalf("%s %q (resolves to %q) = 200", method, target, ref)
				}
			}
		}
		if strings.Contains(body, leakMarker) {
			if !ok || !allowed[ref] || strings.Contains(ref, "security-credentials") {
				t.Fatalf("%s %q (resolves to %q): node IMDS answer leaked: %q", method, target, ref, body)
			}
		}
		assertUpstreamCanonical(t, node)
	})
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\n\n\t\x00\x1f<>&", "\u2028\u2029", "bad\xff\xfe", "é日本\U0001f600", "\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("json.Marshal(%q): %v", s, err)
		}
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	})
}
