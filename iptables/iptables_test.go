package iptables

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var (
	listen4    = netip.MustParseAddrPort("10.0.0.1:8181")
	listen6    = netip.MustParseAddrPort("[fd00::1]:8181")
	container4 = netip.MustParseAddrPort("10.0.0.1:8182")
	container6 = netip.MustParseAddrPort("[fd00::1]:8182")
)

// fakeRead is a way a pass reads the tables: the backend's, and how the fakes answer for a missing chain.
type fakeRead struct {
	name                string
	backend             string
	missingIncompatible bool // as iptables-nft 1.8.9 does (see fakeIPT)
}

// fakeReads are every way a pass reads the tables. Whichever it takes, its verdicts must be the same.
func fakeReads() []fakeRead {
	return []fakeRead{
		{name: "legacy save", backend: BackendLegacy},
		{name: "nft chain by chain", backend: BackendNFT},
		{name: "nft 1.8.9 chain by chain", backend: BackendNFT, missingIncompatible: true},
	}
}

// fakeRules builds Rules over in-memory fakes, as for nft; a family the config enables must have a fake.
func fakeRules(t *testing.T, cfg Config, v4, v6 *fakeIPT) *Rules {
	t.Helper()
	return fakeRulesReading(t, fakeRead{backend: BackendNFT}, cfg, v4, v6)
}

// fakeRulesReading is fakeRules for a backend that reads as rd says; it makes the fakes answer that way too.
func fakeRulesReading(t *testing.T, rd fakeRead, cfg Config, v4, v6 *fakeIPT) *Rules {
	t.Helper()
	if err := cfg.validate(); err != nil {
		t.Fatalf("validate() = %v", err)
	}
	r, err := newRules(cfg, rd.backend, nil, func(isV6 bool) (runner, error) {
		f := v4
		if isV6 {
			f = v6
		}
		if f == nil {
			f = newFake() // both families are always guarded; this test looks at one
		}
		f.missingIncompatible = rd.missingIncompatible
		return f, nil
	})
	if err != nil {
		t.Fatalf("newRules() = %v", err)
	}
	return r
}

// installedV4 returns Rules for an IPv4 listener that read as rd says, with their rules in place, and the IPv4 fake.
func installedV4(t *testing.T, rd fakeRead) (*Rules, *fakeIPT) {
	t.Helper()
	f4 := newFake()
	r := fakeRulesReading(t, rd, Config{MetadataV4: listen4}, f4, nil)
	mustEnsure(t, r)
	return r, f4
}

func mustEnsure(t *testing.T, r *Rules) []string {
	t.Helper()
	repaired, err := r.Ensure(t.Context())
	if err != nil {
		t.Fatalf("Ensure() error = %v", err)
	}
	return repaired
}

func mustCheck(t *testing.T, r *Rules) []string {
	t.Helper()
	missing, err := r.Check(t.Context())
	if err != nil {
		t.Fatalf("Check() error = %v", err)
	}
	return missing
}

func diffLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	t.Errorf("%s = \n\t%s\nwant\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
}

const (
	jumpGuard = `-m comment --comment "iamlet: jump to IAMLET-GUARD" -j IAMLET-GUARD`
	jumpNAT   = `-m comment --comment "iamlet: jump to IAMLET-IMDS" -j IAMLET-IMDS`
)

