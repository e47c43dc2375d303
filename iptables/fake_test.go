package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// fakeIPT is an in-memory iptables for one family, strict where the real one is strict: rules go only into chains that
// exist, jumps only to chains that exist, and a chain is deleted only when empty and unreferenced.
type fakeIPT struct {
	mu       sync.Mutex
	builtins map[string][]string              // table -> built-in chains, in listing order
	chains   map[string]map[string][][]string // table -> chain -> rules
	order    map[string][]string              // table -> user chains in creation order, for stable dumps
	failOn   string                           // an operation name ("Append", ...) that fails, to test error paths
	calls    []string                         // the operations run, in order, for tests that count them
	// sloppyCheck makes Exists ignore a rule's last argument, as ip6tables-legacy 1.8.9's -C ignores a DNAT port.
	sloppyCheck bool
	// missingIncompatible makes ListChain answer for a missing chain as iptables-nft 1.8.9 does: "incompatible".
	missingIncompatible bool
	// incompatible is a "table/chain" the nft tool put something in that iptables cannot express.
	incompatible string
}

// fakeErr mimics go-iptables' *Error closely enough for isNotExist.
type fakeErr struct {
	msg                    string
	notExist, incompatible bool
}

func (e *fakeErr) Error() string        { return e.msg }
func (e *fakeErr) IsNotExist() bool     { return e.notExist }
func (e *fakeErr) IsIncompatible() bool { return e.incompatible }

func newFake() *fakeIPT {
	f := &fakeIPT{
		builtins: map[string][]string{
			"filter": {"INPUT", "FORWARD", "OUTPUT"},
			"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
		},
		chains: map[string]map[string][][]string{},
		order:  map[string][]string{},
	}
	for table, names := range f.builtins {
		f.chains[table] = map[string][][]string{}
		for _, n := range names {
			f.chains[table][n] = nil
		}
	}
	return f
}

// fail records a call of op, with args if given, and makes it fail if the test asked for that.
func (f *fakeIPT) fail(op string, args ...string) error {
	f.calls = append(f.calls, strings.Join(append([]string{op}, args...), " "))
	if f.failOn == op {
		return &fakeErr{msg: "fake " + op + " failure"}
	}
	return nil
}

func (f *fakeIPT) hasChain(table, chain string) bool {
	_, ok := f.chains[table][chain]
	return ok
}

func (f *fakeIPT) isBuiltin(table, chain string) bool {
	return slices.Contains(f.builtins[table], chain)
}

// checkRule refuses what iptables would: a missing chain, or a jump to a chain that does not exist.
func (f *fakeIPT) checkRule(table, chain string, spec []string) error {
	if !f.hasChain(table, chain) {
		return &fakeErr{msg: "No chain/target/match by that name.", notExist: true}
	}
	switch t := optionValue(spec, "-j", "-g"); t {
	case "", "DNAT", "REJECT", "RETURN", "ACCEPT", "DROP":
	default:
		if !f.hasChain(table, t) {
			return &fakeErr{msg: fmt.Sprintf("jump to missing chain %s", t), notExist: true}
		}
	}
	return nil
}

func (f *fakeIPT) index(table, chain string, spec []string) int {
	return slices.IndexFunc(f.chains[table][chain], func(r []string) bool { return slices.Equal(r, spec) })
}

func (f *fakeIPT) sloppyIndex(table, chain string, spec []string) int {
	return slices.IndexFunc(f.chains[table][chain], func(r []string) bool {
		return len(r) == len(spec) && slices.Equal(r[:len(r)-1], spec[:len(spec)-1])
	})
}

func (f *fakeIPT) Exists(table, chain string, spec ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Exists"); err != nil {
		return false, err
	}
	if f.sloppyCheck {
		return f.sloppyIndex(table, chain, spec) >= 0, nil
	}
	return f.index(table, chain, spec) >= 0, nil
}

func (f *fakeIPT) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Insert"); err != nil {
		return err
	}
	if err := f.checkRule(table, chain, spec); err != nil {
		return err
	}
	rules := f.chains[table][chain]
	if pos < 1 || pos > len(rules)+1 {
		return &fakeErr{msg: "Index of insertion too big."}
	}
	f.chains[table][chain] = slices.Insert(rules, pos-1, slices.Clone(spec))
	return nil
}

func (f *fakeIPT) Append(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Append"); err != nil {
		return err
	}
	if err := f.checkRule(table, chain, spec); err != nil {
		return err
	}
	f.chains[table][chain] = append(f.chains[table][chain], slices.Clone(spec))
	return nil
}

