package deploy

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// kustomizations are every directory a user may apply: the base and one overlay per CNI.
var kustomizations = []string{"kustomize/base", "kustomize/overlays/eks", "kustomize/overlays/kops-calico", "kustomize/overlays/kops-cilium"}

// TestDockerfileBuildsStaticBinaries runs the Dockerfile's own build command (there is no Docker engine here)
// for each platform the image is published for, and checks what it made: a static, stripped binary for that
// architecture, built without cgo and with -trimpath. A dynamically linked binary would not start on the slim base.
func TestDockerfileBuildsStaticBinaries(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	build := dockerfileBuild(t, string(dockerfile))
	checkBuilderGo(t, string(dockerfile))
	for _, p := range []struct {
		arch    string
		machine elf.Machine
	}{{"amd64", elf.EM_X86_64}, {"arm64", elf.EM_AARCH64}} {
		t.Run(p.arch, func(t *testing.T) {
			out := t.TempDir()
			cmd := exec.Command("sh", "-c", strings.ReplaceAll(build, "/out/", out+"/"))
			cmd.Dir = ".."
			cmd.Env = append(os.Environ(), "TARGETOS=linux", "TARGETARCH="+p.arch, "VERSION=9.9.9-test")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", build, err, b)
			}
			bin := filepath.Join(out, "iamlet")
			checkStaticELF(t, bin, p.machine)
			info, err := buildinfo.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			// With -trimpath, go leaves -ldflags out of the build info; checkStaticELF sees -s and -w instead.
			want := map[string]string{"CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": p.arch, "-trimpath": "true"}
			for _, s := range info.Settings {
				if w, ok := want[s.Key]; ok {
					if s.Value != w {
						t.Errorf("build setting %s = %q, want %q", s.Key, s.Value, w)
					}
					delete(want, s.Key)
				}
			}
			for k, w := range want {
				t.Errorf("build setting %s missing, want %q", k, w)
			}
		})
	}
}

// dockerfileBuild returns the shell command of the RUN instruction that runs go build, continuation lines joined.
func dockerfileBuild(t *testing.T, dockerfile string) string {
	t.Helper()
	joined := strings.ReplaceAll(dockerfile, "\\\n", " ")
	for _, line := range strings.Split(joined, "\n") {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "RUN "); ok && strings.Contains(cmd, "go build") {
			return strings.Join(strings.Fields(cmd), " ")
		}
	}
	t.Fatal("Dockerfile: no RUN instruction runs go build")
	return ""
}

// checkBuilderGo fails if the builder image's Go is older than go.mod asks for.
func checkBuilderGo(t *testing.T, dockerfile string) {
	t.Helper()
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	image := regexp.MustCompile(`(?m)^FROM .*golang:1\.(\d+)`).FindStringSubmatch(dockerfile)
	mod := regexp.MustCompile(`(?m)^go 1\.(\d+)`).FindStringSubmatch(string(gomod))
	if image == nil || mod == nil {
		t.Fatal("cannot find the builder image's Go version or go.mod's")
	}
	have, _ := strconv.Atoi(image[1]) // the patterns guarantee digits
	need, _ := strconv.Atoi(mod[1])
	if have < need {
		t.Errorf("Dockerfile builds with golang:1.%s, older than go.mod's go 1.%s", image[1], mod[1])
	}
}

func checkStaticELF(t *testing.T, bin string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("ELF machine = %v, want %v", f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Error("binary has a symbol table: -ldflags -s did not apply")
	}
	for _, s := range f.Sections {
		if strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("binary has DWARF section %s: -ldflags -w did not apply", s.Name)
		}
	}
}

// TestDaemonSetArgsAreAgentFlags checks each container's command line in every kustomization against the flags its
// iamlet command (run, host-rules) defines (an unknown flag crash-loops the agent on every node), that each $(VAR)
// in it is set in the container's env (Kubernetes leaves an unset one as literal text), and that the token key file
// lies on a mounted volume (the root filesystem is read-only). Helm renders the same objects: e2e/deploy_test.go
// compares them.
func TestDaemonSetArgsAreAgentFlags(t *testing.T) {
	bin := buildIamlet(t)
	flags := map[string]map[string]bool{"run": commandFlags(t, bin, "run"), "host-rules": commandFlags(t, bin, "host-rules")}
	for _, dir := range kustomizations {
		ds := daemonSet(t, kustomize(t, dir))
		for i, c := range ds.Spec.Template.Spec.Containers {
			t.Run(dir+"/"+c.Name, func(t *testing.T) {
				checkContainerArgs(t, c, flags, i == 0)
			})
		}
	}
}

