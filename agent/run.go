package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/iptables"
	"github.com/iamlet/iamlet/metadata"
)

// Run runs the agent until ctx is done. Interception rules are left in place when it returns, so pods
// fail closed (connection refused) rather than reaching the node's IMDS.
//
// The order of the steps is part of the security model (docs/design.md): the guard goes in first, the pod-facing
// listeners open only once the informers have synced, and the start-up taint comes off only once the agent is ready.
// On stop the defers run last first: cancel and shut the informers down, wait for every goroutine the steps started,
// close the issuance file; the rules stay.
func Run(ctx context.Context, cfg Config, reg prometheus.Registerer, gatherer prometheus.Gatherer, log *slog.Logger) error {
	if err := cfg.check(); err != nil {
		return err
	}
	a := &agent{cfg: cfg, reg: reg, log: log, hostState: func() string { return "off" }, mem: &releaser{log: log}}
	// Start-up allocates in a burst: the collector runs less often until ready.
	endStartup := startupMemory(a.mem.release)
	defer endStartup()
	// Before anything that can fail or wait: until the agent serves, pods are refused; one that crash-loops keeps them refused.
	if err := a.guard(ctx); err != nil {
		return err
	}
	defer a.awaitSettled()
	// Right behind the guard, never fatal: a node that cannot tell hostNetwork pods apart says so and serves the others.
	a.guardHostNetwork()
	// Only now what can wait on the network (the apiserver; below, the node's IMDS for the region): pods are refused meanwhile.
	if err := a.connect(); err != nil {
		return err
	}
	// Parts wired but not started; the issuance file is closed last, once every fetch that writes it has stopped.
	if err := a.build(); err != nil {
		return err
	}
	defer a.closeIssuance()

	// Defers run last first: cancel stops the servers and loops, then Wait sees them gone. The other order would
	// leave a start-up error waiting forever on servers that never stop.
	defer a.wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Installed by the guard; from here on restored whenever they drift, and never removed. Not only once ready: an
	// agent that waits on the apiserver must not leave a flushed table open meanwhile.
	a.keepRules(ctx)
	// Observability first, so /healthz answers and /readyz says why it is not ready yet.
	if err := a.serveOps(ctx, gatherer); err != nil {
		return err
	}
	// The region (the node's IMDS, when not configured) is asked while the informers sync.
	awaitSTS := a.connectSTS(ctx)
	defer func() { _ = awaitSTS() }()
	// Handlers subscribed before the informers start, so no change is missed; Shutdown waits for informers to see cancel.
	a.startInformers(ctx)
	defer func() { cancel(); a.mapper.Shutdown() }()
	// Everything below reads the index: nothing is prefetched, reconciled or answered from a partial one.
	if err := a.sync(ctx); err != nil {
		return err
	}
	if err := awaitSTS(); err != nil {
		return err
	}
	// Which hostNetwork pods are node-trusted is known only now that the pods are.
	a.watchHostNetwork(ctx)
	// The first verdict before the cache starts: until a check passes, no token is minted.
	if err := a.confineMinting(ctx); err != nil {
		return err
	}
	// Prefetches start before the listeners open, so the first requests find credentials waiting.
	a.startCache(ctx)
	// Pods are answered from here on; the rules have sent them here since the guard, refused until now. Flows opened
	// before the rules are cut first.
	if err := a.listen(ctx); err != nil {
		return err
	}
	// The taint comes off once ready, and never before: it is what keeps pods off the node meanwhile.
	a.removeStartupTaint(ctx)
	// Last: the status it serves is of everything above.
	if err := a.serveDebug(ctx); err != nil {
		return err
	}
	a.log.Info("iamlet ready", "node", a.cfg.NodeName, "region", a.cfg.Region, "metadata", fmt.Sprint(a.cfg.MetadataAddrs))
	endStartup()
	<-ctx.Done()
	a.log.Info("shutting down; interception rules stay in place")
	return nil
}

