package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/hostnet"
	"github.com/iamlet/iamlet/iptables"
)

// The kernel reads a hostNetwork rule's cgroup level in the cgroup namespace of whoever writes the rule, and
// containerd gives unprivileged containers a namespace of their own on cgroup v2 nodes, from which the pods cgroup
// cannot be named. So the rules are written by `iamlet host-rules`, a container of the agent's pod that is privileged
// for that reason alone (it has the node's cgroup namespace) and does nothing else: no listener, no Kubernetes or AWS
// access. The agent, unprivileged and facing the pods, tells it which pods are node-trusted through a file in their
// shared directory, and reads back how the last pass went.

const (
	exemptFile     = "host-exempt.json" // written by the agent: the node-trusted pods' cgroups
	hostStatusFile = "host-rules.json"  // written by host-rules after every pass
)

// hostRulesStatus is what host-rules reports after each pass.
type hostRulesStatus struct {
	Time  time.Time `json:"time"`
	Error string    `json:"error,omitempty"`
}

// HostRulesConfig configures `iamlet host-rules`.
type HostRulesConfig struct {
	MetadataAddrs   []netip.AddrPort // the agent's --metadata-addr
	HostNetworkPort uint16
	CgroupRoot      string
	PodsCgroup      string
	PodUID          string // the pod's own UID: its cgroup (the agent's and this container's) keeps the node's IMDS
	Dir             string // shared with the agent
	Interval        time.Duration
	Alive           string // the abstract socket held while it runs; "" = HostRulesAlive
}

// HostRulesAlive is the abstract unix socket host-rules holds in the node's network namespace while it runs.
// Uninstall waits until it is free, so that a host-rules container still terminating cannot write back the table
// uninstall removes: that table's guard would leave every pod on the node refused.
const HostRulesAlive = "@iamlet-host-rules"

// RunHostRules writes and keeps the hostNetwork rules until ctx is done; the rules stay when it returns. It fails at
// once when it cannot write rules that match (no cgroup v2 hierarchy, a private cgroup namespace, no nf_tables).
func RunHostRules(ctx context.Context, cfg HostRulesConfig, log *slog.Logger) error {
	hierarchy := cgroupHierarchy(cfg.CgroupRoot)
	cg, err := hostnet.NewCgroups(hierarchy, cfg.PodsCgroup)
	if err != nil {
		return fmt.Errorf("no cgroup v2 pods hierarchy: %w", err)
	}
	self, err := traceSelf()
	if err != nil {
		return err
	}
	if err := sameCgroupNamespace(hierarchy, self); err != nil {
		return err
	}
	hc := iptables.HostConfig{}
	_, hc.Pods.Level, hc.Pods.ID = cg.Pods()
	for _, a := range cfg.MetadataAddrs {
		if a.Addr().Is4() {
			hc.MetadataV4 = netip.AddrPortFrom(a.Addr(), cfg.HostNetworkPort)
		} else {
			hc.MetadataV6 = netip.AddrPortFrom(a.Addr(), cfg.HostNetworkPort)
		}
	}
	rules, err := iptables.NewHostRules(hc, log)
	if err != nil {
		return err
	}
	level, id, err := cg.PodCgroup(cfg.PodUID)
	if err != nil {
		return fmt.Errorf("this pod's own cgroup (--pod-uid from metadata.uid): %w", err)
	}
	own := iptables.CgroupRef{Level: level, ID: id}
	// Held from before the first write until the last: uninstall removes nothing while it is.
	aliveAt := cmp.Or(cfg.Alive, HostRulesAlive)
	alive, err := net.Listen("unix", aliveAt)
	if err != nil {
		return fmt.Errorf("holding %s, which tells uninstall this container runs (is another host-rules running?): %w", aliveAt, err)
	}
	defer alive.Close()
	// Until the agent has said which pods are trusted, those a previous run exempted stay exempted.
	previous, err := rules.Exempted()
	if err != nil {
		log.Warn("could not read the previous exemptions", "error", err.Error())
	}
	log.Info("writing the hostNetwork rules", "pods_cgroup", hc.Pods.String(), "targets", fmt.Sprint(hc.MetadataV4, " ", hc.MetadataV6))
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	// A deletion in the table (a flush, `nft flush ruleset`) brings the next pass forward: hostNetwork pods have no
	// routing guard behind this table.
	deleted, err := rules.Watch(ctx)
	if err != nil {
		log.Warn("no nftables notifications: the rules are checked every interval only", "interval", cfg.Interval, "error", err.Error())
	}
	soon := rate.NewLimiter(rate.Every(notifiedPassEvery), 3)
	for {
		exempt, err := readExemptions(cfg.Dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			exempt = previous
		case err != nil:
			log.Error("reading the agent's exemptions; keeping the previous ones", "error", err.Error())
			exempt = previous
		}
		// The agent names node-trusted pods; this container, which holds the privilege, accepts only pod-level
		// cgroups of API pods from it (never a QoS or the pods cgroup), and adds its own pod and the static pods.
		exempt, err = podCgroupsOnly(cg, exempt, log)
		if err == nil {
			var static []iptables.CgroupRef
			if static, err = staticPods(cg); err == nil {
				var changed int
				if changed, err = rules.Ensure(ctx, append(append(exempt, static...), own)); err == nil {
					previous = exempt
					if changed > 0 {
						log.Info("hostNetwork rules written", "changed", changed, "trusted", len(exempt), "static", len(static))
					}
				}
			}
		}
		st := hostRulesStatus{Time: time.Now()}
		if err != nil {
			st.Error = err.Error()
			log.Error("writing the hostNetwork rules", "error", st.Error)
		}
		if err := writeJSON(filepath.Join(cfg.Dir, hostStatusFile), st); err != nil {
			log.Error("reporting to the agent", "error", err.Error())
		}
		if !awaitPass(ctx, t.C, &deleted, soon, func() {
			log.Warn("nftables notifications stopped: the rules are checked every interval only", "interval", cfg.Interval)
		}) {
			return nil
		}
	}
}

