package iptables

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The hostNetwork rules live in a table of their own, in the inet family so one rule set covers both families, and
// never in iptables' tables, which kube-proxy and the iptables rules of this package own.
const (
	hostTableName  = "iamlet_host"
	hostNATChain   = "nat_output"
	hostGuardChain = "guard_output"
	// The pods' guard again (iptables' IAMLET-GUARD), where a flush of iptables' tables does not reach it.
	podGuardInputChain   = "pods_guard_input"
	podGuardForwardChain = "pods_guard_forward"
	// hostProbeTable exists only inside NewHostRules's probe, whose batch adds and deletes it.
	hostProbeTable = "iamlet_host_probe"
)

// HostRules are the nftables rules for hostNetwork pods, and a second guard for the other pods. Methods are safe for
// concurrent use.
//
// A hostNetwork pod shares the node's network namespace, so its traffic never crosses PREROUTING and its address is
// the node's. What tells it apart from the node is the cgroup of its socket: the kubelet puts every pod below one
// cgroup (kubepods.slice), so the rules match sockets by their cgroup v2 ancestor in OUTPUT. They are written through
// netlink rather than iptables or the nft CLI because both resolve cgroup paths, which mean something else inside
// the agent's container, while the kernel compares ids.
type HostRules struct {
	cfg  HostConfig
	log  *slog.Logger
	conn *nft.Conn
	// mu serialises passes: each one reads the table and then may replace it, and the nft.Conn buffers a batch.
	mu sync.Mutex
}

// NewHostRules validates cfg and checks that the kernel can hold the rules.
func NewHostRules(cfg HostConfig, log *slog.Logger) (*HostRules, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := nft.New()
	if err != nil {
		return nil, fmt.Errorf("open nf_tables: %w", err)
	}
	h := &HostRules{cfg: cfg, log: log, conn: conn}
	if err := h.probe(); err != nil {
		return nil, fmt.Errorf("nf_tables cannot hold the hostNetwork rules (they need Linux 5.13 or later with "+
			"nf_tables, nft_socket, nft_nat and nft_reject_inet, and CAP_NET_ADMIN in the node's network namespace): %w", err)
	}
	return h, nil
}

// probe has the kernel check every expression the rules use, in a table the same batch deletes again, so a kernel
// that lacks one fails at start rather than at the first Ensure. Its chain is hooked nowhere: no packet meets it.
func (h *HostRules) probe() error {
	t := &nft.Table{Name: hostProbeTable, Family: nft.TableFamilyINet}
	ch := &nft.Chain{Name: "probe", Table: t}
	h.conn.AddTable(t)
	h.conn.AddChain(ch)
	for _, c := range h.build([]CgroupRef{{Level: h.cfg.Pods.Level + 1, ID: h.cfg.Pods.ID}}) {
		for _, r := range c.rules {
			h.conn.AddRule(r.nftRule(t, ch))
		}
	}
	h.conn.DelTable(t)
	return h.conn.Flush()
}

// Ensure makes the kernel's table exactly the rules for cfg with exempt as exemptions (sockets in those cgroups keep
// the node's IMDS), atomically (one netlink batch), and reports how many things it changed (0 when already right):
// tables, chains and rules added, replaced or removed.
func (h *HostRules) Ensure(ctx context.Context, exempt []CgroupRef) (changed int, err error) {
	exempt, err = h.cfg.exemptions(exempt)
	if err != nil {
		return 0, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	want := h.build(exempt)
	have, err := readHostTable(h.conn)
	if err != nil {
		return 0, err
	}
	changed, why, err := hostDrift(want, have)
	if err != nil || changed == 0 {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := h.replace(want); err != nil {
		return 0, err
	}
	h.log.Info("hostNetwork interception rules written", "table", "inet "+hostTableName, "changed", changed,
		"why", strings.Join(why, "; "), "exemptions", len(exempt))
	return changed, nil
}

// replace swaps the table's whole content for want in one batch. The kernel applies a batch atomically, so packets
// meet either the old rules or the new ones, never a table without its guard. Adding the table first makes the
// delete valid whether or not the table is there.
func (h *HostRules) replace(want []hostChain) error {
	t := hostTable()
	h.conn.AddTable(t)
	h.conn.DelTable(t)
	h.conn.AddTable(t)
	for _, c := range want {
		h.conn.AddChain(c.chain)
		for _, r := range c.rules {
			h.conn.AddRule(r.nftRule(t, c.chain))
		}
	}
	if err := h.conn.Flush(); err != nil {
		return fmt.Errorf("write table inet %s: %w", hostTableName, err)
	}
	return nil
}

// Exempted reads back the exemptions currently in the kernel (so a restarted agent keeps the previous ones until it
// knows better). An exemption counts only where both chains carry it, so one that drift left half removed is not
// brought back, and only if it is below the pods cgroup of this HostRules, so Ensure can take it; no table means none.
func (h *HostRules) Exempted() ([]CgroupRef, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	have, err := readHostTable(h.conn)
	if err != nil || have.table == nil {
		return nil, err
	}
	inGuard := map[CgroupRef]bool{}
	for _, r := range have.rules[hostGuardChain] {
		if ref, ok := exemptionOf(r); ok {
			inGuard[ref] = true
		}
	}
	var out []CgroupRef
	for _, r := range have.rules[hostNATChain] {
		if ref, ok := exemptionOf(r); ok && inGuard[ref] {
			if _, err := h.cfg.exemptions([]CgroupRef{ref}); err == nil {
				out = append(out, ref)
			}
		}
	}
	return h.cfg.exemptions(out)
}

// Remove deletes the table (uninstall). A table already gone counts as removed.
func (h *HostRules) Remove() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := hostTable()
	h.conn.AddTable(t)
	h.conn.DelTable(t)
	if err := h.conn.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", hostTableName, err)
	}
	return nil
}

