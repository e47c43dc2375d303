// Package iptables installs and keeps in place the rules that send pod traffic for the instance metadata service to
// iamlet instead of the node's IMDS, with a guard that rejects whatever the redirect misses, so interception fails closed.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"
)

// Backends iamlet can drive; they are separate kernel subsystems, so rules must be written with the one the node uses.
const (
	BackendNFT    = "nft"
	BackendLegacy = "legacy"
)

const (
	// defaultLockWait bounds how long one iptables call waits for the xtables lock when Config.LockWait is unset:
	// go-iptables would otherwise wait forever and a stuck holder would stall reconciliation silently.
	defaultLockWait = 5 * time.Second
	// detectTimeout bounds backend detection in New, which has no context of its own.
	detectTimeout = 30 * time.Second
	// defaultInterval is the Reconcile period when the caller passes none.
	defaultInterval = 10 * time.Second
)

// Config says what to intercept and where to send it.
type Config struct {
	// DNAT targets for the IMDS, one per family. A family without one (no listener of that family) is still
	// guarded: its pods are refused, never sent to the node's IMDS. At least one must be set.
	MetadataV4, MetadataV6 netip.AddrPort
	// Optional DNAT targets for the container-credentials face (169.254.170.23:80 and [fd00:ec2::23]:80); zero = off.
	// A family's container face needs that family's metadata face.
	ContainerV4, ContainerV6 netip.AddrPort
	// Backend is "auto" (or empty: detect as kube-proxy's iptables-wrapper does), "nft" or "legacy".
	Backend string
	// LockWait is how long to wait for the xtables lock; zero means 5s. Rounded up to whole seconds.
	LockWait time.Duration
}

// Rules is the interception rule set for both families. Its methods are safe for concurrent use.
type Rules struct {
	backend  string
	families []*family
	// destinations are the addresses whose traffic the rules intercept (Destinations).
	destinations []netip.Addr
	log          *slog.Logger
	// mu serialises passes: each one inspects and then repairs, and two interleaved passes could both see a
	// rule missing and both add it.
	mu sync.Mutex
}

// family is one address family's rule set and the handle that applies it.
type family struct {
	name   string // "ipv4" or "ipv6"
	v6     bool
	ipt    runner
	chains []chain
	// byChain reads with one listing per chain instead of one save (iptables-nft; see read).
	byChain bool
	// routes is the family's routing guard (route.go); nil where there is none to manage (tests' fakes).
	routes *routeGuard
}

// Status reports one Reconcile pass.
type Status struct {
	// Present maps a family ("ipv4", "ipv6") to whether all its rules were in place after the pass.
	Present  map[string]bool
	Repaired int
	Err      error
}

// New validates cfg, picks the backend and opens an iptables handle for each family. Both families are always
// guarded, so a node whose ip6tables cannot be opened is an error, not an IPv4-only install; New then returns the
// Rules of the family it could open along with the error, for the caller to install before it gives up. A kernel
// without IPv6 (ipv6.disable=1) has no IPv6 path to guard and is not an error.
// With Backend "auto" it runs DetectBackend under a 30s timeout; callers that need their own context can call
// DetectBackend first and pass its answer.
func New(cfg Config, log *slog.Logger) (*Rules, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	backend := cfg.Backend
	if backend == "" || backend == "auto" {
		ctx, cancel := context.WithTimeout(context.Background(), detectTimeout)
		defer cancel()
		var err error
		if backend, err = DetectBackend(ctx); err != nil {
			return nil, err
		}
	}
	wait := cfg.LockWait
	if wait <= 0 {
		wait = defaultLockWait
	}
	r, err := newRules(cfg, backend, log, func(v6 bool) (runner, error) {
		if v6 && !kernelHasIPv6() {
			return nil, errNoIPv6
		}
		return openIptables(backend, v6, wait)
	})
	if r != nil {
		for _, f := range r.families {
			var lerr error
			if f.routes, lerr = newRouteGuard(f.v6); lerr != nil {
				r.log.Warn("no policy routing for this family in the kernel: no routing guard there, the netfilter guards only", "family", f.name, "err", lerr.Error())
			}
		}
	}
	return r, err
}

// imdsOf is the IMDS address of a family.
func imdsOf(v6 bool) netip.Addr {
	if v6 {
		return IMDSv6
	}
	return IMDSv4
}

// errNoIPv6 is what open answers for IPv6 on a kernel without it: there is no IPv6 path to guard.
var errNoIPv6 = errors.New("the kernel has no IPv6")