// awaitPass waits for host-rules' next pass: the ticker, or a deletion in the table, and reports false once ctx is
// done. A deletion brings the pass forward, but no sooner than soon allows: a pass's own writes are deletions too,
// so a rule the kernel renders otherwise than it was written, rewritten on every pass, must not spin. Deletions
// meanwhile wait for that pass (the channel holds one). When the notifications stop, deleted is set to nil and
// stopped is called.
func awaitPass(ctx context.Context, tick <-chan time.Time, deleted *<-chan struct{}, soon *rate.Limiter, stopped func()) bool {
	select {
	case <-ctx.Done():
		return false
	case <-tick:
		return true
	case _, ok := <-*deleted:
		if !ok {
			*deleted = nil
			stopped()
			return true
		}
	}
	delay := soon.Reserve().Delay()
	if delay <= 0 {
		return true
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// notifiedPassEvery is how often, at most, deletions in the table bring a pass forward (after a burst of three).
const notifiedPassEvery = 100 * time.Millisecond

// podCgroupsOnly keeps the exemptions that name a pod-level cgroup of an API pod at its level.
func podCgroupsOnly(cg *hostnet.Cgroups, refs []iptables.CgroupRef, log *slog.Logger) ([]iptables.CgroupRef, error) {
	pods, err := cg.APIPods()
	if err != nil {
		return nil, err
	}
	var out []iptables.CgroupRef
	for _, r := range refs {
		if level, ok := pods[r.ID]; ok && level == r.Level {
			out = append(out, r)
		} else {
			log.Warn("ignoring an exemption that names no pod cgroup", "cgroup", r.String())
		}
	}
	return out, nil
}

// staticPods are the static pods' cgroups: they run from files on the node, so they are the node's own.
func staticPods(cg *hostnet.Cgroups) ([]iptables.CgroupRef, error) {
	levels, ids, err := cg.StaticPods()
	refs := make([]iptables.CgroupRef, len(ids))
	for i := range ids {
		refs[i] = iptables.CgroupRef{Level: levels[i], ID: ids[i]}
	}
	return refs, err
}

func readExemptions(dir string) ([]iptables.CgroupRef, error) {
	b, err := os.ReadFile(filepath.Join(dir, exemptFile))
	if err != nil {
		return nil, err
	}
	var refs []iptables.CgroupRef
	if err := json.Unmarshal(b, &refs); err != nil {
		return nil, fmt.Errorf("%s: %w", exemptFile, err)
	}
	return refs, nil
}

// writeJSON replaces path atomically, so a reader never sees half a file.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readHostStatus says whether host-rules reported a good pass recently enough ("" = covered) or what is wrong.
func readHostStatus(dir string, within time.Duration, now time.Time) string {
	b, err := os.ReadFile(filepath.Join(dir, hostStatusFile))
	if err != nil {
		return hostNoReport
	}
	var st hostRulesStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return "host-rules report unreadable: " + err.Error()
	}
	switch {
	case st.Error != "":
		return "host-rules: " + st.Error
	case now.Sub(st.Time) > within:
		return fmt.Sprintf("the host-rules container last reported %s ago", now.Sub(st.Time).Round(time.Second))
	}
	return ""
}

// exemptionsFor is the file the agent writes: the cgroups of the trusted pods it found.
func writeExemptions(dir string, refs map[types.UID]iptables.CgroupRef) error {
	list := make([]iptables.CgroupRef, 0, len(refs))
	for _, r := range refs {
		list = append(list, r)
	}
	return writeJSON(filepath.Join(dir, exemptFile), list)
}
