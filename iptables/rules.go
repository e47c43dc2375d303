package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

const (
	natChain   = "IAMLET-IMDS"
	guardChain = "IAMLET-GUARD"
)

// The addresses SDKs call, which the rules intercept: the IMDS and the container credentials endpoint.
var (
	IMDSv4      = netip.MustParseAddr("169.254.169.254")
	IMDSv6      = netip.MustParseAddr("fd00:ec2::254")
	ContainerV4 = netip.MustParseAddr("169.254.170.23")
	ContainerV6 = netip.MustParseAddr("fd00:ec2::23")
)

// chain is one chain iamlet owns in one family: its rules in order, and the built-in chains that must jump to it
// before any other rule there gets a say.
type chain struct {
	table, name string
	hooks       []string
	jump        []string
	rules       [][]string
}

// buildChains is the one place rule arguments are made. Ensure, Check and Remove all work from its result, so what is
// installed, what is checked and what is removed cannot drift apart.
//
// The guard chain comes first so that on a fresh install the reject is in place before the redirect: in between,
// pods are refused rather than served by the node's IMDS. Because DNAT happens in PREROUTING, redirected packets no
// longer carry the metadata address when they reach INPUT or FORWARD, so the guard only ever sees what was not
// redirected. A family without a metadata target (no listener of that family) still gets its guard: pods are
// refused there, never sent to the node's IMDS.
//
// No rule names an interface. PREROUTING never sees host-originated traffic, so a rule there without -i is "every
// packet from a pod", whatever the CNI calls its interfaces: a bridge CNI's pod traffic enters on the bridge, not
// on the veth `ip link` shows; the AWS VPC CNI's security groups for pods use vlan* interfaces beside eni*. A
// pattern could only ever miss some; the guard, too, takes everything but the host talking to itself over lo.
func buildChains(v6 bool, metadata, container netip.AddrPort) []chain {
	type face struct {
		name   string
		dst    string
		target netip.AddrPort // zero: guarded, not redirected
	}
	imds, cont := imdsOf(v6), ContainerV4
	if v6 {
		cont = ContainerV6
	}
	faces := []face{{"imds", netip.PrefixFrom(imds, imds.BitLen()).String(), metadata}}
	if container.IsValid() {
		faces = append(faces, face{"container", netip.PrefixFrom(cont, cont.BitLen()).String(), container})
	}

	guard := chain{table: "filter", name: guardChain, hooks: []string{"INPUT", "FORWARD"}, jump: jumpArgs(guardChain)}
	nat := chain{table: "nat", name: natChain, hooks: []string{"PREROUTING"}, jump: jumpArgs(natChain)}
	for _, fc := range faces {
		// TCP gets a reset so clients fail at once instead of timing out; anything else gets the default ICMP.
		guard.rules = append(guard.rules,
			slices.Concat([]string{"!", "-i", "lo", "-d", fc.dst, "-p", "tcp"}, comment(fc.name+" reject-tcp all"),
				[]string{"-j", "REJECT", "--reject-with", "tcp-reset"}),
			slices.Concat([]string{"!", "-i", "lo", "-d", fc.dst}, comment(fc.name+" reject all"), []string{"-j", "REJECT"}))
		if fc.target.IsValid() {
			nat.rules = append(nat.rules, slices.Concat(
				[]string{"-d", fc.dst, "-p", "tcp", "--dport", "80"},
				comment(fc.name+" dnat all"),
				[]string{"-j", "DNAT", "--to-destination", fc.target.String()}))
		}
	}
	// A family without a metadata target keeps an empty nat chain, so a previous run's redirect there is
	// replaced, not left pointing at a port nothing listens on, and uninstall finds the same chains everywhere.
	return []chain{guard, nat}
}

func jumpArgs(target string) []string {
	return slices.Concat(comment("jump to "+target), []string{"-j", target})
}

