package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// runner is the part of go-iptables this package uses, kept small so an in-memory fake can stand in for it.
// Listing is in iptables -S form.
type runner interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error // creates the chain if it is missing
	DeleteChain(table, chain string) error
}

var _ runner = (*goipt.IPTables)(nil)

// openIptables returns a handle on the backend's own binary (iptables-nft, ip6tables-legacy, ...) rather than plain
// iptables, whose alternative inside the container need not match what the node uses.
func openIptables(backend string, v6 bool, lockWait time.Duration) (*goipt.IPTables, error) {
	proto, bin := goipt.ProtocolIPv4, "iptables-"+backend
	if v6 {
		proto, bin = goipt.ProtocolIPv6, "ip6tables-"+backend
	}
	return goipt.New(goipt.IPFamily(proto), goipt.Path(bin), goipt.Timeout(int(math.Ceil(lockWait.Seconds()))))
}

// DetectBackend tells which iptables backend the node uses, the way kubernetes-sigs/iptables-wrappers does: the
// kubelet's hint chains win if either backend has them, otherwise the backend holding more rules, with ties going to
// nft. It only reads (iptables-save creates no tables), but it must run in the namespace whose rules matter.
func DetectBackend(ctx context.Context) (string, error) {
	var nft, legacy bytes.Buffer
	var errs []error
	ran := false
	for _, c := range []struct {
		bin string
		out *bytes.Buffer
	}{
		{"iptables-nft-save", &nft},
		{"ip6tables-nft-save", &nft},
		{"iptables-legacy-save", &legacy},
		{"ip6tables-legacy-save", &legacy},
	} {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, c.bin)
		cmd.Stdout, cmd.Stderr = c.out, &stderr
		// A family or backend the kernel lacks makes its save fail; like the wrapper, count that as no rules.
		// But a save we may not run (iptables-legacy needs CAP_NET_RAW) hides rules that may be there, and
		// guessing would install ours in the backend the node does not use: that is an error.
		if err := cmd.Run(); err != nil {
			if bytes.Contains(stderr.Bytes(), []byte("Permission denied")) {
				return "", fmt.Errorf("detect iptables backend: %s: permission denied (legacy iptables needs CAP_NET_RAW; or set the backend explicitly)", c.bin)
			}
			errs = append(errs, fmt.Errorf("run %s: %w", c.bin, err))
			continue
		}
		ran = true
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("detect iptables backend: %w", err)
	}
	if !ran {
		return "", fmt.Errorf("detect iptables backend: %w", errors.Join(errs...))
	}
	return chooseBackend(nft.Bytes(), legacy.Bytes()), nil
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
	for _, fam := range []string{"iptables", "ip6tables"} {
		out, err := exec.CommandContext(ctx, fam+"-"+backend+"-save").Output()
		if err == nil && (bytes.Contains(out, []byte(":"+natChain+" ")) || bytes.Contains(out, []byte(":"+guardChain+" "))) {
			return true
		}
	}
	return false
}