// hostChain is one chain of the table as we write it.
type hostChain struct {
	chain *nft.Chain
	rules []hostRule
}

// hostRule is one rule as we write it; the comment tells an operator reading `nft list ruleset` whose rule it is.
type hostRule struct {
	comment string
	exprs   []expr.Any
}

func (r hostRule) nftRule(t *nft.Table, c *nft.Chain) *nft.Rule {
	return &nft.Rule{Table: t, Chain: c, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)}
}

func hostTable() *nft.Table { return &nft.Table{Name: hostTableName, Family: nft.TableFamilyINet} }

// build is the one place the rules are made: Ensure writes its result, compares the kernel's table with it, and
// recognises exemptions by it, so what is written, checked and read back cannot drift apart.
//
// The nat chain runs at dstnat priority, before the guard at filter priority: a redirected packet no longer carries
// the metadata address when the guard sees it, so the guard only ever meets what the redirect did not take, such as
// other ports, other protocols and a family without a listener. Both output chains start by accepting what is not
// addressed to a metadata address, so the rest, the exemptions included, cost nothing for the node's other traffic.
// Exemptions come before any redirect or reject. Only sockets below the pods cgroup are matched: the node's own
// processes keep the node's IMDS.
func (h *HostRules) build(exempt []CgroupRef) []hostChain {
	t := hostTable()
	accept := nft.ChainPolicyAccept
	nat := hostChain{chain: &nft.Chain{
		Name: hostNATChain, Table: t, Type: nft.ChainTypeNAT, Policy: &accept,
		Hooknum: nft.ChainHookRef(unix.NF_INET_LOCAL_OUT), Priority: nft.ChainPriorityRef(-100),
	}}
	guard := hostChain{chain: &nft.Chain{
		Name: hostGuardChain, Table: t, Type: nft.ChainTypeFilter, Policy: &accept,
		Hooknum: nft.ChainHookRef(unix.NF_INET_LOCAL_OUT), Priority: nft.ChainPriorityRef(0),
	}}
	families := []hostFamily{
		{name: "ipv4", proto: unix.NFPROTO_IPV4, imds: IMDSv4, daddrOffset: 16, target: h.cfg.MetadataV4},
		{name: "ipv6", proto: unix.NFPROTO_IPV6, imds: IMDSv6, daddrOffset: 24, target: h.cfg.MetadataV6},
	}
	both := func(r hostRule) {
		nat.rules = append(nat.rules, r)
		guard.rules = append(guard.rules, r)
	}
	for _, f := range families {
		both(hostRule{"iamlet: " + f.name + " not metadata", slices.Concat(f.daddr(expr.CmpOpNeq), verdict(expr.VerdictAccept))})
	}
	for _, e := range exempt {
		both(exemptRule(e))
	}
	pods := inCgroup(h.cfg.Pods)
	for _, f := range families {
		if f.target.IsValid() {
			nat.rules = append(nat.rules, hostRule{"iamlet: imds dnat " + f.name,
				slices.Concat(f.daddr(expr.CmpOpEq), isTCP(), dport(80), pods, counter(), dnat(f.proto, f.target))})
		}
		// TCP gets a reset so clients fail at once instead of timing out; anything else gets ICMP port unreachable.
		guard.rules = append(guard.rules,
			hostRule{"iamlet: imds reject-tcp " + f.name, slices.Concat(f.daddr(expr.CmpOpEq), isTCP(), pods, counter(),
				[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})},
			hostRule{"iamlet: imds reject " + f.name, slices.Concat(f.daddr(expr.CmpOpEq), pods, counter(),
				[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})})
	}
	// Pods' packets to a metadata address that no redirect took (one that came in on another interface, not
	// loopback) are refused here too. iptables' guard does the same in its filter table, but goes with any wholesale
	// flush of it (an iptables-restore without --noflush), which would leave the node's IMDS open to pods until the
	// agent's next pass. A reject is final whichever base chain meets the packet, so nothing accepted in iptables'
	// chains gets past this one; priority -1 runs it first.
	podGuard := func(name string, hook *nft.ChainHook) hostChain {
		c := hostChain{chain: &nft.Chain{Name: name, Table: t, Type: nft.ChainTypeFilter, Policy: &accept,
			Hooknum: hook, Priority: nft.ChainPriorityRef(-1)}}
		for _, f := range families {
			c.rules = append(c.rules,
				hostRule{"iamlet: pods imds reject-tcp " + f.name, slices.Concat(f.daddr(expr.CmpOpEq), notLoopback(), isTCP(), counter(),
					[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})},
				hostRule{"iamlet: pods imds reject " + f.name, slices.Concat(f.daddr(expr.CmpOpEq), notLoopback(), counter(),
					[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}})})
		}
		return c
	}
	return []hostChain{nat, guard, podGuard(podGuardInputChain, nft.ChainHookInput), podGuard(podGuardForwardChain, nft.ChainHookForward)}
}