// comment tags every rule so that an operator reading iptables-save knows whose it is, and so that inspection can
// match rules by name regardless of how iptables normalises the rest of the arguments.
func comment(text string) []string {
	return []string{"-m", "comment", "--comment", "iamlet: " + text}
}

// fix is one problem found by inspect and the change that repairs it.
type fix struct {
	desc  string
	apply func() error
}

// inspect compares the family's rules with what buildChains wants. Check reports its findings and Ensure applies
// them, which keeps the two in agreement. It reads the tables once (read), so a pass that finds everything in place
// runs only the processes of that read; each pass reads afresh, so the one after a repair sees what the repair did.
func (f *family) inspect(ctx context.Context) ([]fix, error) {
	snap, err := f.read(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", f.name, err)
	}
	var fixes []fix
	for _, c := range f.chains {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		why, err := f.chainProblem(snap, c)
		if err != nil {
			return nil, fmt.Errorf("inspect %s chain %s/%s: %w", f.name, c.table, c.name, err)
		}
		if why != "" {
			fixes = append(fixes, fix{
				desc:  fmt.Sprintf("%s %s/%s: %s", f.name, c.table, c.name, why),
				apply: func() error { return f.writeChain(c) },
			})
		}
		for _, hook := range c.hooks {
			why, jumps, err := f.jumpProblem(snap, c, hook)
			if err != nil {
				return nil, fmt.Errorf("inspect %s jump %s/%s -> %s: %w", f.name, c.table, hook, c.name, err)
			}
			if why != "" {
				fixes = append(fixes, fix{
					desc:  fmt.Sprintf("%s %s/%s: %s", f.name, c.table, hook, why),
					apply: func() error { return f.placeJump(c, hook, jumps) },
				})
			}
		}
	}
	if f.routes == nil {
		return fixes, nil
	}
	missing, err := f.routes.missing()
	if err != nil {
		return nil, fmt.Errorf("inspect %s routing guard: %w", f.name, err)
	}
	for _, r := range missing {
		fixes = append(fixes, fix{
			desc:  fmt.Sprintf("%s routing rule %s: missing", f.name, r),
			apply: func() error { return f.routes.repair(r) },
		})
	}
	return fixes, nil
}

// chainProblem says what is wrong with the content of one of our chains, or "" if nothing is.
func (f *family) chainProblem(snap snapshot, c chain) (string, error) {
	ok, err := snap.chainExists(c.table, c.name)
	if err != nil {
		return "", err
	}
	if !ok {
		return "chain missing", nil
	}
	have, err := snap.rules(c.table, c.name)
	if err != nil {
		return "", err
	}
	if len(have) != len(c.rules) {
		return fmt.Sprintf("%d rules, want %d", len(have), len(c.rules)), nil
	}
	for i, want := range c.rules {
		// The comment tells which rule sits where; whether it is the rule we want is for matches to judge.
		if got := commentOf(have[i]); got != commentOf(want) {
			return fmt.Sprintf("rule %d is %q, want %q", i+1, got, commentOf(want)), nil
		}
		ok, err := f.matches(c.table, c.name, have[i], want)
		if err != nil {
			return "", err
		}
		if !ok {
			return fmt.Sprintf("rule %q differs", commentOf(want)), nil
		}
	}
	return "", nil
}

// jumpProblem says what is wrong with the jump from hook to c, or "" if nothing is, along with every rule in hook
// that currently jumps to c (which a repair must delete first).
func (f *family) jumpProblem(snap snapshot, c chain, hook string) (string, [][]string, error) {
	jumps, first, err := jumpsTo(snap, c.table, hook, c.name)
	switch {
	case err != nil:
		return "", nil, err
	case len(jumps) == 0:
		return "jump to " + c.name + " missing", nil, nil
	case first != 0:
		return fmt.Sprintf("jump to %s at position %d, want 1", c.name, first+1), jumps, nil
	case len(jumps) > 1:
		return fmt.Sprintf("%d jumps to %s, want 1", len(jumps), c.name), jumps, nil
	}
	ok, err := f.matches(c.table, hook, jumps[0], c.jump)
	if err != nil || ok {
		return "", nil, err
	}
	return "jump to " + c.name + " differs", jumps, nil
}

