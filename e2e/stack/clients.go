package stack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Paths of the SDK workloads, relative to the module root.
const (
	Boto3Client   = "e2e/clients/boto3_client.py"
	jsClientDir   = "e2e/clients/js"
	jsClientEntry = "client.mjs"
)

// Interpreters the workloads run with: Debian's, never a pyenv or nvm one that PATH might find first.
const (
	Python3 = "/usr/bin/python3"
	Node    = "/usr/bin/node"
	AWSCLI  = "/usr/bin/aws"
)

// RepoPath is rel (slash-separated, from the module root) as an absolute path.
func RepoPath(rel string) string { return filepath.Join(repoRoot(), filepath.FromSlash(rel)) }

// stackDir is hack/install-stack.sh's cache directory.
func stackDir() string {
	if d := os.Getenv("IAMLET_STACK_DIR"); d != "" {
		return d
	}
	return "/var/cache/iamlet-stack"
}

// NPMDir is where hack/install-stack.sh installed the JavaScript client's packages: a directory keyed
// by the hash of its package-lock.json, so a changed lockfile gets a fresh install.
func NPMDir() (string, error) {
	lock, err := os.ReadFile(RepoPath(jsClientDir + "/package-lock.json"))
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(lock)
	return filepath.Join(stackDir(), "npm-"+hex.EncodeToString(sum[:])[:16]), nil
}

// JSClient puts the JavaScript client in dir/js next to a node_modules link to the installed packages
// (ES modules resolve imports from the script's own directory, not NODE_PATH) and returns the script.
func JSClient(dir string) (string, error) {
	npm, err := NPMDir()
	if err != nil {
		return "", err
	}
	modules := filepath.Join(npm, "node_modules")
	if _, err := os.Stat(filepath.Join(modules, "@aws-sdk", "client-s3")); err != nil {
		return "", fmt.Errorf("the JavaScript client's packages are not installed in %s: run hack/install-stack.sh", npm)
	}
	js := filepath.Join(dir, "js")
	if err := os.MkdirAll(js, 0o755); err != nil {
		return "", err
	}
	src, err := os.ReadFile(RepoPath(jsClientDir + "/" + jsClientEntry))
	if err != nil {
		return "", err
	}
	script := filepath.Join(js, jsClientEntry)
	if err := os.WriteFile(script, src, 0o644); err != nil {
		return "", err
	}
	link := filepath.Join(js, "node_modules")
	_ = os.Remove(link)
	if err := os.Symlink(modules, link); err != nil {
		return "", err
	}
	return script, nil
}

// Session is a long-running command in a pod: the test feeds its stdin and reads its stdout by line,
// so a client can hold state (an SDK's IMDSv2 token) while the test changes the world around it.
type Session struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr lockedBuffer
	out    bytes.Buffer // every stdout line read so far
	cancel context.CancelFunc
}

// Start starts argv in the pod's network namespace with the environment Exec would give it.
// Close ends it.
func (p *Pod) Start(ctx context.Context, env []string, argv ...string) (*Session, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	args := p.command(env, argv)
	s := &Session{cmd: exec.CommandContext(ctx, "ip", args...), lines: make(chan string, 64), cancel: cancel}
	s.cmd.Stderr = &s.stderr
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		cancel()
		return nil, err
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	return s, nil
}

// Send writes line to the command's stdin.
func (s *Session) Send(line string) error {
	_, err := io.WriteString(s.stdin, line+"\n")
	return err
}

// Next returns the next line of stdout, waiting at most timeout.
func (s *Session) Next(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-s.lines:
		if !ok {
			return "", fmt.Errorf("the command ended: %s", s.stderr.String())
		}
		s.out.WriteString(l + "\n")
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no output after %s", timeout)
	}
}

// Close closes stdin, waits for the command to end (killing it after 30 s) and returns all it printed.
func (s *Session) Close() Result {
	_ = s.stdin.Close()
	kill := time.AfterFunc(30*time.Second, s.cancel)
	defer kill.Stop()
	for l := range s.lines {
		s.out.WriteString(l + "\n")
	}
	err := s.cmd.Wait()
	s.cancel()
	return Result{Stdout: s.out.String(), Stderr: s.stderr.String(), Err: err}
}

// lockedBuffer is a bytes.Buffer the command's stderr copier and the test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