// newRules assembles Rules from a validated cfg; open supplies the handle for a family, so tests can hand in fakes.
// A family that cannot be opened is an error, but the other is still returned: the caller installs what it can
// before it exits, so an agent that cannot guard IPv6 still keeps pods off the node's IMDS over IPv4.
func newRules(cfg Config, backend string, log *slog.Logger, open func(v6 bool) (runner, error)) (*Rules, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Rules{backend: backend, log: log, destinations: cfg.destinations()}
	type handle struct {
		ipt runner
		err error
	}
	// Both at once: opening a handle runs the binary (go-iptables asks its version).
	handles := atOnce([]bool{false, true}, func(v6 bool) handle {
		ipt, err := open(v6)
		return handle{ipt, err}
	})
	var errs []error
	for i, v6 := range []bool{false, true} {
		metadata, container := cfg.MetadataV4, cfg.ContainerV4
		name := "ipv4"
		if v6 {
			metadata, container, name = cfg.MetadataV6, cfg.ContainerV6, "ipv6"
		}
		ipt, err := handles[i].ipt, handles[i].err
		switch {
		case errors.Is(err, errNoIPv6) && !metadata.IsValid():
			log.Info("no IPv6 in this kernel: nothing to guard in that family")
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("open %s iptables (%s); both families must be guarded: %w", name, backend, err))
			continue
		}
		r.families = append(r.families, &family{
			name: name, v6: v6, ipt: ipt, chains: buildChains(v6, metadata, container), byChain: backend == BackendNFT,
		})
	}
	return r, errors.Join(errs...)
}

// destinations are the addresses cfg intercepts: the IMDS in both families (guarded even without a listener of
// that family), and the container-credentials addresses when that face is on.
func (c Config) destinations() []netip.Addr {
	d := []netip.Addr{IMDSv4, IMDSv6}
	if c.ContainerV4.IsValid() {
		d = append(d, ContainerV4)
	}
	if c.ContainerV6.IsValid() {
		d = append(d, ContainerV6)
	}
	return d
}

// Destinations returns the addresses whose traffic the rules intercept.
func (r *Rules) Destinations() []netip.Addr { return slices.Clone(r.destinations) }

// CutFlows deletes the conntrack entries of flows to every intercepted destination. NAT is decided on a flow's first
// packet, so flows opened before the rules (or under an earlier listener port) keep their old path until their
// entries go. At start every flow goes: none can be to this process yet.
func (r *Rules) CutFlows(ctx context.Context) error { return r.cut(ctx, FlushConntrack) }

// CutUnredirectedFlows deletes only the entries of flows a gap in the rules let through to a destination itself
// (see FlushUnredirected): what a repair must end, without cutting pods mid-request to the agent.
func (r *Rules) CutUnredirectedFlows(ctx context.Context) error { return r.cut(ctx, FlushUnredirected) }

// cut flushes every destination at once: each is a conntrack process, and at start-up their times would add up.
func (r *Rules) cut(ctx context.Context, flush func(context.Context, netip.Addr) error) error {
	return errors.Join(atOnce(r.destinations, func(d netip.Addr) error {
		if err := flush(ctx, d); err != nil {
			return fmt.Errorf("cutting flows to %s: %w", d, err)
		}
		return nil
	})...)
}

func (c Config) validate() error {
	switch c.Backend {
	case "", "auto", BackendNFT, BackendLegacy:
	default:
		return fmt.Errorf("iptables backend %q: want auto, nft or legacy", c.Backend)
	}
	if !c.MetadataV4.IsValid() && !c.MetadataV6.IsValid() {
		return errors.New("no metadata DNAT target: set an IPv4 or IPv6 address and port")
	}
	targets := []struct {
		name   string
		ap     netip.AddrPort
		v6     bool
		family netip.AddrPort // the family's metadata target, which must be on for this one to be
	}{
		{"metadata ipv4", c.MetadataV4, false, c.MetadataV4},
		{"metadata ipv6", c.MetadataV6, true, c.MetadataV6},
		{"container ipv4", c.ContainerV4, false, c.MetadataV4},
		{"container ipv6", c.ContainerV6, true, c.MetadataV6},
	}
	for _, t := range targets {
		switch {
		case !t.ap.IsValid():
		case !t.family.IsValid():
			return fmt.Errorf("%s target %s set without the metadata target of its family", t.name, t.ap)
		case t.ap.Port() == 0:
			return fmt.Errorf("%s target %s: port 0", t.name, t.ap)
		case t.ap.Addr().Zone() != "":
			return fmt.Errorf("%s target %s: zoned addresses cannot be DNAT targets", t.name, t.ap)
		case t.v6 && (!t.ap.Addr().Is6() || t.ap.Addr().Is4In6()), !t.v6 && !t.ap.Addr().Is4():
			return fmt.Errorf("%s target %s: wrong address family", t.name, t.ap)
		}
	}
	return nil
}