func TestRuleShape(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		want4 []string
		want6 []string
	}{
		{
			name: "ipv4 listener: ipv6 still guarded",
			cfg:  Config{MetadataV4: listen4},
			want4: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
				`nat -A IAMLET-IMDS -d 169.254.169.254/32 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:8181`,
			},
			want6: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
			},
		},
		{
			name: "ipv6 listener: ipv4 still guarded",
			cfg:  Config{MetadataV6: listen6},
			want4: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
			},
			want6: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
				`nat -A IAMLET-IMDS -d fd00:ec2::254/128 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination [fd00::1]:8181`,
			},
		},
		{
			name: "both families with the container face",
			cfg: Config{
				MetadataV4: listen4, MetadataV6: listen6, ContainerV4: container4, ContainerV6: container6,
			},
			want4: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.170.23/32 -p tcp -m comment --comment "iamlet: container reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d 169.254.170.23/32 -m comment --comment "iamlet: container reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
				`nat -A IAMLET-IMDS -d 169.254.169.254/32 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:8181`,
				`nat -A IAMLET-IMDS -d 169.254.170.23/32 -p tcp --dport 80 -m comment --comment "iamlet: container dnat all" -j DNAT --to-destination 10.0.0.1:8182`,
			},
			want6: []string{
				"filter -A INPUT " + jumpGuard,
				"filter -A FORWARD " + jumpGuard,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::254/128 -m comment --comment "iamlet: imds reject all" -j REJECT`,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::23/128 -p tcp -m comment --comment "iamlet: container reject-tcp all" -j REJECT --reject-with tcp-reset`,
				`filter -A IAMLET-GUARD ! -i lo -d fd00:ec2::23/128 -m comment --comment "iamlet: container reject all" -j REJECT`,
				"nat -A PREROUTING " + jumpNAT,
				`nat -A IAMLET-IMDS -d fd00:ec2::254/128 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination [fd00::1]:8181`,
				`nat -A IAMLET-IMDS -d fd00:ec2::23/128 -p tcp --dport 80 -m comment --comment "iamlet: container dnat all" -j DNAT --to-destination [fd00::1]:8182`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f4, f6 := newFake(), newFake()
			r := fakeRules(t, tt.cfg, f4, f6)
			mustEnsure(t, r)
			diffLines(t, "ipv4 rules", f4.dump(), tt.want4)
			diffLines(t, "ipv6 rules", f6.dump(), tt.want6)
		})
	}
}

func TestEnsureIsIdempotent(t *testing.T) {
	for _, cfg := range []Config{
		{MetadataV4: listen4},
		{MetadataV4: listen4, MetadataV6: listen6, ContainerV4: container4, ContainerV6: container6},
	} {
		f4, f6 := newFake(), newFake()
		r := fakeRules(t, cfg, f4, f6)
		if got := mustEnsure(t, r); len(got) == 0 {
			t.Fatalf("first Ensure() repaired nothing on empty tables")
		}
		before4, before6 := f4.dump(), f6.dump()
		if got := mustEnsure(t, r); got != nil {
			t.Errorf("second Ensure() repaired = %q, want nothing", got)
		}
		diffLines(t, "ipv4 rules after second Ensure", f4.dump(), before4)
		diffLines(t, "ipv6 rules after second Ensure", f6.dump(), before6)
	}
}

// TestRoundTrip adds, asserts, removes and asserts again, with a rule of another program that must survive.
func TestRoundTrip(t *testing.T) {
	for _, rd := range fakeReads() {
		t.Run(rd.name, func(t *testing.T) {
			f4 := newFake()
			foreign := []string{"-p", "udp", "-j", "RETURN"}
			if err := f4.Append("nat", "PREROUTING", foreign...); err != nil {
				t.Fatal(err)
			}
			r := fakeRulesReading(t, rd, Config{MetadataV4: listen4}, f4, nil)

			// Both families, the one without a listener too: its guard and its (empty) redirect chain.
			var all []string
			for _, fam := range []string{"ipv4", "ipv6"} {
				all = append(all,
					fam+" filter/IAMLET-GUARD: chain missing",
					fam+" filter/INPUT: jump to IAMLET-GUARD missing",
					fam+" filter/FORWARD: jump to IAMLET-GUARD missing",
					fam+" nat/IAMLET-IMDS: chain missing",
					fam+" nat/PREROUTING: jump to IAMLET-IMDS missing")
			}
			diffLines(t, "Check() before Ensure", mustCheck(t, r), all)
			diffLines(t, "Ensure() repaired", mustEnsure(t, r), all)
			if got := mustCheck(t, r); got != nil {
				t.Errorf("Check() after Ensure = %q, want nothing missing", got)
			}
			for range 2 {
				if err := r.Remove(t.Context()); err != nil {
					t.Fatalf("Remove() = %v", err)
				}
				diffLines(t, "rules after Remove", f4.dump(), []string{"nat -A PREROUTING -p udp -j RETURN"})
				diffLines(t, "chains after Remove", f4.userChains(), nil)
			}
			diffLines(t, "Check() after Remove", mustCheck(t, r), all)
		})
	}
}

func TestRemoveTakesStaleJumps(t *testing.T) {
	for _, rd := range fakeReads() {
		t.Run(rd.name, func(t *testing.T) {
			r, f4 := installedV4(t, rd)
			// A jump written by some older version, which Ensure also reports as a duplicate.
			if err := f4.Append("nat", "PREROUTING", "-p", "tcp", "-j", natChain); err != nil {
				t.Fatal(err)
			}
			if err := r.Remove(t.Context()); err != nil {
				t.Fatalf("Remove() = %v", err)
			}
			diffLines(t, "rules after Remove", f4.dump(), nil)
			diffLines(t, "chains after Remove", f4.userChains(), nil)
		})
	}
}