// jumpsTo returns every rule in table/hook that jumps (-j) or goes (-g) to target, and the position of the first
// one counting from 0, or -1.
func jumpsTo(snap snapshot, table, hook, target string) ([][]string, int, error) {
	rules, err := snap.rules(table, hook)
	if err != nil {
		return nil, -1, err
	}
	first := -1
	var jumps [][]string
	for i, args := range rules {
		if optionValue(args, "-j", "-g") == target {
			if first < 0 {
				first = i
			}
			jumps = append(jumps, args)
		}
	}
	return jumps, first, nil
}

// matches reports whether the rule listed as have is the rule want. Neither test suffices alone: the listing is
// normalised by iptables (option order, implicit -m tcp, default --reject-with), so only -C judges it semantically,
// but ip6tables-legacy 1.8.9's -C ignores the port of a DNAT target and would pass a rule a previous run left with
// another listener port. So -C must agree, and every option value we set must also appear as listed.
//
// A rule listed exactly as iptables lists want is want, and needs no -C: the listing is iptables' own account of the
// rule, what iptables-save writes and iptables-restore reads back, so it hides nothing -C would compare. That is
// every rule of a pass that finds everything in place, which then runs no process beyond its read. Any other
// listing, one iptables normalises in a way listedForm does not know included, still goes to -C.
func (f *family) matches(table, chain string, have, want []string) (bool, error) {
	for i := 0; i+1 < len(want); i++ {
		flag, value := want[i], want[i+1]
		if strings.HasPrefix(flag, "-") && !strings.HasPrefix(value, "-") && !hasPair(have, flag, value) {
			return false, nil
		}
	}
	if slices.Equal(listedForm(have, f.v6), listedForm(want, f.v6)) {
		return true, nil
	}
	return f.ipt.Exists(table, chain, want...)
}

// listedForm rewrites a rule the way iptables lists it. Each rewrite leaves the rule the same rule: the header
// options (addresses, interfaces, protocol, fragment) are fields of one header and iptables lists them in a fixed
// order whatever order they were given in; a port option right after -p tcp or -p udp loads that protocol's match
// as -m would, and it is listed as -m; REJECT without --reject-with answers with the family's port unreachable, and
// is listed with it. A listing is already in this form, so it comes back unchanged.
func listedForm(args []string, v6 bool) []string {
	order := []string{"-s", "-d", "-i", "-o", "-p", "-f"}
	rank := func(g []string) int { return slices.Index(order, optionName(g)) }
	groups := optionGroups(args)
	n := 0
	for n < len(groups) && rank(groups[n]) >= 0 {
		n++
	}
	head, rest := slices.Clone(groups[:n]), slices.Clone(groups[n:])
	slices.SortStableFunc(head, func(a, b []string) int { return rank(a) - rank(b) })

	proto := ""
	if i := slices.IndexFunc(head, func(g []string) bool { return g[0] == "-p" && len(g) == 2 }); i >= 0 {
		proto = head[i][1]
	}
	if (proto == "tcp" || proto == "udp") && len(rest) > 0 && slices.Contains([]string{"--dport", "--sport"}, rest[0][0]) {
		rest = slices.Insert(rest, 0, []string{"-m", proto})
	}
	if len(rest) > 0 && slices.Equal(rest[len(rest)-1], []string{"-j", "REJECT"}) {
		reject := "icmp-port-unreachable"
		if v6 {
			reject = "icmp6-port-unreachable"
		}
		rest = append(rest, []string{"--reject-with", reject})
	}
	return slices.Concat(slices.Concat(head...), slices.Concat(rest...))
}