// Backend reports the iptables backend in use: "nft" or "legacy".
func (r *Rules) Backend() string { return r.backend }

// Ensure brings every rule into place and returns what it had to create, move or rewrite. It is idempotent: with
// everything in place it changes nothing and returns no repairs. Both families are attempted even if one fails.
func (r *Rules) Ensure(ctx context.Context) (repaired []string, err error) {
	repaired, _, err = r.ensureAll(ctx)
	return repaired, err
}

// ensureAll is Ensure that also tells, per family, whether everything is now in place.
func (r *Rules) ensureAll(ctx context.Context) (repaired []string, present map[string]bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The families at once: each is its own binaries and tables, and at start-up their times would add up. (Legacy
	// writers still take turns on the xtables lock.)
	type ensured struct {
		done []string
		err  error
	}
	results := atOnce(r.families, func(f *family) ensured {
		done, err := r.ensureFamily(ctx, f)
		return ensured{done, err}
	})
	present = make(map[string]bool, len(r.families))
	var errs []error
	for i, f := range r.families {
		repaired = append(repaired, results[i].done...)
		present[f.name] = results[i].err == nil
		errs = append(errs, results[i].err)
	}
	return repaired, present, errors.Join(errs...)
}

func (r *Rules) ensureFamily(ctx context.Context, f *family) ([]string, error) {
	fixes, err := f.inspect(ctx)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, fx := range fixes {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		if err := fx.apply(); err != nil {
			return done, fmt.Errorf("repair %s: %w", fx.desc, err)
		}
		r.log.Info("iptables rule repaired", "family", f.name, "backend", r.backend, "problem", fx.desc)
		done = append(done, fx.desc)
	}
	return done, nil
}

// Check reports what is absent or out of place, without changing anything. It uses the same inspection as Ensure,
// so what Check reports is exactly what Ensure would repair.
func (r *Rules) Check(ctx context.Context) (missing []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, f := range r.families {
		fixes, err := f.inspect(ctx)
		errs = append(errs, err)
		for _, fx := range fixes {
			missing = append(missing, fx.desc)
		}
	}
	return missing, errors.Join(errs...)
}

// Remove uninstalls everything: jumps, then both chains, then the routing guard, in every enabled family. Rules
// already gone count as removed, so Remove is idempotent. Only an explicit uninstall should call it: shutdown leaves
// the rules in place so that pods get "connection refused" rather than the node's IMDS while iamlet is down.
func (r *Rules) Remove(ctx context.Context) error { return r.remove(ctx, true) }

// RemoveChains removes the iptables chains and jumps only, and leaves the routing guard, which belongs to no backend:
// for the backend an agent no longer uses, beside the Rules of the one it does.
func (r *Rules) RemoveChains(ctx context.Context) error { return r.remove(ctx, false) }

func (r *Rules) remove(ctx context.Context, routes bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, f := range r.families {
		errs = append(errs, f.remove(ctx, routes))
	}
	return errors.Join(errs...)
}

// Reconcile runs Ensure now and then every interval until ctx is done, reporting each completed pass to onPass
// (which may be nil). It notices rules another program flushed or reordered and puts them back. Returning leaves the
// rules in place: interception must outlive the agent.
func (r *Rules) Reconcile(ctx context.Context, interval time.Duration, onPass func(Status)) {
	if interval <= 0 {
		interval = defaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		repaired, present, err := r.ensureAll(ctx)
		if ctx.Err() != nil {
			return // a pass cut short by shutdown says nothing about the rules
		}
		if err != nil {
			r.log.Error("iptables reconcile failed", "backend", r.backend, "err", err)
		}
		if onPass != nil {
			onPass(Status{Present: present, Repaired: len(repaired), Err: err})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// kernelHasIPv6 tells whether the kernel runs IPv6 at all; /proc/net/if_inet6 exists exactly when it does.
func kernelHasIPv6() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
}