func TestDriftIsCheckedAndRepaired(t *testing.T) {
	cfg := Config{MetadataV4: listen4, MetadataV6: listen6}
	tests := []struct {
		name   string
		mutate func(t *testing.T, f4, f6 *fakeIPT)
		want   []string
		keep   string // a foreign rule that must survive the repair, if any
	}{
		{
			name:   "nat table flushed",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) { f4.flushTable("nat") },
			want:   []string{"ipv4 nat/IAMLET-IMDS: 0 rules, want 1", "ipv4 nat/PREROUTING: jump to IAMLET-IMDS missing"},
		},
		{
			name:   "ipv6 filter table flushed",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) { f6.flushTable("filter") },
			want: []string{
				"ipv6 filter/IAMLET-GUARD: 0 rules, want 2",
				"ipv6 filter/INPUT: jump to IAMLET-GUARD missing",
				"ipv6 filter/FORWARD: jump to IAMLET-GUARD missing",
			},
		},
		{
			name: "rule inserted before the jump",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				mustDo(t, f4.Insert("nat", "PREROUTING", 1, "-m", "comment", "--comment", "kube-proxy", "-j", "RETURN"))
			},
			want: []string{"ipv4 nat/PREROUTING: jump to IAMLET-IMDS at position 2, want 1"},
			keep: `nat -A PREROUTING -m comment --comment kube-proxy -j RETURN`,
		},
		{
			name: "jump duplicated",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				mustDo(t, f4.Append("filter", "FORWARD", jumpArgs(guardChain)...))
			},
			want: []string{"ipv4 filter/FORWARD: 2 jumps to IAMLET-GUARD, want 1"},
		},
		{
			name: "jump narrowed",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				mustDo(t, f4.Delete("filter", "INPUT", jumpArgs(guardChain)...))
				mustDo(t, f4.Insert("filter", "INPUT", 1, "-i", "eth9", "-j", guardChain))
			},
			want: []string{"ipv4 filter/INPUT: jump to IAMLET-GUARD differs"},
		},
		{
			name: "guard chain and its jumps deleted",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				mustDo(t, f4.Delete("filter", "INPUT", jumpArgs(guardChain)...))
				mustDo(t, f4.Delete("filter", "FORWARD", jumpArgs(guardChain)...))
				f4.chains["filter"][guardChain] = nil
				mustDo(t, f4.DeleteChain("filter", guardChain))
			},
			want: []string{
				"ipv4 filter/IAMLET-GUARD: chain missing",
				"ipv4 filter/INPUT: jump to IAMLET-GUARD missing",
				"ipv4 filter/FORWARD: jump to IAMLET-GUARD missing",
			},
		},
		{
			name: "guard rules swapped",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				rules := f4.chains["filter"][guardChain]
				rules[0], rules[1] = rules[1], rules[0]
			},
			want: []string{`ipv4 filter/IAMLET-GUARD: rule 1 is "iamlet: imds reject all", want "iamlet: imds reject-tcp all"`},
		},
		{
			name: "dnat target edited in place",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				rule := f6.chains["nat"][natChain][0]
				rule[len(rule)-1] = "[fd00::1]:1"
			},
			want: []string{`ipv6 nat/IAMLET-IMDS: rule "iamlet: imds dnat all" differs`},
		},
		{
			name: "guard rule narrowed under its comment",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				rule := f4.chains["filter"][guardChain][0]
				f4.chains["filter"][guardChain][0] = slices.Concat([]string{"-s", "10.0.0.0/8"}, rule)
			},
			want: []string{`ipv4 filter/IAMLET-GUARD: rule "iamlet: imds reject-tcp all" differs`},
		},
		{
			name: "dnat port edited where -C cannot see it",
			mutate: func(t *testing.T, f4, f6 *fakeIPT) {
				f6.sloppyCheck = true
				rule := f6.chains["nat"][natChain][0]
				rule[len(rule)-1] = "[fd00::1]:1"
			},
			want: []string{`ipv6 nat/IAMLET-IMDS: rule "iamlet: imds dnat all" differs`},
		},
	}
	for _, rd := range fakeReads() {
		for _, tt := range tests {
			t.Run(rd.name+"/"+tt.name, func(t *testing.T) {
				f4, f6 := newFake(), newFake()
				r := fakeRulesReading(t, rd, cfg, f4, f6)
				mustEnsure(t, r)
				pristine4, pristine6 := f4.dump(), f6.dump()

				tt.mutate(t, f4, f6)
				diffLines(t, "Check()", mustCheck(t, r), tt.want)
				diffLines(t, "Ensure() repaired", mustEnsure(t, r), tt.want)
				if got := mustCheck(t, r); got != nil {
					t.Errorf("Check() after Ensure = %q, want nothing missing", got)
				}
				got4 := slices.DeleteFunc(f4.dump(), func(l string) bool { return l == tt.keep })
				if tt.keep != "" && len(got4) == len(f4.dump()) {
					t.Errorf("foreign rule %q gone after Ensure", tt.keep)
				}
				diffLines(t, "ipv4 rules after repair", got4, pristine4)
				diffLines(t, "ipv6 rules after repair", f6.dump(), pristine6)
			})
		}
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestPassInPlaceReadsOnce: a pass that finds everything in place reads each family's tables once and runs nothing
// else, which is what start-up and every Reconcile pass cost on a node whose rules are already there. Legacy reads
// with one save; nft lists each chain the pass looks at, and no other.
func TestPassInPlaceReadsOnce(t *testing.T) {
	lists := []string{
		"ListChain filter IAMLET-GUARD", "ListChain filter INPUT", "ListChain filter FORWARD",
		"ListChain nat IAMLET-IMDS", "ListChain nat PREROUTING",
	}
	want := map[string][]string{BackendLegacy: {"Save"}, BackendNFT: lists}
	for _, rd := range fakeReads() {
		t.Run(rd.name, func(t *testing.T) {
			f4, f6 := newFake(), newFake()
			cfg := Config{MetadataV4: listen4, MetadataV6: listen6, ContainerV4: container4, ContainerV6: container6}
			r := fakeRulesReading(t, rd, cfg, f4, f6)
			mustEnsure(t, r)
			f4.takeCalls()
			f6.takeCalls()
			for _, pass := range []struct {
				name string
				run  func(t *testing.T, r *Rules) []string
			}{{"Ensure", mustEnsure}, {"Check", mustCheck}} {
				if got := pass.run(t, r); got != nil {
					t.Fatalf("%s() = %q, want nothing to do", pass.name, got)
				}
				// A family's listings run at once: only their set is fixed.
				diffLines(t, pass.name+"() ipv4 calls", slices.Sorted(slices.Values(f4.takeCalls())), slices.Sorted(slices.Values(want[rd.backend])))
				diffLines(t, pass.name+"() ipv6 calls", slices.Sorted(slices.Values(f6.takeCalls())), slices.Sorted(slices.Values(want[rd.backend])))
			}
		})
	}
}

// TestIncompatibleTable: a table the nft tool put something in that iptables cannot express is an error for a pass,
// whichever way it reads.
func TestIncompatibleTable(t *testing.T) {
	for _, rd := range fakeReads() {
		t.Run(rd.name, func(t *testing.T) {
			r, f4 := installedV4(t, rd)
			f4.incompatible = "nat/PREROUTING"
			want := "inspect ipv4 chain nat/IAMLET-IMDS: table nat holds rules iptables cannot express"
			if _, err := r.Check(t.Context()); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Check() error = %v, want %q", err, want)
			}
		})
	}
}

