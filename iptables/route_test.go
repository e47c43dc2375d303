package iptables

import (
	"slices"
	"testing"
)

// fakeRoutes is a routeTable in memory that records what is done to it.
type fakeRoutes struct {
	rules []routeRule
	ops   []string
}

func (f *fakeRoutes) List() ([]routeRule, error) { return slices.Clone(f.rules), nil }
func (f *fakeRoutes) Add(r routeRule) error {
	f.rules = append(f.rules, r)
	f.ops = append(f.ops, "add "+r.String())
	return nil
}
func (f *fakeRoutes) Del(r routeRule) error {
	if i := slices.Index(f.rules, r); i >= 0 {
		f.rules = slices.Delete(f.rules, i, i+1)
		f.ops = append(f.ops, "del "+r.String())
	}
	return nil // one already gone is no error, as over netlink
}

func TestRouteGuardOrder(t *testing.T) {
	table := &fakeRoutes{}
	g := &routeGuard{table: table, want: routeGuardRules(IMDSv4)}
	add := func() {
		missing, err := g.missing()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range missing {
			if err := g.repair(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The goto's target before the goto, and the refusal last: the node's own traffic is never refused on the way.
	add()
	diffLines(t, "fresh install", table.ops, []string{
		"add pref 7 to 169.254.169.254/32 nop",
		"add pref 5 to 169.254.169.254/32 iif lo goto 7",
		"add pref 6 to 169.254.169.254/32 prohibit",
	})
	table.ops = nil
	add()
	if table.ops != nil {
		t.Errorf("with every rule in place, a pass did %q, want nothing", table.ops)
	}
	// A foreign rule at one of the prefs is not the guard's.
	_ = table.Del(g.want[2])
	table.rules = append(table.rules, routeRule{pref: routeGuardPref + 1, dst: g.want[2].dst, action: actNop})
	table.ops = nil
	add()
	diffLines(t, "refusal replaced by another rule", table.ops, []string{"add pref 6 to 169.254.169.254/32 prohibit"})
	// Removal takes the refusal first and leaves what is not the guard's.
	table.ops = nil
	if err := g.remove(); err != nil {
		t.Fatal(err)
	}
	diffLines(t, "remove", table.ops, []string{
		"del pref 6 to 169.254.169.254/32 prohibit",
		"del pref 5 to 169.254.169.254/32 iif lo goto 7",
		"del pref 7 to 169.254.169.254/32 nop",
	})
	if want := []routeRule{{pref: routeGuardPref + 1, dst: g.want[2].dst, action: actNop}}; !slices.Equal(table.rules, want) {
		t.Errorf("after remove the table holds %v, want only the foreign %v", table.rules, want)
	}
}