// notLoopback matches packets that came in on another interface than loopback (ifindex 1 in every namespace): the
// node's own traffic to a local address is none of the guard's business.
func notLoopback() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 1)},
	}
}

func exemptRule(e CgroupRef) hostRule {
	return hostRule{"iamlet: exempt", slices.Concat(inCgroup(e), counter(), verdict(expr.VerdictAccept))}
}

// hostFamily is one address family as the inet table's rules tell it apart.
type hostFamily struct {
	name        string
	proto       byte // NFPROTO_IPV4 or NFPROTO_IPV6
	imds        netip.Addr
	daddrOffset uint32 // of the destination address in the network header
	target      netip.AddrPort
}

// daddr matches packets of the family whose destination compares to the metadata address by op. The family check
// comes first: an inet chain sees both, and the offset means something else in the other one.
func (f hostFamily) daddr(op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOffset, Len: uint32(f.imds.BitLen() / 8)},
		&expr.Cmp{Op: op, Register: 1, Data: f.imds.AsSlice()},
	}
}

// inCgroup matches sockets whose cgroup v2 ancestor at ref.Level is ref. The kernel compares the id as it keeps it,
// in host byte order.
func inCgroup(ref CgroupRef) []expr.Any {
	return []expr.Any{
		&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: ref.Level, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint64(nil, ref.ID)},
	}
}

func isTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// dnat is written as the kernel lists it back (max registers equal to min ones), so the comparison in Ensure sees
// the rule it wrote as unchanged.
func dnat(proto byte, to netip.AddrPort) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(proto), RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2,
			RegProtoMax: 2, Specified: true},
	}
}

func counter() []expr.Any { return []expr.Any{&expr.Counter{}} }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// ruleKey is a rule's canonical form: its expressions as they marshal, counters zeroed, and its comment. A rule read
// back from the kernel and a rule we write have the same key exactly when they do the same thing.
func ruleKey(comment string, exprs []expr.Any) (string, error) {
	var b strings.Builder
	b.WriteString(comment)
	for _, e := range exprs {
		if _, ok := e.(*expr.Counter); ok {
			e = &expr.Counter{}
		}
		m, err := expr.Marshal(unix.NFPROTO_INET, e)
		if err != nil {
			return "", err
		}
		b.WriteByte(0)
		b.Write(m)
	}
	return b.String(), nil
}

// hostTableState is the table as the kernel has it.
type hostTableState struct {
	table  *nft.Table // nil if there is none
	chains map[string]*nft.Chain
	rules  map[string][]seenRule
}

// seenRule is a rule read back from the kernel.
type seenRule struct {
	key   string // as ruleKey; unique and matching nothing when the rule has expressions we never write
	exprs []expr.Any
}