// TestTakeover starts a new configuration over chains a previous run left behind.
func TestTakeover(t *testing.T) {
	old := Config{MetadataV4: listen4, ContainerV4: container4}
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{
			name: "listener port changed",
			cfg:  Config{MetadataV4: netip.MustParseAddrPort("10.0.0.1:9191"), ContainerV4: container4},
			want: []string{`ipv4 nat/IAMLET-IMDS: rule "iamlet: imds dnat all" differs`},
		},
		{
			name: "container face turned off",
			cfg:  Config{MetadataV4: listen4},
			want: []string{"ipv4 filter/IAMLET-GUARD: 4 rules, want 2", "ipv4 nat/IAMLET-IMDS: 2 rules, want 1"},
		},
	}
	for _, rd := range fakeReads() {
		for _, tt := range tests {
			t.Run(rd.name+"/"+tt.name, func(t *testing.T) {
				f4, f6 := newFake(), newFake()
				mustEnsure(t, fakeRulesReading(t, rd, old, f4, f6))

				diffLines(t, "Ensure() repaired", mustEnsure(t, fakeRulesReading(t, rd, tt.cfg, f4, f6)), tt.want)

				fresh4, fresh6 := newFake(), newFake()
				mustEnsure(t, fakeRulesReading(t, rd, tt.cfg, fresh4, fresh6))
				diffLines(t, "ipv4 rules after takeover", f4.dump(), fresh4.dump())
				diffLines(t, "ipv6 rules after takeover", f6.dump(), fresh6.dump())
			})
		}
	}
}

