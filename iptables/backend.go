package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// runner is what this package needs from iptables, kept small so an in-memory fake can stand in for it: the
// commands that check and change rules, as go-iptables runs them, and two reads: the family's tables in
// iptables-save form, and one chain in iptables -S form. Which of the reads a pass uses depends on the backend
// (family.read).
type runner interface {
	Save(ctx context.Context) ([]byte, error)
	ListChain(ctx context.Context, table, chain string) ([]byte, error)
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	ClearChain(table, chain string) error // creates the chain if it is missing
	DeleteChain(table, chain string) error
}

// cmdRunner drives one family of one backend through that backend's own binaries.
type cmdRunner struct {
	*goipt.IPTables
	bin  string // the path of the backend's binary: iptables-nft, ip6tables-legacy, ...
	save string // the path of the matching save binary: iptables-nft-save, ip6tables-legacy-save, ...
}

var _ runner = cmdRunner{}

// openIptables returns a handle on the backend's own binaries (iptables-nft, ip6tables-legacy-save, ...) rather than
// plain iptables, whose alternative inside the container need not match what the node uses.
func openIptables(backend string, v6 bool, lockWait time.Duration) (cmdRunner, error) {
	proto, name := goipt.ProtocolIPv4, "iptables-"+backend
	if v6 {
		proto, name = goipt.ProtocolIPv6, "ip6tables-"+backend
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return cmdRunner{}, err
	}
	save, err := exec.LookPath(name + "-save")
	if err != nil {
		return cmdRunner{}, err
	}
	// go-iptables runs `bin --version` here, once per handle, to learn which flags the binary takes; it has no
	// option to skip that.
	ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(bin), goipt.Timeout(int(math.Ceil(lockWait.Seconds()))))
	if err != nil {
		return cmdRunner{}, err
	}
	return cmdRunner{IPTables: ipt, bin: bin, save: save}, nil
}

// Save reads the family's tables. It takes no xtables lock, and needs none: the lock serialises writers, each of
// which reads a table, changes it and writes it back, while a save only reads. Legacy iptables-save reads each table
// with one getsockopt, and the kernel replaces a table whole, so it sees one table as some writer left it, never a
// write half done; iptables-nft takes no xtables lock at all, and reads again if the ruleset changed while it read.
// What another program changes after the read, the repair (which does wait for the lock) or the next pass meets,
// as it did when every check was a process of its own.
func (c cmdRunner) Save(ctx context.Context) ([]byte, error) {
	return output(ctx, c.save)
}

// ListChain lists one chain with iptables -S. It is for iptables-nft, which reads only that chain (1.8.9 creates no
// table to list it) and takes no xtables lock; legacy iptables would create a table it was asked to list.
func (c cmdRunner) ListChain(ctx context.Context, table, chain string) ([]byte, error) {
	return output(ctx, c.bin, "-t", table, "-S", chain)
}

// output runs a command that only reads, and returns what it wrote to stdout or a *cmdError.
func output(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, &cmdError{cmd: cmd.String(), stderr: string(bytes.TrimSpace(stderr.Bytes())), err: err}
	}
	return out, nil
}

// cmdError is a read iptables refused, with what it said; its methods classify it, as go-iptables' IsNotExist does
// for the commands it runs.
type cmdError struct {
	cmd, stderr string
	err         error
}

func (e *cmdError) Error() string { return fmt.Sprintf("%s (%s): %v", e.cmd, e.stderr, e.err) }
func (e *cmdError) Unwrap() error { return e.err }

// IsNotExist reports that the chain listed does not exist.
func (e *cmdError) IsNotExist() bool {
	return strings.Contains(e.stderr, "No chain/target/match by that name")
}

// IsIncompatible reports that iptables-nft cannot express what the chain listed holds; iptables-nft 1.8.9 also says
// so of a chain that does not exist.
func (e *cmdError) IsIncompatible() bool {
	return strings.Contains(e.stderr, "is incompatible, use 'nft' tool")
}