// agent is what Run's steps share: the early steps fill it in, the later ones use it. It lives for one Run.
type agent struct {
	cfg Config // Run's copy: connect fills in the region
	reg prometheus.Registerer
	log *slog.Logger

	rules     *iptables.Rules   // nil when the rules are not ours to manage
	settled   <-chan struct{}   // closed once the flows opened before the rules are cut; nil without rules
	host      *hostInterception // nil when hostNetwork pods are not intercepted
	hostState func() string     // hostNetwork pods: covered, off, or not covered and why

	kube   *kube.Client // as the agent's ServiceAccount
	minter *kube.Client // as its node, minting as the node (mintingClient): tokens and the node's pods
	sts    *sts.Client

	m      *metrics
	index  *pods.Index
	mapper *roles.Mapper
	st     *state
	tokens *satoken.Source
	fetch  *fetcher
	cache  *creds.Cache
	prov   *provider

	// dirty is nudged by any change to pods, ServiceAccounts or Namespaces, hostChanged by any change to pods.
	dirty, hostChanged chan struct{}

	mem *releaser // what start-up and runs of fetches leave behind, handed back

	// wg holds every goroutine the steps start, all on Run's ctx: Run cancels it, then waits. (The mapper's
	// reflectors run on its own, stopped by mapper.Shutdown.)
	wg sync.WaitGroup
}

// check refuses a Config the agent cannot start with.
func (c Config) check() error {
	if c.NodeName == "" {
		return errors.New("the node name is required (set NODE_NAME from the downward API)")
	}
	if len(c.MetadataAddrs) == 0 {
		return errors.New("at least one metadata listen address is required")
	}
	// Only for AWS's STS: another (MinIO, Ceph) may have a region of its own naming.
	if c.Region != "" && c.STSEndpoint == "" && !metadata.ValidRegion(c.Region) {
		return fmt.Errorf("--region (or AWS_REGION) %q is not a region name such as us-east-1", c.Region)
	}
	return nil
}

// guard installs the interception rules, when they are the agent's to manage: before anything that can fail or wait
// (the region lookup, the informers' sync, the key, the listeners). Once it returns, pods reaching for the node's IMDS
// reach this agent's listeners, or nothing.
//
// Flows opened before the rules are cut beside the next steps (a conntrack process per address takes tens of
// milliseconds), and listen waits for that: by the time pods are answered, none is left.
func (a *agent) guard(ctx context.Context) error {
	if !a.cfg.ManageIptables {
		a.log.Warn("interception off (--iptables=false): the agent installs no rules, so pods reach the node's IMDS unless other rules send them here")
		return nil
	}
	ic := iptablesConfig(a.cfg)
	var err error
	if a.rules, err = installRules(ctx, ic, a.log); err != nil {
		return err
	}
	settled := make(chan struct{})
	a.settled = settled
	go func() {
		defer close(settled)
		settleRules(ctx, ic, a.rules, a.log)
	}()
	return nil
}

// awaitSettled returns once the guard's flows are cut (at once when the rules are not the agent's to manage).
func (a *agent) awaitSettled() {
	if a.settled != nil {
		<-a.settled
	}
}

// guardHostNetwork checks that hostNetwork callers can be traced to their pods (the host-rules container writes their
// rules); where they cannot, it says so, loudly, and the agent runs on for every other pod.
func (a *agent) guardHostNetwork() {
	if !a.hostNetworkAsked() {
		return
	}
	host, err := startHostInterception(a.cfg, a.log)
	if err != nil {
		a.hostState = func() string { return "not covered: " + err.Error() }
		a.log.Error("hostNetwork pods are NOT covered: they may reach the node's IMDS; the start-up taint stays, if the node has one",
			"error", err.Error())
		return
	}
	a.host, a.hostState = host, host.status
}