func checkContainerArgs(t *testing.T, c corev1.Container, commands map[string]map[string]bool, agent bool) {
	t.Helper()
	if len(c.Args) == 0 || commands[c.Args[0]] == nil || agent != (c.Args[0] == "run") {
		t.Fatalf("args = %q, want the run command first in the first container, host-rules in another", c.Args)
	}
	flags := commands[c.Args[0]]
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
	}
	for _, a := range c.Args[1:] {
		name, value, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "--") || !flags[name] {
			t.Errorf("arg %q: iamlet %s has no flag %q", a, c.Args[0], name)
		}
		for _, m := range regexp.MustCompile(`\$\((\w+)\)`).FindAllStringSubmatch(value, -1) {
			if !env[m[1]] {
				t.Errorf("arg %q uses $(%s), which the container's env does not set", a, m[1])
			}
		}
		if name == "token-key-file" && !mounted(c.VolumeMounts, value) {
			t.Errorf("token key file %s is not on a mounted volume: the root filesystem is read-only", value)
		}
	}
}

// buildIamlet builds cmd/iamlet.
func buildIamlet(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "iamlet")
	build := exec.Command("go", "build", "-o", bin, "./cmd/iamlet")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/iamlet: %v\n%s", err, out)
	}
	return bin
}

// commandFlags returns the flag names `iamlet COMMAND -h` lists.
func commandFlags(t *testing.T, bin, command string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, command, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("iamlet %s -h: %v\n%s", command, err, out)
	}
	flags := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "  -"); ok {
			flags[strings.Fields(name)[0]] = true
		}
	}
	if !flags["metadata-addr"] {
		t.Fatalf("could not read the flags from iamlet %s -h:\n%s", command, out)
	}
	return flags
}

func mounted(mounts []corev1.VolumeMount, file string) bool {
	for _, m := range mounts {
		if filepath.Dir(file) == filepath.Clean(m.MountPath) {
			return true
		}
	}
	return false
}

// kustomize renders a kustomization directory (relative to deploy/) with kubectl's built-in kustomize.
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatal("kubectl is missing: run hack/install-stack.sh (make test does)")
	}
	out, err := exec.Command("kubectl", "kustomize", dir).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr(err))
	}
	return out
}

// daemonSet returns the only DaemonSet of a YAML stream.
func daemonSet(t *testing.T, stream []byte) *appsv1.DaemonSet {
	t.Helper()
	var found []*appsv1.DaemonSet
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if u.GetKind() != "DaemonSet" {
			continue
		}
		var ds appsv1.DaemonSet
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ds); err != nil {
			t.Fatal(err)
		}
		found = append(found, &ds)
	}
	if len(found) != 1 || len(found[0].Spec.Template.Spec.Containers) == 0 {
		t.Fatalf("want one DaemonSet with containers, got %d DaemonSets", len(found))
	}
	return found[0]
}

func stderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestChartREADMEListsEveryValue: every value in the chart's values.yaml has its row in the chart's README, and the
// README names no value that does not exist.
func TestChartREADMEListsEveryValue(t *testing.T) {
	raw, err := os.ReadFile("helm/iamlet/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("helm/iamlet/README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Za-z.]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		rows[m[1]] = true
	}
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			// A map of settings is walked; one whose content is the user's (affinity, resources, ...) is one value.
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 && !opaqueValues[prefix+k] {
				walk(prefix+k+".", sub)
				continue
			}
			keys = append(keys, prefix+k)
		}
	}
	walk("", values)
	for _, k := range keys {
		if !rows[k] {
			t.Errorf("values.yaml has %s; the chart's README has no row for it", k)
		}
		delete(rows, k)
	}
	for k := range rows {
		t.Errorf("the chart's README describes %s, which values.yaml does not have", k)
	}
}

// opaqueValues are values whose content is Kubernetes' own structure, described as one.
var opaqueValues = map[string]bool{"affinity": true, "resources": true, "updateStrategy": true, "dashboard.labels": true}

// TestAlertRules: the chart's alert file is a valid rule file, and promtool's unit tests of each alert
// (monitoring/alerts_test.yaml) pass: quiet before the lead time, then one alert for the node that is wrong.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian's prometheus package) is missing: run hack/install-stack.sh (make test does)")
	}
	for _, args := range [][]string{{"check", "rules", "helm/iamlet/files/alerts.yaml"}, {"test", "rules", "monitoring/alerts_test.yaml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertHasARunbook: each alert links a section of docs/troubleshooting.md that exists, and is unit-tested.
func TestEveryAlertHasARunbook(t *testing.T) {
	rules, err := os.ReadFile("helm/iamlet/files/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/troubleshooting.md")
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("monitoring/alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(rules, &f); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			n++
			_, anchor, _ := strings.Cut(r.Annotations["runbook_url"], "docs/troubleshooting.md#")
			if anchor != strings.ToLower(r.Alert) || !strings.Contains(string(doc), "\n### "+r.Alert+"\n") {
				t.Errorf("%s: runbook_url %q, want docs/troubleshooting.md#%s and a \"### %s\" section there", r.Alert, r.Annotations["runbook_url"], strings.ToLower(r.Alert), r.Alert)
			}
			if !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("%s has no promtool unit test in monitoring/alerts_test.yaml", r.Alert)
			}
		}
	}
	if n < 8 {
		t.Errorf("%d alerts read; the parser is probably wrong", n)
	}
}
