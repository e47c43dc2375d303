// Package docs holds the project's documentation; its test keeps docs/security.md in step with the tests.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var testRef = regexp.MustCompile("([a-z0-9/]+)/((?:Test|Fuzz)[A-Za-z0-9_]+)")

// TestSecurityTableMatchesTests: every test the security table names exists, and every test of the
// adversarial suite has a row.
func TestSecurityTableMatchesTests(t *testing.T) {
	doc, err := os.ReadFile("security.md")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		for _, m := range testRef.FindAllStringSubmatch(line, -1) {
			pkg, name := m[1], m[2]
			named[name] = true
			if !definesTest(t, filepath.Join("..", pkg), name) {
				t.Errorf("security.md names %s/%s, which is not a test in %s", pkg, name, pkg)
			}
		}
	}
	if len(named) < 20 {
		t.Fatalf("only %d tests found in security.md's tables; is the parser right?", len(named))
	}
	src, err := os.ReadFile("../e2e/adversarial_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`).FindAllStringSubmatch(string(src), -1) {
		if !named[m[1]] {
			t.Errorf("adversarial test %s has no row in security.md", m[1])
		}
	}
}

func definesTest(t *testing.T, dir, name string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?m)^func ` + regexp.QuoteMeta(name) + `\(`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if decl.Match(b) {
			return true
		}
	}
	return false
}