func readHostTable(conn *nft.Conn) (hostTableState, error) {
	tables, err := conn.ListTablesOfFamily(nft.TableFamilyINet)
	if err != nil {
		return hostTableState{}, fmt.Errorf("list nf_tables tables: %w", err)
	}
	s := hostTableState{chains: map[string]*nft.Chain{}, rules: map[string][]seenRule{}}
	for _, t := range tables {
		if t.Name == hostTableName {
			s.table = t
		}
	}
	if s.table == nil {
		return s, nil
	}
	chains, err := conn.ListChainsOfTableFamily(nft.TableFamilyINet)
	if err != nil {
		return hostTableState{}, fmt.Errorf("list chains of table inet %s: %w", hostTableName, err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != hostTableName {
			continue
		}
		s.chains[c.Name] = c
		if s.rules[c.Name], err = listRules(hostTableName, c.Name); err != nil {
			return hostTableState{}, fmt.Errorf("list rules of chain inet %s %s: %w", hostTableName, c.Name, err)
		}
	}
	return s, nil
}

// listRules dumps a chain's rules and parses their expressions here rather than in the nftables package: v0.3.0
// drops socket expressions when it reads rules back, which would hide exactly the cgroup matches these rules are about.
func listRules(table, chain string) ([]seenRule, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		// nfgenmsg: family, version, resource id.
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	rules := make([]seenRule, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			return nil, fmt.Errorf("rule message of %d bytes", len(m.Data))
		}
		r, err := parseRule(m.Data[4:])
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func parseRule(b []byte) (seenRule, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return seenRule{}, err
	}
	ad.ByteOrder = binary.BigEndian
	var (
		comment, unknown string
		handle           uint64
		exprs            []expr.Any
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_HANDLE:
			handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			comment, _ = userdata.GetString(ad.Bytes(), userdata.TypeComment)
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(elem *netlink.AttributeDecoder) error {
						e, name, err := parseExpr(elem)
						switch {
						case err != nil:
							return err
						case e == nil:
							unknown = name
						default:
							exprs = append(exprs, e)
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return seenRule{}, err
	}
	if unknown != "" {
		return seenRule{key: fmt.Sprintf("rule %d with a %s expression", handle, unknown)}, nil
	}
	key, err := ruleKey(comment, exprs)
	if err != nil {
		return seenRule{key: fmt.Sprintf("rule %d: %v", handle, err)}, nil
	}
	return seenRule{key: key, exprs: exprs}, nil
}

// parseExpr reads one expression of a rule. An expression of a kind these rules never use comes back nil, with its
// name: the rule cannot be one of ours.
func parseExpr(ad *netlink.AttributeDecoder) (expr.Any, string, error) {
	var (
		name string
		data []byte
	)
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "payload":
		e = &expr.Payload{}
	case "socket":
		e = &expr.Socket{}
	case "counter":
		e = &expr.Counter{}
	case "immediate":
		e = &expr.Immediate{}
	case "nat":
		e = &expr.NAT{}
	case "reject":
		e = &expr.Reject{}
	default:
		return nil, name, nil
	}
	if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
		return nil, name, fmt.Errorf("parse %s expression: %w", name, err)
	}
	// A verdict is an immediate that writes the verdict register.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		e = &expr.Verdict{}
		if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
			return nil, name, fmt.Errorf("parse verdict: %w", err)
		}
	}
	return e, name, nil
}

// exemptionOf says whether r is the exemption rule build writes, and for which cgroup.
func exemptionOf(r seenRule) (CgroupRef, bool) {
	if len(r.exprs) < 2 {
		return CgroupRef{}, false
	}
	s, ok1 := r.exprs[0].(*expr.Socket)
	c, ok2 := r.exprs[1].(*expr.Cmp)
	if !ok1 || !ok2 || s.Key != expr.SocketKeyCgroupv2 || len(c.Data) != 8 {
		return CgroupRef{}, false
	}
	ref := CgroupRef{Level: s.Level, ID: binary.NativeEndian.Uint64(c.Data)}
	want := exemptRule(ref)
	key, err := ruleKey(want.comment, want.exprs)
	return ref, err == nil && key == r.key
}