// optionGroups splits a rule's arguments into options, each with its values and the "!" that negates it.
func optionGroups(args []string) [][]string {
	var groups [][]string
	for _, a := range args {
		last := len(groups) - 1
		isFlag := len(a) > 1 && strings.HasPrefix(a, "-")
		switch {
		case last < 0, a == "!", isFlag && !slices.Equal(groups[last], []string{"!"}):
			groups = append(groups, []string{a})
		default:
			groups[last] = append(groups[last], a)
		}
	}
	return groups
}

// optionName is the option a group from optionGroups sets, past its "!".
func optionName(group []string) string {
	if len(group) > 1 && group[0] == "!" {
		return group[1]
	}
	return group[0]
}

func hasPair(args []string, name, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name && args[i+1] == value {
			return true
		}
	}
	return false
}

// writeChain replaces the chain's content wholesale, which is how a chain left by an earlier run (another listener
// port, other interfaces) is taken over without duplicates piling up beside stale rules. While one chain is being
// rewritten the other still holds: the guard refuses what the redirect misses, and redirected traffic never meets
// the guard.
func (f *family) writeChain(c chain) error {
	if err := f.ipt.ClearChain(c.table, c.name); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	for _, args := range c.rules {
		if err := f.ipt.Append(c.table, c.name, args...); err != nil {
			return fmt.Errorf("append %q: %w", commentOf(args), err)
		}
	}
	return nil
}

// placeJump makes the jump to c the first rule of hook. Stale jumps go first: deleting by rulespec removes the first
// match, which after the insert would be the fresh jump itself.
func (f *family) placeJump(c chain, hook string, stale [][]string) error {
	if err := f.deleteRules(c.table, hook, stale); err != nil {
		return err
	}
	if err := f.ipt.Insert(c.table, hook, 1, c.jump...); err != nil {
		return fmt.Errorf("insert jump: %w", err)
	}
	return nil
}

// deleteRules deletes rules (as listed) from table/chain; one already gone is fine.
func (f *family) deleteRules(table, chain string, rules [][]string) error {
	for _, args := range rules {
		if err := f.ipt.Delete(table, chain, args...); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete %q: %w", strings.Join(args, " "), err)
		}
	}
	return nil
}

// remove takes the family's rules away in the reverse order of installation, redirect before guard. Any rule that
// jumps to our chains goes, not only the one we would write, since the kernel refuses to delete a chain that
// something still references.
func (f *family) remove(ctx context.Context, routes bool) error {
	// One read serves the whole removal: each step changes only what later steps no longer ask about.
	snap, err := f.read(ctx)
	if err != nil {
		return fmt.Errorf("remove %s: %w", f.name, err)
	}
	for _, c := range slices.Backward(f.chains) {
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, hook := range c.hooks {
			jumps, _, err := jumpsTo(snap, c.table, hook, c.name)
			if err == nil {
				err = f.deleteRules(c.table, hook, jumps)
			}
			if err != nil {
				return fmt.Errorf("remove %s jumps %s/%s -> %s: %w", f.name, c.table, hook, c.name, err)
			}
		}
		ok, err := snap.chainExists(c.table, c.name)
		if err != nil {
			return fmt.Errorf("remove %s chain %s/%s: %w", f.name, c.table, c.name, err)
		}
		if !ok {
			continue
		}
		if err := f.ipt.ClearChain(c.table, c.name); err != nil && !isNotExist(err) {
			return fmt.Errorf("flush %s chain %s/%s: %w", f.name, c.table, c.name, err)
		}
		if err := f.ipt.DeleteChain(c.table, c.name); err != nil && !isNotExist(err) {
			return fmt.Errorf("delete %s chain %s/%s: %w", f.name, c.table, c.name, err)
		}
	}
	// The routing guard last: pods stay refused until everything else is gone.
	if routes && f.routes != nil {
		if err := f.routes.remove(); err != nil {
			return fmt.Errorf("remove %s routing guard: %w", f.name, err)
		}
	}
	return nil
}