func TestErrorsAreReported(t *testing.T) {
	t.Run("ensure continues with the other family", func(t *testing.T) {
		f4, f6 := newFake(), newFake()
		f4.failOn = "Append"
		r := fakeRules(t, Config{MetadataV4: listen4, MetadataV6: listen6}, f4, f6)
		repaired, err := r.Ensure(t.Context())
		var fe *fakeErr
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "repair ipv4 filter/IAMLET-GUARD: chain missing: append") {
			t.Fatalf("Ensure() error = %v, want the ipv4 append failure in context", err)
		}
		if len(repaired) != 5 || !strings.HasPrefix(repaired[0], "ipv6 ") {
			t.Errorf("Ensure() repaired = %q, want the five ipv6 repairs", repaired)
		}
	})
	for _, rd := range fakeReads() {
		t.Run("check reading "+rd.name, func(t *testing.T) {
			f4 := newFake()
			f4.failOn = map[string]string{BackendLegacy: "Save", BackendNFT: "ListChain"}[rd.backend]
			if _, err := fakeRulesReading(t, rd, Config{MetadataV4: listen4}, f4, nil).Check(t.Context()); err == nil {
				t.Errorf("Check() error = nil, want the listing failure")
			}
		})
	}
	t.Run("remove", func(t *testing.T) {
		f4 := newFake()
		r := fakeRules(t, Config{MetadataV4: listen4}, f4, nil)
		mustEnsure(t, r)
		f4.failOn = "DeleteChain"
		if err := r.Remove(t.Context()); err == nil || !strings.Contains(err.Error(), "delete ipv4 chain nat/IAMLET-IMDS") {
			t.Errorf("Remove() error = %v, want the chain deletion failure", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		r := fakeRules(t, Config{MetadataV4: listen4}, newFake(), nil)
		if _, err := r.Ensure(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Ensure(cancelled) error = %v, want context.Canceled", err)
		}
	})
}

func TestReconcile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f4 := newFake()
		r := fakeRules(t, Config{MetadataV4: listen4}, f4, nil)
		ctx, cancel := context.WithCancel(t.Context())
		passes := make(chan Status, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.Reconcile(ctx, time.Minute, func(s Status) { passes <- s })
		}()

		steps := []struct {
			name         string
			before       func()
			wantRepaired int
			wantPresent  bool
			wantErr      bool
		}{
			{name: "first pass installs", wantRepaired: 10, wantPresent: true}, // both families
			{name: "quiet pass", wantPresent: true},
			{name: "flushed nat repaired", before: func() { f4.flushTable("nat") }, wantRepaired: 2, wantPresent: true},
			{name: "failing iptables", before: func() { f4.setFail("ListChain") }, wantErr: true},
		}
		for i, s := range steps {
			if s.before != nil {
				s.before()
			}
			if i > 0 {
				time.Sleep(time.Minute)
			}
			synctest.Wait()
			var st Status
			select {
			case st = <-passes:
			default:
				t.Fatalf("%s: no pass reported", s.name)
			}
			if st.Repaired != s.wantRepaired || st.Present["ipv4"] != s.wantPresent || (st.Err != nil) != s.wantErr {
				t.Errorf("%s: Status = %+v, want Repaired %d, Present %v, error %v",
					s.name, st, s.wantRepaired, s.wantPresent, s.wantErr)
			}
		}
		cancel()
		<-done
	})
}

func (f *fakeIPT) setFail(op string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOn = op
}

