package stack

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Images the real node runs, built here without a registry with buildah and imported into containerd. The agent's
// image is built from the project's own Dockerfile, on base images hack/install-stack.sh made locally under the names
// the Dockerfile uses; pods use imagePullPolicy Never.
const (
	PauseImage = "localhost/iamlet-e2e/pause:1"
	// AgentImageRepo:AgentImageTag is the Dockerfile's image; AgentImageTag2 is the same image under a new tag, for a
	// rolling update.
	AgentImageRepo = "localhost/iamlet"
	AgentImageTag  = "e2e"
	AgentImageTag2 = "e2e-2"
	// AgentImageVersion is the VERSION the image is built with, which `iamlet version` in it reports.
	AgentImageVersion = "0.0.0-e2e"
	// GoClientsImage holds the static Go clients (aws-sdk-go-v2 and the raw probes) on an empty base.
	GoClientsImage = "localhost/iamlet-e2e/go-clients:1"
	// DebianClientsImage is Debian with the AWS CLI and boto3 (hack/install-stack.sh's client base) and the boto3
	// client script.
	DebianClientsImage = "localhost/iamlet-e2e/debian-clients:1"
	// debianClientBase is made by hack/install-stack.sh.
	debianClientBase = "localhost/iamlet-client-base:bookworm"
)

// GoClients are the static Go programs in GoClientsImage, at /NAME.
var GoClients = map[string]string{
	"gov2":       "./e2e/clients/gov2",
	"probe":      "./e2e/clients/probe",
	"firstcreds": "./e2e/clients/firstcreds",
	"pause":      "./e2e/clients/pause",
}

// Buildah runs buildah on the stack's own image storage (hack/install-stack.sh's base images live there).
func Buildah(args ...string) ([]byte, error) {
	d := filepath.Join(stackDir(), "buildah")
	full := append([]string{"--root", filepath.Join(d, "root"), "--runroot", filepath.Join(d, "run"), "--storage-driver", "overlay"}, args...)
	cmd := exec.Command("buildah", full...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("buildah %s: %v: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return out, nil
}

// BuildAgentImage builds the Dockerfile at the module root as AgentImageRepo:AgentImageTag. The Go build stage
// gets the machine's module and build caches as volumes, so it needs no network; the final stage's apt-get is the
// Dockerfile's own (Debian packages, cached as a layer after the first build).
func BuildAgentImage(dir string) error {
	gomod, gocache, err := goCaches()
	if err != nil {
		return err
	}
	_, err = Buildah("bud", "--pull=never", "--layers", "--isolation=chroot", "--quiet", "--build-arg", "VERSION="+AgentImageVersion,
		"-v", gomod+":/go/pkg/mod", "-v", gocache+":/root/.cache/go-build",
		"-f", RepoPath("Dockerfile"), "-t", AgentImageRepo+":"+AgentImageTag, repoRoot())
	if err != nil {
		return fmt.Errorf("building the Dockerfile: %w", err)
	}
	_, err = Buildah("tag", AgentImageRepo+":"+AgentImageTag, AgentImageRepo+":"+AgentImageTag2)
	return err
}

func goCaches() (mod, cache string, err error) {
	out, err := exec.Command("go", "env", "GOMODCACHE", "GOCACHE").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return "", "", fmt.Errorf("go env GOMODCACHE GOCACHE: %q", out)
	}
	return f[0], f[1], nil
}

// BuildClientImages builds the pause image, GoClientsImage and DebianClientsImage.
func BuildClientImages(dir string) error {
	bins := filepath.Join(dir, "static")
	if err := os.MkdirAll(bins, 0o700); err != nil {
		return err
	}
	for name, pkg := range GoClients {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bins, name), pkg)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v: %s", pkg, err, out)
		}
	}
	// The pause image: the sandbox's first process, which blocks on signals and reaps children.
	if err := commitImage(PauseImage, "scratch", []string{"/pause"}, map[string]string{filepath.Join(bins, "pause"): "/pause"}); err != nil {
		return err
	}
	files := map[string]string{}
	for name := range GoClients {
		files[filepath.Join(bins, name)] = "/" + name
	}
	if err := commitImage(GoClientsImage, "scratch", []string{"/gov2"}, files); err != nil {
		return err
	}
	return commitImage(DebianClientsImage, debianClientBase, []string{"/usr/bin/python3", "/boto3_client.py"},
		map[string]string{RepoPath(Boto3Client): "/boto3_client.py", filepath.Join(bins, "firstcreds"): "/usr/local/bin/firstcreds"})
}

// commitImage makes image name from base with files (source: destination) and an entrypoint.
func commitImage(name, base string, entrypoint []string, files map[string]string) error {
	out, err := Buildah("from", "--pull=never", base)
	if err != nil {
		return err
	}
	ctr := strings.TrimSpace(string(out))
	defer Buildah("rm", ctr) //nolint:errcheck // best effort: the working container is scratch
	for src, dst := range files {
		if _, err := Buildah("copy", "--chmod", "0755", ctr, src, dst); err != nil {
			return err
		}
	}
	ep := `["` + strings.Join(entrypoint, `","`) + `"]`
	if _, err := Buildah("config", "--entrypoint", ep, "--cmd", "", ctr); err != nil {
		return err
	}
	_, err = Buildah("commit", "--quiet", ctr, name)
	return err
}

// ImportImages copies images from buildah's storage into the real node's containerd.
func (s *Stack) ImportImages(images ...string) error {
	for _, img := range images {
		tar := filepath.Join(s.Dir, "image.tar")
		if _, err := Buildah("push", "--quiet", img, "docker-archive:"+tar+":"+img); err != nil {
			return err
		}
		out, err := exec.Command("ctr", "--address", s.ContainerdSocket(), "-n", "k8s.io", "images", "import", tar).CombinedOutput()
		_ = os.Remove(tar)
		if err != nil {
			return fmt.Errorf("ctr images import %s: %v: %s", img, err, out)
		}
	}
	return nil
}

func (s *Stack) importImages() error {
	if err := BuildAgentImage(s.Dir); err != nil {
		return err
	}
	if err := BuildClientImages(s.Dir); err != nil {
		return err
	}
	return s.ImportImages(PauseImage, AgentImageRepo+":"+AgentImageTag, AgentImageRepo+":"+AgentImageTag2, GoClientsImage, DebianClientsImage)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