// DetectBackend tells which iptables backend the node uses, the way kubernetes-sigs/iptables-wrappers does: the
// kubelet's hint chains win if either backend has them, otherwise the backend holding more rules, with ties going to
// nft. It only reads (iptables-save creates no tables), but it must run in the namespace whose rules matter.
func DetectBackend(ctx context.Context) (string, error) {
	saves := []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}
	outs := runAll(ctx, saves)
	var nft, legacy []byte
	var errs []error
	anyRan := false
	for i, o := range outs {
		// A family or backend the kernel lacks makes its save fail; like the wrapper, count that as no rules.
		// But a save we may not run (iptables-legacy needs CAP_NET_RAW) hides rules that may be there, and
		// guessing would install ours in the backend the node does not use: that is an error.
		if o.err != nil {
			var ce *cmdError
			if errors.As(o.err, &ce) && strings.Contains(ce.stderr, "Permission denied") {
				return "", fmt.Errorf("detect iptables backend: %s: permission denied (legacy iptables needs CAP_NET_RAW; or set the backend explicitly)", saves[i])
			}
			errs = append(errs, fmt.Errorf("run %s: %w", saves[i], o.err))
			continue
		}
		anyRan = true
		if i < 2 {
			nft = append(nft, o.out...)
		} else {
			legacy = append(legacy, o.out...)
		}
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("detect iptables backend: %w", err)
	}
	if !anyRan {
		return "", fmt.Errorf("detect iptables backend: %w", errors.Join(errs...))
	}
	return chooseBackend(nft, legacy), nil
}

// ran is one command's result.
type ran struct {
	out []byte
	err error
}

// runAll runs the read-only commands at once (they read, so their order does not matter) and returns their results
// in order: at start-up, one after the other they cost the sum of their times.
func runAll(ctx context.Context, bins []string) []ran {
	return atOnce(bins, func(bin string) ran {
		out, err := output(ctx, bin)
		return ran{out, err}
	})
}

// atOnce calls f on every element of in, each in a goroutine of its own, and returns the results in in's order. The
// package runs processes (iptables, conntrack) that do not depend on each other: at start-up their times would add
// up one after the other.
func atOnce[E, R any](in []E, f func(E) R) []R {
	out := make([]R, len(in))
	var wg sync.WaitGroup
	for i, e := range in {
		wg.Go(func() { out[i] = f(e) })
	}
	wg.Wait()
	return out
}

// chooseBackend decides between the iptables-save outputs of both backends.
func chooseBackend(nft, legacy []byte) string {
	switch {
	case hasKubeletChains(nft):
		return BackendNFT
	case hasKubeletChains(legacy):
		return BackendLegacy
	case countRules(legacy) > countRules(nft):
		return BackendLegacy
	default:
		return BackendNFT
	}
}

// hasKubeletChains spots the chains kubelet (1.17 and later) creates in the backend it uses, the surest sign.
func hasKubeletChains(save []byte) bool {
	for line := range bytes.Lines(save) {
		if bytes.HasPrefix(line, []byte(":KUBE-IPTABLES-HINT ")) || bytes.HasPrefix(line, []byte(":KUBE-KUBELET-CANARY ")) {
			return true
		}
	}
	return false
}

func countRules(save []byte) int {
	n := 0
	for line := range bytes.Lines(save) {
		if bytes.HasPrefix(line, []byte("-A ")) {
			n++
		}
	}
	return n
}

// HasChains reports whether backend's tables, in either family, hold one of iamlet's chains. It reads them with the
// save commands, which change nothing: listing a chain would make iptables-nft create the table it lists.
func HasChains(ctx context.Context, backend string) bool {
	for _, o := range runAll(ctx, []string{"iptables-" + backend + "-save", "ip6tables-" + backend + "-save"}) {
		if o.err == nil && (bytes.Contains(o.out, []byte(":"+natChain+" ")) || bytes.Contains(o.out, []byte(":"+guardChain+" "))) {
			return true
		}
	}
	return false
}