func (f *fakeIPT) Delete(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Delete"); err != nil {
		return err
	}
	i := f.index(table, chain, spec)
	if i < 0 {
		return &fakeErr{msg: "Bad rule (does a matching rule exist in that chain?).", notExist: true}
	}
	f.chains[table][chain] = slices.Delete(f.chains[table][chain], i, i+1)
	return nil
}

// Save writes the tables out as iptables-save does: per table, the chains declared, then their rules.
func (f *fakeIPT) Save(context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("Save"); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("# Generated by the fake\n")
	for _, table := range []string{"filter", "nat"} {
		if strings.HasPrefix(f.incompatible, table+"/") {
			fmt.Fprintf(&b, "# Table `%s' is incompatible, use 'nft' tool.\n", table)
			continue
		}
		chains := slices.Concat(f.builtins[table], f.order[table])
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range chains {
			policy := "-"
			if f.isBuiltin(table, c) {
				policy = "ACCEPT"
			}
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
		}
		for _, c := range chains {
			for _, r := range f.chains[table][c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, render(r))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return []byte(b.String()), nil
}

// ListChain lists one chain as iptables-nft -S does: its policy or declaration, then its rules.
func (f *fakeIPT) ListChain(_ context.Context, table, chain string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("ListChain", table, chain); err != nil {
		return nil, err
	}
	incompatible := &fakeErr{msg: fmt.Sprintf("chain `%s' in table `%s' is incompatible, use 'nft' tool.", chain, table), incompatible: true}
	switch {
	case f.incompatible == table+"/"+chain:
		return nil, incompatible
	case !f.hasChain(table, chain) && f.missingIncompatible:
		return nil, incompatible
	case !f.hasChain(table, chain):
		return nil, &fakeErr{msg: "No chain/target/match by that name.", notExist: true}
	}
	var b strings.Builder
	if f.isBuiltin(table, chain) {
		fmt.Fprintf(&b, "-P %s ACCEPT\n", chain)
	} else {
		fmt.Fprintf(&b, "-N %s\n", chain)
	}
	for _, r := range f.chains[table][chain] {
		fmt.Fprintf(&b, "-A %s %s\n", chain, render(r))
	}
	return []byte(b.String()), nil
}

// takeCalls returns the operations run since the last takeCalls.
func (f *fakeIPT) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	calls := f.calls
	f.calls = nil
	return calls
}

func (f *fakeIPT) ClearChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("ClearChain"); err != nil {
		return err
	}
	if !f.hasChain(table, chain) {
		f.order[table] = append(f.order[table], chain)
	}
	f.chains[table][chain] = nil
	return nil
}

func (f *fakeIPT) DeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("DeleteChain"); err != nil {
		return err
	}
	switch {
	case !f.hasChain(table, chain):
		return &fakeErr{msg: "No chain/target/match by that name.", notExist: true}
	case f.isBuiltin(table, chain), len(f.chains[table][chain]) > 0:
		return &fakeErr{msg: "Directory not empty"}
	}
	for _, rules := range f.chains[table] {
		for _, r := range rules {
			if optionValue(r, "-j", "-g") == chain {
				return &fakeErr{msg: "Too many links"}
			}
		}
	}
	delete(f.chains[table], chain)
	f.order[table] = slices.DeleteFunc(f.order[table], func(c string) bool { return c == chain })
	return nil
}

// flushTable is what `iptables -t TABLE -F` does to the fake: every chain emptied, user chains kept.
func (f *fakeIPT) flushTable(table string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.chains[table] {
		f.chains[table][c] = nil
	}
}

// dump lists every rule as "table -A CHAIN args", tables and built-ins in a fixed order, like iptables-save.
func (f *fakeIPT) dump() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, table := range []string{"filter", "nat"} {
		for _, c := range slices.Concat(f.builtins[table], f.order[table]) {
			for _, r := range f.chains[table][c] {
				out = append(out, table+" -A "+c+" "+render(r))
			}
		}
	}
	return out
}

// userChains lists the user-defined chains, as "table/CHAIN".
func (f *fakeIPT) userChains() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, table := range []string{"filter", "nat"} {
		for _, c := range f.order[table] {
			out = append(out, table+"/"+c)
		}
	}
	return out
}

// render quotes arguments the way iptables -S does, so splitRule is exercised on the fake's listings too.
func render(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \"\\") || a == "" {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