func TestValidate(t *testing.T) {
	v4in6 := netip.AddrPortFrom(netip.MustParseAddr("::ffff:10.0.0.1"), 80)
	zoned := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 80)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" means valid
	}{
		{"ipv4 only", Config{MetadataV4: listen4}, ""},
		{"everything", Config{MetadataV4: listen4, MetadataV6: listen6, ContainerV4: container4, ContainerV6: container6, Backend: "legacy"}, ""},
		{"no family", Config{}, "no metadata DNAT target"},
		{"container face alone", Config{MetadataV4: listen4, ContainerV6: container6}, "without the metadata target"},
		{"ipv6 address as ipv4 target", Config{MetadataV4: listen6}, "wrong address family"},
		{"ipv4 address as ipv6 target", Config{MetadataV6: listen4}, "wrong address family"},
		{"mapped address as ipv4 target", Config{MetadataV4: v4in6}, "wrong address family"},
		{"zoned target", Config{MetadataV6: zoned}, "zoned"},
		{"port zero", Config{MetadataV4: netip.AddrPortFrom(listen4.Addr(), 0)}, "port 0"},
		{"unknown backend", Config{MetadataV4: listen4, Backend: "iptables"}, "backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	// New validates before it detects a backend or runs anything.
	if r, err := New(Config{}, nil); r != nil || err == nil {
		t.Errorf("New(Config{}) = %v, %v, want an error", r, err)
	}
}

func TestChooseBackend(t *testing.T) {
	const rules3 = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j A\n-A INPUT -j B\n-A INPUT -j C\nCOMMIT\n"
	const rules1 = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j X\nCOMMIT\n"
	const hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	tests := []struct {
		name, nft, legacy, want string
	}{
		{"nothing anywhere", "", "", BackendNFT},
		{"tie", rules1, rules1, BackendNFT},
		{"more legacy rules", rules1, rules3, BackendLegacy},
		{"more nft rules", rules3, rules1, BackendNFT},
		{"kubelet hint in legacy outweighs counts", rules3, hint, BackendLegacy},
		{"kubelet hint in nft comes first", hint, rules3 + hint, BackendNFT},
		{"canary chain", "", ":KUBE-KUBELET-CANARY - [0:0]\n", BackendLegacy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := chooseBackend([]byte(tt.nft), []byte(tt.legacy)); got != tt.want {
				t.Errorf("chooseBackend() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestListedForm: our rules and the form iptables lists them in (wantSaved in iptables_linux_test.go, from iptables
// 1.8.9 of both backends) are the same rule, and nothing that is another rule is taken for one of ours.
func TestListedForm(t *testing.T) {
	tests := []struct {
		name       string
		want, have string
		v6, same   bool
	}{
		{name: "reject-tcp", same: true,
			want: `! -i lo -d 169.254.169.254/32 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
			have: `-d 169.254.169.254/32 ! -i lo -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`},
		{name: "reject", same: true,
			want: `! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-d 169.254.169.254/32 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-port-unreachable`},
		{name: "ipv6 reject", v6: true, same: true,
			want: `! -i lo -d fd00:ec2::254/128 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-d fd00:ec2::254/128 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp6-port-unreachable`},
		{name: "dnat", same: true,
			want: `-d 169.254.169.254/32 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:8181`,
			have: `-d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:8181`},
		{name: "jump", same: true, want: jumpGuard, have: jumpGuard},

		{name: "negation dropped",
			want: `! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-d 169.254.169.254/32 -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-port-unreachable`},
		{name: "narrowed",
			want: `! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-s 10.0.0.0/8 -d 169.254.169.254/32 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-port-unreachable`},
		{name: "the other family's default reject", v6: true,
			want: `! -i lo -d fd00:ec2::254/128 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-d fd00:ec2::254/128 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-port-unreachable`},
		{name: "another reject",
			want: `! -i lo -d 169.254.169.254/32 -m comment --comment "iamlet: imds reject all" -j REJECT`,
			have: `-d 169.254.169.254/32 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-host-prohibited`},
		{name: "another port",
			want: `-d 169.254.169.254/32 -p tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:8181`,
			have: `-d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment "iamlet: imds dnat all" -j DNAT --to-destination 10.0.0.1:1`},
		{name: "an empty tcp match is still a match",
			want: `! -i lo -d 169.254.169.254/32 -p tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`,
			have: `-d 169.254.169.254/32 ! -i lo -p tcp -m tcp -m comment --comment "iamlet: imds reject-tcp all" -j REJECT --reject-with tcp-reset`},
		{name: "header option after a match",
			want: `-m comment --comment "iamlet: jump to IAMLET-GUARD" -j IAMLET-GUARD`,
			have: `-m comment --comment "iamlet: jump to IAMLET-GUARD" -i eth0 -j IAMLET-GUARD`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, have := splitRule(tt.want), splitRule(tt.have)
			if got := slices.Equal(listedForm(have, tt.v6), listedForm(want, tt.v6)); got != tt.same {
				t.Errorf("listedForm(%q) == listedForm(%q) is %v, want %v", tt.have, tt.want, got, tt.same)
			}
			if got := listedForm(have, tt.v6); tt.same && !slices.Equal(got, have) {
				t.Errorf("listedForm(%q) = %q, want the listing unchanged", tt.have, got)
			}
		})
	}
}

func TestParseSave(t *testing.T) {
	const nftSave = "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Nov 30 11:25:00 2026\n" +
		"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:IAMLET-GUARD - [0:0]\n" +
		"-A INPUT -m comment --comment \"iamlet: jump to IAMLET-GUARD\" -j IAMLET-GUARD\n" +
		"-A IAMLET-GUARD -d 169.254.169.254/32 ! -i lo -m comment --comment \"iamlet: imds reject all\" -j REJECT --reject-with icmp-port-unreachable\n" +
		"COMMIT\n# Completed on Mon Nov 30 11:25:00 2026\n" +
		"# Table `nat' contains incompatible base-chains, use 'nft' tool to list them.\n" +
		"*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
	snap, err := parseSave([]byte(nftSave))
	if err != nil {
		t.Fatalf("parseSave() = %v", err)
	}
	for _, c := range []struct {
		table, chain string
		exists       bool
		rules        int
	}{
		{"filter", "INPUT", true, 1},
		{"filter", guardChain, true, 1},
		{"filter", "FORWARD", true, 0},
		{"nat", "PREROUTING", true, 0},
		{"nat", natChain, false, 0},
		{"mangle", "PREROUTING", false, 0}, // a table not listed: nothing has created it
	} {
		ok, err := snap.chainExists(c.table, c.chain)
		rules, err2 := snap.rules(c.table, c.chain)
		if ok != c.exists || len(rules) != c.rules || err != nil || err2 != nil {
			t.Errorf("%s/%s: exists %v (%v), %d rules (%v); want exists %v, %d rules",
				c.table, c.chain, ok, err, len(rules), err2, c.exists, c.rules)
		}
	}
	if got, want := snap["filter"][guardChain][0], splitRule(`-d 169.254.169.254/32 ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT --reject-with icmp-port-unreachable`); !slices.Equal(got, want) {
		t.Errorf("guard rule = %q, want %q", got, want)
	}

	// iptables-nft lists nothing of a table holding what it cannot express: a question about it is an error.
	snap, err = parseSave([]byte("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n# Table `nat' is incompatible, use 'nft' tool.\n"))
	if err != nil {
		t.Fatalf("parseSave(incompatible nat) = %v", err)
	}
	if _, err := snap.chainExists("nat", natChain); err == nil || !strings.Contains(err.Error(), "table nat holds rules iptables cannot express") {
		t.Errorf("chainExists(nat) on an incompatible table = %v, want an error", err)
	}
	if ok, err := snap.chainExists("filter", "INPUT"); !ok || err != nil {
		t.Errorf("chainExists(filter, INPUT) beside an incompatible table = %v, %v, want true", ok, err)
	}

	for _, bad := range []string{":INPUT ACCEPT [0:0]\n", "*filter\n-A INPUT -j ACCEPT\n", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT\n", "*filter\nbogus\n"} {
		if _, err := parseSave([]byte(bad)); err == nil {
			t.Errorf("parseSave(%q) = nil error, want one", bad)
		}
	}
}

func TestParseList(t *testing.T) {
	const nat = "-N IAMLET-IMDS\n" +
		"-A IAMLET-IMDS -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -m comment --comment \"iamlet: imds dnat all\" -j DNAT --to-destination 10.0.0.1:8181\n" +
		"# Warning: iptables-legacy tables present, use iptables-legacy to see them\n"
	rules, err := parseList([]byte(nat), natChain)
	if err != nil || len(rules) != 1 || commentOf(rules[0]) != "iamlet: imds dnat all" {
		t.Errorf("parseList(%q) = %q, %v, want the dnat rule", nat, rules, err)
	}
	if rules, err := parseList([]byte("-P PREROUTING ACCEPT\n"), "PREROUTING"); rules != nil || err != nil {
		t.Errorf("parseList(empty PREROUTING) = %q, %v, want no rules", rules, err)
	}
	for _, bad := range []string{"-N OTHER\n", "-P PREROUTING ACCEPT\n-A PREROUTING\n", "-A OTHER -j ACCEPT\n", "bogus\n"} {
		if _, err := parseList([]byte(bad), "PREROUTING"); err == nil {
			t.Errorf("parseList(%q, PREROUTING) = nil error, want one", bad)
		}
	}
}

func TestSplitRule(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"-A INPUT -j ACCEPT", []string{"-A", "INPUT", "-j", "ACCEPT"}},
		{`-A X ! -i lo -m comment --comment "iamlet: imds reject all" -j REJECT`,
			[]string{"-A", "X", "!", "-i", "lo", "-m", "comment", "--comment", "iamlet: imds reject all", "-j", "REJECT"}},
		{`-A X --comment "say \"hi\" \\ bye"`, []string{"-A", "X", "--comment", `say "hi" \ bye`}},
		{`-A X --comment ""  -j Y`, []string{"-A", "X", "--comment", "", "-j", "Y"}},
	}
	for _, tt := range tests {
		if got := splitRule(tt.line); !slices.Equal(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tt.line, got, tt.want)
		}
		if got := "-A " + render(tt.want[1:]); !slices.Equal(splitRule(got), tt.want) {
			t.Errorf("splitRule(render(%q)) = %q, want it back", tt.want, splitRule(got))
		}
	}
}

func TestFlushConntrackRejectsInvalidAddress(t *testing.T) {
	if err := FlushConntrack(t.Context(), netip.Addr{}); err == nil {
		t.Errorf("FlushConntrack(invalid) = nil, want an error")
	}
}

// TestOneFamilyCannotBeOpened: a family that cannot be opened is an error, yet the other family's rules are
// returned for the caller to install before it exits; a kernel without IPv6 has nothing to guard there.
func TestOneFamilyCannotBeOpened(t *testing.T) {
	for _, c := range []struct {
		name    string
		cfg     Config
		v6Err   error
		wantErr bool
	}{
		{"ip6tables broken", Config{MetadataV4: listen4}, errors.New("ip6tables-nft: not found"), true},
		{"no IPv6 in the kernel", Config{MetadataV4: listen4}, errNoIPv6, false},
		{"no IPv6 in the kernel, an IPv6 listener configured", Config{MetadataV4: listen4, MetadataV6: listen6}, errNoIPv6, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f4 := newFake()
			r, err := newRules(c.cfg, BackendNFT, nil, func(v6 bool) (runner, error) {
				if v6 {
					return nil, c.v6Err
				}
				return f4, nil
			})
			if (err != nil) != c.wantErr || r == nil {
				t.Fatalf("newRules() = %v, %v; want the ipv4 rules and error %v", r, err, c.wantErr)
			}
			mustEnsure(t, r)
			if got := f4.dump(); len(got) != 6 {
				t.Errorf("ipv4 rules after Ensure = %q, want the guard and the redirect (6 lines)", got)
			}
		})
	}
}

// TestDestinations: the rules intercept the IMDS in both families always, the container-credentials addresses only
// when that face is on; the flows the agent cuts are exactly these.
func TestDestinations(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []netip.Addr
	}{
		{"imds ipv4 only", Config{MetadataV4: listen4}, []netip.Addr{IMDSv4, IMDSv6}},
		{"both families", Config{MetadataV4: listen4, MetadataV6: listen6}, []netip.Addr{IMDSv4, IMDSv6}},
		{"container face", Config{MetadataV4: listen4, MetadataV6: listen6, ContainerV4: container4, ContainerV6: container6}, []netip.Addr{IMDSv4, IMDSv6, ContainerV4, ContainerV6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Rules{destinations: tt.cfg.destinations()}
			if got := r.Destinations(); !slices.Equal(got, tt.want) {
				t.Errorf("Destinations() = %v, want %v", got, tt.want)
			}
			var mu sync.Mutex
			var cut []netip.Addr
			if err := r.cut(context.Background(), func(_ context.Context, a netip.Addr) error {
				mu.Lock()
				defer mu.Unlock()
				cut = append(cut, a)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(cut, netip.Addr.Compare)
			want := slices.SortedFunc(slices.Values(tt.want), netip.Addr.Compare)
			if !slices.Equal(cut, want) {
				t.Errorf("flows cut to %v, want %v", cut, tt.want)
			}
		})
	}
}