// connect makes the Kubernetes and token-minting clients.
func (a *agent) connect() error {
	rc, err := kubeConfig(a.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	if a.kube, err = kube.New(rc); err != nil {
		return err
	}
	a.minter, err = mintingClient(rc, a.cfg.TokenMinting, a.cfg.NodeName)
	return err
}

// connectSTS makes the STS client, asking the node's IMDS for the region when none is configured (--region,
// AWS_REGION), in the background: the ask waits for the guard's flow cut, and both beside the informers' sync rather
// than before it. The returned func waits for it and hands the client to the fetcher (built without one); call it
// before anything fetches.
func (a *agent) connectSTS(ctx context.Context) (await func() error) {
	// STS is signed for the region an AWS endpoint names (sts.New); for any other endpoint, where the node has an
	// IMDS, for the node's region, as without an endpoint.
	_, named := sts.EndpointRegion(a.cfg.STSEndpoint)
	ask := a.cfg.Region == "" && (a.cfg.STSEndpoint == "" || (a.cfg.NodeIMDS != "" && !named))
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		if ask {
			// Not while the guard cuts flows to the IMDS addresses: the cut would take this request's with them.
			a.awaitSettled()
			if a.cfg.Region, err = nodeRegion(ctx, a.cfg.NodeIMDS, a.cfg.NodeFacts.Region, a.log); err != nil {
				return
			}
		}
		if a.cfg.NodeFacts.Region == "" {
			a.cfg.NodeFacts.Region = a.cfg.Region
		}
		if a.sts, err = sts.New(sts.Config{Region: a.cfg.Region, Endpoint: a.cfg.STSEndpoint}); err == nil {
			a.fetch.sts = a.sts
		}
	}()
	return func() error {
		<-done
		return err
	}
}

// build makes the agent's parts, wires them to each other and registers the gauges that read them; nothing runs,
// fetches or answers yet.
func (a *agent) build() error {
	a.m = newMetrics(a.reg, a.cfg.PerPodMetrics)
	booted, err := bootTime("/proc/stat")
	if err != nil {
		return err
	}
	// As the node, the agent may read only that node's pods (the Node authorizer), and its ServiceAccount none.
	a.index = pods.New(a.minter, a.cfg.NodeName, booted, a.cfg.UnknownPodWait)
	a.mapper = roles.New(a.kube, roles.Config{DefaultAudience: a.cfg.DefaultAudience, DefaultDuration: a.cfg.SessionDuration,
		RequireNamespaceAllowlist: a.cfg.RequireNamespaceAllowlist})
	a.st = &state{minting: a.cfg.TokenMinting, hostNetwork: a.hostState, stale: func() error { return heldStale(a.index, a.mapper) }}
	if a.host != nil {
		a.host.reconcile(nil, false, time.Now()) // host-rules' state only: which pods are trusted waits for the informers
	}
	a.st.rulesOK.Store(true) // installed by guard, or not ours to manage
	a.tokens = satoken.New(a.minter, satoken.MinTTL)
	a.fetch = &fetcher{tokens: a.tokens, confined: a.st.confinedErr, metrics: a.m} // sts: connectSTS
	if a.cfg.IssuanceFile != "" {
		if a.fetch.issued, err = openIssuanceFile(a.cfg.IssuanceFile, issuanceNotWritten(a.m, a.log)); err != nil {
			return err
		}
	}
	a.cache = creds.New(a.fetch, creds.Config{PrefetchQPS: a.cfg.PrefetchQPS, PrefetchBurst: a.cfg.PrefetchBurst,
		RefreshQPS: a.cfg.RefreshQPS, Observer: observer{metrics: a.m, log: a.log, stale: &staleLines{}},
		Idle: releaseAfterFetches(releaseEvery, heapAllocated, a.mem.release)})
	a.prov = &provider{pods: a.index, roles: a.mapper, cache: a.cache, metrics: a.m, log: a.log, dryRun: a.cfg.DryRun,
		trusted: trustList(a.cfg.NodeTrusted).trusts}
	a.report()
	return nil
}

// closeIssuance closes the issuance file, if there is one.
func (a *agent) closeIssuance() {
	if a.fetch.issued != nil {
		if err := a.fetch.issued.Close(); err != nil {
			a.log.Error("closing the issuance file", "error", err.Error())
		}
	}
}