// snapshot is one read of a family's tables: table -> chain -> the arguments of each rule, in -S form without
// "-A CHAIN". A table iptables-nft cannot list (the nft tool put something there it cannot express) maps to nil.
type snapshot map[string]map[string][][]string

// read takes a snapshot of what a pass looks at. Legacy iptables reads it with one save of every table: a plain save
// lists the tables that exist and creates none (naming one with -t would make legacy iptables create it), and a table
// that does not exist holds none of our rules. iptables-nft reads the whole ruleset for a save, even with -t, which
// takes it a hundred milliseconds and more beside kube-proxy's thousands of nat rules, while it lists one chain in a
// few milliseconds whatever else the table holds (and 1.8.9 creates nothing to list one). So with nft each chain a
// pass looks at is listed on its own (watchedChains): a few processes whose cost does not grow with other programs'
// rules. Legacy iptables gains nothing from that: listing one chain reads and decodes the whole table all the same.
func (f *family) read(ctx context.Context) (snapshot, error) {
	if f.byChain {
		return f.readByChain(ctx)
	}
	out, err := f.ipt.Save(ctx)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	snap, err := parseSave(out)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	return snap, nil
}

// readByChain builds the snapshot read would from a save out of one listing per chain. A chain that does not exist
// is left out of it, as a save leaves it out. iptables-nft 1.8.9 answers the listing of a missing chain with the
// error it gives for one it cannot express: for one of our chains that reads as missing, and the repair flushes and
// rewrites it either way; for a built-in chain, which iptables-nft lists even when absent, it is the table the nft
// tool put something in, and a question about that table is an error, as with a save.
func (f *family) readByChain(ctx context.Context) (snapshot, error) {
	// Every listing at once (they only read): one after the other, at start-up their times would add up.
	watched := f.watchedChains()
	listed := atOnce(watched, func(w watchedChain) ran {
		out, err := f.ipt.ListChain(ctx, w.table, w.chain)
		return ran{out, err}
	})
	snap := snapshot{}
	for i, w := range watched {
		if chains, ok := snap[w.table]; ok && chains == nil {
			continue // already known to be a table iptables cannot express
		}
		out, err := listed[i].out, listed[i].err
		switch {
		case err == nil:
		case isNotExist(err), isIncompatible(err) && w.ours:
			continue
		case isIncompatible(err):
			snap[w.table] = nil
			continue
		default:
			return nil, fmt.Errorf("read rules: %w", err)
		}
		rules, err := parseList(out, w.chain)
		if err != nil {
			return nil, fmt.Errorf("read rules: %w", err)
		}
		if snap[w.table] == nil {
			snap[w.table] = map[string][][]string{}
		}
		snap[w.table][w.chain] = rules
	}
	return snap, nil
}

// watchedChain is a chain that inspect or remove looks at: one of ours, or a built-in one that jumps to one of ours.
type watchedChain struct {
	table, chain string
	ours         bool
}