// hostDrift compares the kernel's table with want and says how many tables, chains and rules a rewrite adds,
// replaces or removes, and why, for the log. Rules are compared by ruleKey, as multisets and then by order, so that
// a new exemption counts as one rule per chain rather than as every rule after it.
func hostDrift(want []hostChain, have hostTableState) (int, []string, error) {
	if have.table == nil {
		n := 1
		for _, c := range want {
			n += 1 + len(c.rules)
		}
		return n, []string{"table missing"}, nil
	}
	var (
		n   int
		why []string
	)
	if have.table.Flags != 0 { // dormant, say: its chains would hook nothing
		n++
		why = append(why, fmt.Sprintf("table flags %#x", have.table.Flags))
	}
	for _, c := range want {
		name := c.chain.Name
		got, ok := have.chains[name]
		switch {
		case !ok:
			n += 1 + len(c.rules)
			why = append(why, "chain "+name+" missing")
			continue
		case !sameChain(got, c.chain):
			n += 1 + len(c.rules)
			why = append(why, "chain "+name+" has another type, hook, priority or policy")
			continue
		}
		wantKeys := make([]string, len(c.rules))
		for i, r := range c.rules {
			k, err := ruleKey(r.comment, r.exprs)
			if err != nil {
				return 0, nil, fmt.Errorf("marshal rule %q: %w", r.comment, err)
			}
			wantKeys[i] = k
		}
		haveKeys := make([]string, len(have.rules[name]))
		for i, r := range have.rules[name] {
			haveKeys[i] = r.key
		}
		missing, extra := multisetDiff(wantKeys, haveKeys)
		switch {
		case missing+extra > 0:
			n += missing + extra
			why = append(why, fmt.Sprintf("chain %s: %d rules missing, %d unexpected", name, missing, extra))
		case !slices.Equal(wantKeys, haveKeys):
			n++
			why = append(why, "chain "+name+": rules out of order")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(have.chains)) {
		if !slices.ContainsFunc(want, func(c hostChain) bool { return c.chain.Name == name }) {
			n += 1 + len(have.rules[name])
			why = append(why, "unexpected chain "+name)
		}
	}
	return n, why, nil
}

// multisetDiff counts the elements of want that have no counterpart in have, and those of have that have none in want.
func multisetDiff(want, have []string) (missing, extra int) {
	count := map[string]int{}
	for _, k := range have {
		count[k]++
	}
	for _, k := range want {
		if count[k] > 0 {
			count[k]--
		} else {
			missing++
		}
	}
	for _, c := range count {
		extra += c
	}
	return missing, extra
}

func sameChain(a, b *nft.Chain) bool {
	return a.Type == b.Type && eqPtr(a.Hooknum, b.Hooknum) && eqPtr(a.Priority, b.Priority) && eqPtr(a.Policy, b.Policy)
}

func eqPtr[T comparable](a, b *T) bool {
	return a == b || a != nil && b != nil && *a == *b
}

// Watch signals, at most one signal pending, whenever the kernel reports a deletion in the host table: another
// program's flush, `nft flush ruleset` among them, so that the caller's next pass runs at once rather than at its
// next tick (for hostNetwork pods, the routing guard does not cover, that is the whole gap). The channel closes when
// the kernel's notifications stop (a full socket buffer): the caller is left with its ticks.
func (h *HostRules) Watch(ctx context.Context) (<-chan struct{}, error) {
	conn, err := nft.New()
	if err != nil {
		return nil, fmt.Errorf("nftables notifications: %w", err)
	}
	// Every kind of message: the library hands events over only at the end of each batch (NEWGEN), which a monitor of
	// deletions alone would filter out. Deletions are picked out below.
	mon := nft.NewMonitor(nft.WithMonitorAction(nft.MonitorActionAny), nft.WithMonitorObject(nft.MonitorObjectAny),
		nft.WithMonitorEventBuffer(64))
	events, err := conn.AddMonitor(mon)
	if err != nil {
		return nil, fmt.Errorf("nftables notifications: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		_ = mon.Close()
	}()
	go func() {
		defer close(out)
		for ev := range events {
			if ev.Type == nft.MonitorEventTypeOOB {
				return
			}
			deletion := ev.Type == nft.MonitorEventTypeDelTable || ev.Type == nft.MonitorEventTypeDelChain ||
				ev.Type == nft.MonitorEventTypeDelRule
			if deletion && inHostTable(ev.Data) {
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

// inHostTable tells whether a deleted object (a table, chain or rule) was in the host table.
func inHostTable(obj any) bool {
	var t *nft.Table
	switch o := obj.(type) {
	case *nft.Table:
		t = o
	case *nft.Chain:
		t = o.Table
	case *nft.Rule:
		t = o.Table
	}
	return t != nil && t.Name == hostTableName
}