// report registers the gauges that read the agent's state and says which identity pod tokens are minted with.
func (a *agent) report() {
	a.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_informer_synced",
			Help: "1 when the pod, ServiceAccount and Namespace informers have synced and what they hold is current: 0 while the apiserver refuses their list or watch, or has not answered it for 30 s (then nobody is identified)."},
			func() float64 { return b2f(a.st.synced.Load() && a.st.stale() == nil) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_informer_pods_indexed", Help: "Live pods of this node in the IP index."},
			func() float64 { return float64(len(a.index.Live())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_pods_unvouched",
			Help: "Live pods of this node whose address identifies nobody: the kubelet reports their sandbox not ready, or ready since before the node booted (after a reboot, until it reports the new one)."},
			func() float64 { return float64(a.index.Unvouched()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_credentials_cache_entries", Help: "Entries in the credential cache."},
			func() float64 { return float64(a.cache.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_host_network_intercepted",
			Help: "1 when hostNetwork pods are intercepted by cgroup; 0 when they are not (off, or the node cannot: see the log and /readyz)."},
			func() float64 { return b2f(a.hostState() == hostCovered) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_token_minting_confined",
			Help: "1 while the last confinement check saw the apiserver refuse what it must; 0 before the first check or after one that failed."},
			func() float64 { return b2f(a.st.confinedErr() == nil) }),
	)
	mintingInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iamlet_token_minting_info",
		Help: "The identity pod tokens are minted with: mode=\"node\" (confined to this node's pods) or \"cluster\" (cluster-wide)."}, []string{"mode"})
	mintingInfo.WithLabelValues(string(a.cfg.TokenMinting)).Set(1)
	a.reg.MustRegister(mintingInfo)
	if a.cfg.TokenMinting == satoken.ClusterWide {
		a.log.Warn("cluster-wide minting: the agent's ServiceAccount can mint tokens for every ServiceAccount in the cluster, narrowed only by the admission policy; use --token-minting=node where the apiserver supports constrained impersonation (Kubernetes 1.35+)")
	} else {
		a.log.Info("node-confined minting: pod tokens are minted as the node", "node", a.cfg.NodeName)
	}
}

// serveOps serves /metrics, /healthz and /readyz, when they have an address, until ctx is done.
func (a *agent) serveOps(ctx context.Context, gatherer prometheus.Gatherer) error {
	if a.cfg.MetricsAddr == "" {
		return nil
	}
	_, err := serve(ctx, a.cfg.MetricsAddr, opsHandler(gatherer, a.st), a.log, &a.wg)
	return err
}

// startInformers subscribes the cache's and hostNetwork's reconcilers to changes, then starts the informers until ctx
// is done: the pods' in a goroutine on a.wg, the ServiceAccounts' and Namespaces' by mapper.Start (Run shuts them down).
func (a *agent) startInformers(ctx context.Context) {
	a.dirty, a.hostChanged = make(chan struct{}, 1), make(chan struct{}, 1)
	mark := nudge(a.dirty)
	a.index.AddHandler(mark)
	a.mapper.AddHandler(mark)
	a.index.AddHandler(nudge(a.hostChanged))
	a.wg.Go(func() { a.index.Run(ctx) })
	a.mapper.Start(ctx)
}

// nudge returns a func that signals ch without blocking: one pending signal stands for any number of changes.
func nudge(ch chan<- struct{}) func() {
	return func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// sync waits for the informers; once it returns, the index and the role mapper hold this node's pods and their
// roles, and readiness says so.
func (a *agent) sync(ctx context.Context) error {
	a.log.Info("waiting for informers to sync", "node", a.cfg.NodeName)
	// On the informers' own signals: a poll would add up to its period to every start.
	select {
	case <-a.index.Synced():
	case <-ctx.Done():
		return fmt.Errorf("informers did not sync: %w", ctx.Err())
	}
	if err := a.mapper.WaitForSync(ctx); err != nil {
		return fmt.Errorf("informers did not sync: %w", err)
	}
	a.st.synced.Store(true)
	return nil
}

// watchHostNetwork keeps the hostNetwork pods' exemptions and cover in step with the index, in a goroutine on a.wg.
func (a *agent) watchHostNetwork(ctx context.Context) {
	if a.host != nil {
		a.wg.Go(func() { a.host.run(ctx, a.cfg.ReconcileInterval, a.index, a.hostChanged) })
	}
}

// confineMinting checks that the apiserver refuses the tokens it must, then checks again every
// ConfinementCheckInterval in a goroutine on a.wg. Until a check passes, no token is minted and the agent is not ready.
func (a *agent) confineMinting(ctx context.Context) error {
	self, err := ownServiceAccount(ctx, a.kube, a.cfg.TokenMinting, a.cfg.NodeName)
	if err != nil {
		return err
	}
	var direct *satoken.Source // minting as the node, the ServiceAccount itself must hold no grant to mint
	if a.cfg.TokenMinting == satoken.AsNode {
		direct = satoken.New(a.kube, satoken.MinTTL)
	}
	checkConfinement(ctx, a.tokens, direct, self, a.st, a.log)
	a.wg.Go(func() {
		for {
			// A failed check is repeated soon, so a blip at start costs seconds of readiness, not minutes.
			next := a.cfg.ConfinementCheckInterval
			if a.st.confinedErr() != nil {
				next = min(next, 5*time.Second)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(next):
				checkConfinement(ctx, a.tokens, direct, self, a.st, a.log)
			}
		}
	})
	return nil
}

// startCache runs the credential cache and keeps it holding exactly the live pods' roles, both in goroutines on a.wg.
func (a *agent) startCache(ctx context.Context) {
	a.wg.Go(func() { a.cache.Run(ctx) })
	a.wg.Go(func() {
		keepReconciled(ctx, a.dirty, reconcileEvery, func() {
			reconcileCache(a.index, a.mapper, a.cache, a.host != nil, trustList(a.cfg.NodeTrusted), types.UID(a.cfg.PodUID))
		})
	})
}

// reconcileEvery bounds how long the cache may hold an entry no live pod wants: one a request added just as its pod's
// role changed, which no informer event follows, would otherwise stay, unrefreshed, until the next one.
const reconcileEvery = time.Minute

// keepReconciled runs reconcile now, on every nudge on dirty, and at least every interval, until ctx is done.
func keepReconciled(ctx context.Context, dirty <-chan struct{}, every time.Duration, reconcile func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		reconcile()
		select {
		case <-ctx.Done():
			return
		case <-dirty:
		case <-t.C:
		}
	}
}