// watchedChains lists, from the family's chain definitions, every chain inspect and remove look at, once each.
func (f *family) watchedChains() []watchedChain {
	var out []watchedChain
	add := func(w watchedChain) {
		if !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	for _, c := range f.chains {
		add(watchedChain{c.table, c.name, true})
		for _, hook := range c.hooks {
			add(watchedChain{c.table, hook, false})
		}
	}
	return out
}

// parseSave parses iptables-save output.
func parseSave(out []byte) (snapshot, error) {
	snap := snapshot{}
	var chains map[string][][]string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "*"):
			chains = map[string][][]string{}
			snap[line[1:]] = chains
		case strings.HasPrefix(line, "# Table `") && strings.HasSuffix(line, "' is incompatible, use 'nft' tool."):
			// iptables-nft says so instead of listing the table.
			snap[strings.TrimSuffix(strings.TrimPrefix(line, "# Table `"), "' is incompatible, use 'nft' tool.")] = nil
		case line == "", line == "COMMIT", strings.HasPrefix(line, "#"):
		case chains == nil:
			return nil, fmt.Errorf("iptables-save line %q outside a table", line)
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			chains[name] = nil
		case strings.HasPrefix(line, "-A "):
			chain, args, err := parseAppend(line)
			if err != nil {
				return nil, fmt.Errorf("iptables-save %w", err)
			}
			if _, ok := chains[chain]; !ok {
				return nil, fmt.Errorf("iptables-save line %q: chain %s not declared", line, chain)
			}
			chains[chain] = append(chains[chain], args)
		default:
			return nil, fmt.Errorf("unexpected iptables-save line %q", line)
		}
	}
	return snap, nil
}

// parseList parses the iptables -S listing of chain: its policy (built-in) or declaration (ours), then its rules.
func parseList(out []byte, chain string) ([][]string, error) {
	var rules [][]string
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "", strings.HasPrefix(line, "#"), line == "-N "+chain, strings.HasPrefix(line, "-P "+chain+" "):
		case strings.HasPrefix(line, "-A "):
			in, args, err := parseAppend(line)
			if err != nil {
				return nil, fmt.Errorf("iptables -S %w", err)
			}
			if in != chain {
				return nil, fmt.Errorf("iptables -S %s line %q: a rule of another chain", chain, line)
			}
			rules = append(rules, args)
		default:
			return nil, fmt.Errorf("unexpected iptables -S %s line %q", chain, line)
		}
	}
	return rules, nil
}

// parseAppend splits a line "-A CHAIN args" into the chain and the rule's arguments.
func parseAppend(line string) (string, []string, error) {
	args := splitRule(line)
	if len(args) < 3 {
		return "", nil, fmt.Errorf("line %q: no rule", line)
	}
	return args[1], args[2:], nil
}

func (s snapshot) table(name string) (map[string][][]string, error) {
	chains, listed := s[name]
	if listed && chains == nil {
		return nil, fmt.Errorf("table %s holds rules iptables cannot express (list it with nft)", name)
	}
	return chains, nil
}

func (s snapshot) chainExists(table, chain string) (bool, error) {
	chains, err := s.table(table)
	_, ok := chains[chain]
	return ok, err
}

// rules returns the rules of table/chain. A chain the snapshot lacks has none: a built-in chain there is one of a
// table nothing has used yet, which the first rule written to it creates.
func (s snapshot) rules(table, chain string) ([][]string, error) {
	chains, err := s.table(table)
	return chains[chain], err
}

// splitRule splits one line of iptables -S or iptables-save output into arguments, undoing the double quotes (with
// backslash escapes) iptables puts around values such as comments with spaces. The result can be handed back to
// iptables -D.
func splitRule(line string) []string {
	var (
		args          []string
		cur           strings.Builder
		inArg, quoted bool
	)
	for i := 0; i < len(line); i++ {
		switch ch := line[i]; {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			quoted, inArg = !quoted, true
		case ch == ' ' && !quoted:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(ch)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

func commentOf(args []string) string { return optionValue(args, "--comment") }

func optionValue(args []string, names ...string) string {
	for i := 0; i+1 < len(args); i++ {
		if slices.Contains(names, args[i]) {
			return args[i+1]
		}
	}
	return ""
}

// isIncompatible reports whether err says iptables-nft cannot express what the chain listed holds.
func isIncompatible(err error) bool {
	var e interface{ IsIncompatible() bool }
	return errors.As(err, &e) && e.IsIncompatible()
}

// isNotExist reports whether err says the rule or chain was not there, which removal treats as success.
func isNotExist(err error) bool {
	var e interface{ IsNotExist() bool }
	return errors.As(err, &e) && e.IsNotExist()
}