// listen opens the pod-facing faces (IMDS, its hostNetwork listeners, container credentials) and serves them until
// ctx is done; once it returns, readiness counts the listeners up.
func (a *agent) listen(ctx context.Context) error {
	a.awaitSettled()
	key, err := imdsTokenKey(a.cfg.IMDSTokenKeyFile)
	if err != nil {
		return err
	}
	mcfg := metadata.Config{RequireV2: a.cfg.RequireIMDSv2, TokenKey: key, TokenScope: tokenScope, Upstream: a.cfg.NodeIMDS,
		Node: a.cfg.NodeFacts, Logger: a.log}
	imds, err := metadata.NewHandler(mcfg, a.prov, a.reg)
	if err != nil {
		return fmt.Errorf("metadata face: %w", err)
	}
	serveFace := a.podFaces(ctx)
	if err := serveFace(a.cfg.MetadataAddrs, imds, nil); err != nil {
		return err
	}
	if a.host != nil {
		identify := identifyHostCallers(cgroupTracer{cgroups: a.host.cgroups})
		if err := serveFace(hostListeners(a.cfg), imds, identify); err != nil {
			return err
		}
	}
	if len(a.cfg.ContainerAddrs) > 0 {
		ch, err := metadata.NewContainerHandler(metadata.ContainerConfig{Logger: a.log}, a.prov, a.reg)
		if err != nil {
			return fmt.Errorf("container credentials face: %w", err)
		}
		if err := serveFace(a.cfg.ContainerAddrs, ch, nil); err != nil {
			return err
		}
	}
	a.st.listening.Store(true)
	return nil
}

// faceServer serves a pod-facing handler on each of addrs; identify, when set, says which pod a connection is from.
type faceServer func(addrs []netip.AddrPort, h http.Handler, identify func(context.Context, net.Conn) context.Context) error

// podFaces returns what listen serves each face with, until ctx is done: every listener with a rate limiter of its
// own, all counted in one connection table and, with our rules, refusing connections the rules did not redirect.
func (a *agent) podFaces(ctx context.Context) faceServer {
	lm := newLimitMetrics(a.reg)
	conns := newConnTable(a.cfg.Limits.ConnsPerPod, a.cfg.Limits.Conns, lm)
	a.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_listener_connections",
		Help: "Connections the pod-facing listeners hold now (bounded by --max-conns)."}, func() float64 { return float64(conns.Open()) }))
	// With our rules, a connection counts only if they redirected it; without them someone else redirects.
	var redirectedFrom []netip.Addr
	if a.rules != nil {
		redirectedFrom = a.rules.Destinations()
	}
	return func(addrs []netip.AddrPort, h http.Handler, identify func(context.Context, net.Conn) context.Context) error {
		for _, addr := range addrs {
			if err := serveLimited(ctx, addr.String(), limitRate(h, a.cfg.Limits, lm), conns, redirectedFrom, identify, lm, a.log, &a.wg); err != nil {
				return err
			}
		}
		return nil
	}
}

// keepRules reconciles the interception rules every ReconcileInterval, in a goroutine on a.wg: it restores what
// drifted and never removes anything.
func (a *agent) keepRules(ctx context.Context) {
	if a.rules == nil {
		// Off by the operator's choice (a dry run beside kube2iam): no rules of the agent's are in place, and the
		// gauge, and its alert, say so rather than nothing.
		for _, fam := range []string{"ipv4", "ipv6"} {
			a.m.rules.WithLabelValues(fam).Set(0)
		}
		return
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		a.m.rules.WithLabelValues(fam).Set(1)
	}
	a.wg.Go(func() {
		// The guard has just written them: the first pass is an interval on, not in the middle of start-up.
		t := time.NewTimer(a.cfg.ReconcileInterval)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.rules.Reconcile(ctx, a.cfg.ReconcileInterval, func(s iptables.Status) { a.rulesReconciled(ctx, s) })
	})
}

// rulesReconciled records a reconcile in the metrics and readiness and, after a repair, cuts the flows opened while
// the rules were missing.
func (a *agent) rulesReconciled(ctx context.Context, s iptables.Status) {
	a.m.reconciles.Inc()
	a.m.repairs.Add(float64(s.Repaired))
	ok := s.Err == nil
	for fam, present := range s.Present {
		a.m.rules.WithLabelValues(fam).Set(b2f(present))
		ok = ok && present
	}
	a.st.rulesOK.Store(ok)
	if s.Repaired > 0 {
		a.log.Warn("interception rules drifted and were restored", "repaired", s.Repaired)
		if err := a.rules.CutUnredirectedFlows(ctx); err != nil {
			a.log.Warn("could not cut flows the drift let through", "error", err.Error())
		}
	}
	if s.Err != nil {
		a.log.Error("reconciling interception rules", "error", s.Err.Error())
	}
}

// removeStartupTaint, when there is a start-up taint, removes it from the node in a goroutine on a.wg whenever the
// agent is ready and hostNetwork pods are covered where they can be.
func (a *agent) removeStartupTaint(ctx context.Context) {
	if a.cfg.StartupTaint == "" {
		return
	}
	tainted := prometheus.NewGauge(prometheus.GaugeOpts{Name: "iamlet_node_startup_taint",
		Help: "1 while this node carries the start-up taint the agent removes once ready (--startup-taint)."})
	a.reg.MustRegister(tainted)
	t := startupTaint{nodes: a.kube, node: a.cfg.NodeName, key: a.cfg.StartupTaint, log: a.log,
		present: func(p bool) { tainted.Set(b2f(p)) }}
	// Not before hostNetwork pods are covered too: the taint is what keeps them off meanwhile. Where they cannot be
	// (no cgroup v2, no tracing), it stays: a node that cannot confine them is not ready for pods, unless the
	// operator chose so (--host-network-pods=false).
	a.wg.Go(func() {
		t.run(ctx, func() bool { ok, _ := a.st.ready(); return ok && a.hostNetworkCovered() })
	})
}

// hostNetworkCovered reports whether hostNetwork pods are as the operator asked: intercepted, or not asked for.
func (a *agent) hostNetworkCovered() bool {
	return !a.hostNetworkAsked() || (a.host != nil && a.host.status() == hostCovered)
}

// hostNetworkAsked reports whether the operator asked for hostNetwork pods to be intercepted: with the agent's own
// rules and --host-network-pods.
func (a *agent) hostNetworkAsked() bool { return a.rules != nil && a.cfg.HostNetworkPods }

// serveDebug serves the read-only /status, when it has an address, until ctx is done.
func (a *agent) serveDebug(ctx context.Context) error {
	if a.cfg.DebugAddr == "" {
		return nil
	}
	h := statusHandler(a.index, a.mapper, a.cache, a.st, trustList(a.cfg.NodeTrusted), types.UID(a.cfg.PodUID))
	_, err := serve(ctx, a.cfg.DebugAddr, h, a.log, &a.wg)
	return err
}
