// Package agent is the node's brain: it works out which pod is calling, which role that pod may use and
// which credentials to serve, and it runs the pieces (informers, credential cache, the IMDS face,
// interception) for the life of the process.
package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/agent/token"
	"github.com/iamlet/iamlet/iptables"
	"github.com/iamlet/iamlet/metadata"
)

// Config is everything the agent needs; cmd/iamlet fills it from flags.
type Config struct {
	NodeName   string
	Kubeconfig string // "" = in-cluster

	// TokenMinting is the identity pod tokens are minted with: the node's own (confined to its pods) or the
	// agent's ServiceAccount cluster-wide. ConfinementCheckInterval is how often the agent proves the
	// apiserver still refuses what it must (see token.Source.CheckConfined).
	TokenMinting             token.Mode
	ConfinementCheckInterval time.Duration

	// MetadataAddrs are the listeners of the IMDS face, at most one per family; interception DNATs to them.
	MetadataAddrs []netip.AddrPort
	// ContainerAddrs are optional listeners of the container-credentials face.
	ContainerAddrs []netip.AddrPort
	MetricsAddr    string // /metrics, /healthz, /readyz
	DebugAddr      string // read-only /status for `iamlet status`; keep it on loopback

	ManageIptables    bool
	IptablesBackend   string
	ReconcileInterval time.Duration

	UnknownPodWait            time.Duration
	RequireNamespaceAllowlist bool
	DefaultAudience           string
	SessionDuration           time.Duration
	DryRun                    bool

	Region      string // STS region; asked of the node's IMDS when empty
	STSEndpoint string
	// PrefetchQPS limits fetches for new pods (burst: a full node's 110), RefreshQPS rotations: separately, so that
	// new pods never wait behind rotations.
	PrefetchQPS   float64
	PrefetchBurst int
	RefreshQPS    float64
	// IssuanceFile, when set, gets a JSON line per credential set issued (see issuance.Record), for `iamlet policy`.
	IssuanceFile string

	Limits Limits // per-pod connection and request limits on the metadata faces

	// StartupTaint is the taint key removed from this node once the agent is ready; "" = none.
	StartupTaint string

	// HostNetworkPods intercepts hostNetwork pods by their sockets' cgroup (needs ManageIptables). CgroupRoot is
	// where the node's cgroup hierarchy is mounted, PodsCgroup the kubelet's pods cgroup below it ("" = detect),
	// PodUID the agent's own pod (exempted), NodeTrusted the namespace/serviceaccount pairs left on the node's IMDS.
	HostNetworkPods bool
	// PerPodMetrics exports the per-pod series (namespace, pod, service_account, role_arn labels); off, only the
	// node's aggregates.
	PerPodMetrics   bool
	HostNetworkPort uint16 // the hostNetwork faces listen on the metadata addresses at this port
	HostRulesDir    string // shared with the host-rules container (hostrules.go)
	CgroupRoot      string
	PodsCgroup      string
	PodUID          string
	NodeTrusted     []string

	RequireIMDSv2 bool
	TokenKeyFile  string // "" = a per-process key (held tokens do not survive a restart)
	NodeIMDS      string // the node's IMDS, for allow-listed node facts; "" = synthesise
	NodeFacts     metadata.NodeFacts
}

// Run runs the agent until ctx is done. Interception rules are left in place when it returns, so pods
// fail closed (connection refused) rather than reaching the node's IMDS.
func Run(ctx context.Context, cfg Config, reg prometheus.Registerer, gatherer prometheus.Gatherer, log *slog.Logger) error {
	if cfg.NodeName == "" {
		return errors.New("the node name is required (set NODE_NAME from the downward API)")
	}
	if len(cfg.MetadataAddrs) == 0 {
		return errors.New("at least one metadata listen address is required")
	}
	// The rules go in before anything that can fail or wait (the region lookup, the informers' sync, the key, the
	// listeners): until the agent serves, pods are refused; an agent that crash-loops keeps them refused.
	var rules *iptables.Rules
	if cfg.ManageIptables {
		var err error
		if rules, err = installRules(ctx, iptablesConfig(cfg), log); err != nil {
			return err
		}
	}
	// hostNetwork pods: the host-rules container writes their rules; a node where they cannot be told apart says so,
	// loudly, and the agent runs on for every other pod.
	var host *hostInterception
	hostState := func() string { return "off" }
	if rules != nil && cfg.HostNetworkPods {
		var err error
		if host, err = startHostInterception(cfg, log); err != nil {
			hostState = func() string { return "not covered: " + err.Error() }
			log.Error("hostNetwork pods are NOT covered: they may reach the node's IMDS", "error", err.Error())
		} else {
			hostState = host.status
		}
	}
	rc, err := kubeConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	minter, err := mintingClient(rc, cfg.TokenMinting, cfg.NodeName)
	if err != nil {
		return err
	}
	if cfg.Region == "" && cfg.STSEndpoint == "" {
		if cfg.Region, err = nodeRegion(ctx, cfg.NodeIMDS, cfg.NodeFacts.Region, log); err != nil {
			return err
		}
	}
	if cfg.NodeFacts.Region == "" {
		cfg.NodeFacts.Region = cfg.Region
	}
	stsClient, err := sts.New(sts.Config{Region: cfg.Region, Endpoint: cfg.STSEndpoint})
	if err != nil {
		return err
	}

	m := newMetrics(reg, cfg.PerPodMetrics)
	index := pods.New(kube, cfg.NodeName, cfg.UnknownPodWait)
	mapper := roles.New(kube, roles.Config{DefaultAudience: cfg.DefaultAudience, DefaultDuration: cfg.SessionDuration,
		RequireNamespaceAllowlist: cfg.RequireNamespaceAllowlist})
	st := &state{minting: cfg.TokenMinting, hostNetwork: hostState}
	if host != nil {
		host.reconcile(nil, false, time.Now()) // host-rules' state only: which pods are trusted waits for the informers
	}
	st.rulesOK.Store(true) // installed above, or not ours to manage
	tokens := token.New(minter, token.MinTTL)
	fetch := &fetcher{tokens: tokens, confined: st.confinedErr, sts: stsClient, metrics: m, log: log}
	if cfg.IssuanceFile != "" {
		if fetch.issued, err = openIssuanceFile(cfg.IssuanceFile); err != nil {
			return err
		}
		defer fetch.issued.Close()
	}
	cache := creds.New(fetch, creds.Config{PrefetchQPS: cfg.PrefetchQPS, PrefetchBurst: cfg.PrefetchBurst, RefreshQPS: cfg.RefreshQPS,
		Observer: observer{metrics: m, log: log}})
	prov := &provider{pods: index, roles: mapper, cache: cache, metrics: m, log: log, dryRun: cfg.DryRun,
		trusted: trustList(cfg.NodeTrusted).trusts}

	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_informer_synced", Help: "1 when the pod, ServiceAccount and Namespace informers have synced."},
			func() float64 { return b2f(index.HasSynced() && mapper.HasSynced()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_informer_pods_indexed", Help: "Live pods of this node in the IP index."},
			func() float64 { return float64(len(index.Live())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_credentials_cache_entries", Help: "Entries in the credential cache."},
			func() float64 { return float64(cache.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_host_network_intercepted",
			Help: "1 when hostNetwork pods are intercepted by cgroup; 0 when they are not (off, or the node cannot: see the log and /readyz)."},
			func() float64 { return b2f(hostState() == hostCovered) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_token_minting_confined",
			Help: "1 while the last confinement check saw the apiserver refuse what it must; 0 before the first check or after one that failed."},
			func() float64 { return b2f(st.confinedErr() == nil) }),
	)
	mintingInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iamlet_token_minting_info",
		Help: "The identity pod tokens are minted with: mode=\"node\" (confined to this node's pods) or \"cluster\" (cluster-wide)."}, []string{"mode"})
	mintingInfo.WithLabelValues(string(cfg.TokenMinting)).Set(1)
	reg.MustRegister(mintingInfo)
	if cfg.TokenMinting == token.ClusterWide {
		log.Warn("cluster-wide minting: the agent's ServiceAccount can mint tokens for every ServiceAccount in the cluster, narrowed only by the admission policy; use --token-minting=node where the apiserver supports constrained impersonation (Kubernetes 1.35+)")
	} else {
		log.Info("node-confined minting: pod tokens are minted as the node", "node", cfg.NodeName)
	}

	// Defers run last first: cancel stops the servers and loops, then Wait sees them gone. The other order would
	// leave a start-up error waiting forever on servers that never stop.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	goRun := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }

	// Observability first, so /healthz answers and /readyz says why it is not ready yet.
	if cfg.MetricsAddr != "" {
		if _, err := serve(ctx, cfg.MetricsAddr, opsHandler(gatherer, st), log, &wg); err != nil {
			return err
		}
	}

	// Any change to pods, ServiceAccounts or Namespaces re-derives what the cache should hold.
	dirty := make(chan struct{}, 1)
	mark := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	index.AddHandler(mark)
	mapper.AddHandler(mark)
	hostChanged := make(chan struct{}, 1)
	index.AddHandler(func() {
		select {
		case hostChanged <- struct{}{}:
		default:
		}
	})
	goRun(func() { index.Run(ctx) })
	mapper.Start(ctx)
	defer func() { cancel(); mapper.Shutdown() }() // Shutdown waits for informers that stop only once ctx is done

	log.Info("waiting for informers to sync", "node", cfg.NodeName)
	if err := waitFor(ctx, func() bool { return index.HasSynced() && mapper.HasSynced() }); err != nil {
		return fmt.Errorf("informers did not sync: %w", err)
	}
	st.synced.Store(true)
	if host != nil {
		goRun(func() { host.run(ctx, cfg.ReconcileInterval, index, hostChanged) })
	}
	self, err := ownServiceAccount(ctx, kube, cfg.TokenMinting, cfg.NodeName)
	if err != nil {
		return err
	}
	checkConfinement(ctx, tokens, self, st, log)
	goRun(func() {
		for {
			// A failed check is repeated soon, so a blip at start costs seconds of readiness, not minutes.
			next := cfg.ConfinementCheckInterval
			if st.confinedErr() != nil {
				next = min(next, 5*time.Second)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(next):
				checkConfinement(ctx, tokens, self, st, log)
			}
		}
	})
	goRun(func() { cache.Run(ctx) })
	goRun(func() {
		for {
			reconcileCache(index, mapper, cache, host != nil, trustList(cfg.NodeTrusted), types.UID(cfg.PodUID))
			select {
			case <-ctx.Done():
				return
			case <-dirty:
			}
		}
	})

	key, err := tokenKey(cfg.TokenKeyFile)
	if err != nil {
		return err
	}
	mcfg := metadata.Config{RequireV2: cfg.RequireIMDSv2, TokenKey: key, Upstream: cfg.NodeIMDS, Node: cfg.NodeFacts, Logger: log}
	imds, err := metadata.NewHandler(mcfg, prov, reg)
	if err != nil {
		return fmt.Errorf("metadata face: %w", err)
	}
	lm := newLimitMetrics(reg)
	conns := newConnTable(cfg.Limits.ConnsPerPod, cfg.Limits.Conns, lm)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iamlet_listener_connections",
		Help: "Connections the pod-facing listeners hold now (bounded by --max-conns)."}, func() float64 { return float64(conns.Open()) }))
	// With our rules, a connection counts only if they redirected it; without them someone else redirects.
	var redirectedFrom []netip.Addr
	if rules != nil {
		redirectedFrom = []netip.Addr{iptables.IMDSv4, iptables.IMDSv6, iptables.ContainerV4, iptables.ContainerV6}
	}
	for _, a := range cfg.MetadataAddrs {
		if err := serveLimited(ctx, a.String(), limitRate(imds, cfg.Limits, lm), conns, redirectedFrom, nil, lm, log, &wg); err != nil {
			return err
		}
	}
	if host != nil {
		identify := identifyHostCallers(cgroupTracer{cgroups: host.cgroups})
		for _, a := range hostListeners(cfg) {
			if err := serveLimited(ctx, a.String(), limitRate(imds, cfg.Limits, lm), conns, redirectedFrom, identify, lm, log, &wg); err != nil {
				return err
			}
		}
	}
	if len(cfg.ContainerAddrs) > 0 {
		ch, err := metadata.NewContainerHandler(metadata.ContainerConfig{Logger: log}, prov, reg)
		if err != nil {
			return fmt.Errorf("container credentials face: %w", err)
		}
		for _, a := range cfg.ContainerAddrs {
			if err := serveLimited(ctx, a.String(), limitRate(ch, cfg.Limits, lm), conns, redirectedFrom, nil, lm, log, &wg); err != nil {
				return err
			}
		}
	}
	st.listening.Store(true)

	if rules != nil {
		for _, fam := range []string{"ipv4", "ipv6"} {
			m.rules.WithLabelValues(fam).Set(1)
		}
		goRun(func() {
			rules.Reconcile(ctx, cfg.ReconcileInterval, func(s iptables.Status) {
				m.reconciles.Inc()
				m.repairs.Add(float64(s.Repaired))
				ok := s.Err == nil
				for fam, present := range s.Present {
					m.rules.WithLabelValues(fam).Set(b2f(present))
					ok = ok && present
				}
				st.rulesOK.Store(ok)
				if s.Repaired > 0 {
					log.Warn("interception rules drifted and were restored", "repaired", s.Repaired)
					cutFlows(ctx, log, iptables.FlushUnredirected)
				}
				if s.Err != nil {
					log.Error("reconciling interception rules", "error", s.Err.Error())
				}
			})
		})
	}

	if cfg.StartupTaint != "" {
		tainted := prometheus.NewGauge(prometheus.GaugeOpts{Name: "iamlet_node_startup_taint",
			Help: "1 while this node carries the start-up taint the agent removes once ready (--startup-taint)."})
		reg.MustRegister(tainted)
		t := startupTaint{kube: kube, node: cfg.NodeName, key: cfg.StartupTaint, log: log,
			present: func(p bool) { tainted.Set(b2f(p)) }}
		// Not before hostNetwork pods are covered too, where they can be: the taint is what keeps them off meanwhile.
		goRun(func() {
			t.run(ctx, func() bool { ok, _ := st.ready(); return ok && (host == nil || host.status() == hostCovered) })
		})
	}

	if cfg.DebugAddr != "" {
		if _, err := serve(ctx, cfg.DebugAddr, statusHandler(index, mapper, cache, st, trustList(cfg.NodeTrusted), types.UID(cfg.PodUID)), log, &wg); err != nil {
			return err
		}
	}
	log.Info("iamlet ready", "node", cfg.NodeName, "metadata", fmt.Sprint(cfg.MetadataAddrs))
	<-ctx.Done()
	log.Info("shutting down; interception rules stay in place")
	return nil
}

// installRules puts the interception rules in place for both families and cuts flows that were opened
// without them.
func installRules(ctx context.Context, ic iptables.Config, log *slog.Logger) (*iptables.Rules, error) {
	rules, openErr := iptables.New(ic, log)
	if rules == nil {
		return nil, fmt.Errorf("interception: %w", openErr)
	}
	// What could be opened is installed even when a family could not be: the agent then exits, its rules stay.
	repaired, err := rules.Ensure(ctx)
	if err := errors.Join(openErr, err); err != nil {
		return nil, fmt.Errorf("installing interception rules (those that could be installed stay): %w", err)
	}
	log.Info("interception rules in place", "backend", rules.Backend(), "created", len(repaired),
		"redirected", fmt.Sprint(ic.MetadataV4, " ", ic.MetadataV6))
	removeOtherBackend(ctx, ic, rules.Backend(), log)
	cutFlows(ctx, log, iptables.FlushConntrack)
	return rules, nil
}

// removeOtherBackend removes iamlet's chains from the backend the agent does not use: left by an earlier
// configuration (a changed iptablesBackend, or auto detecting the other one), the kernel would still apply them
// beside the current ones. Only after the current rules are in place, so the node is never unguarded.
func removeOtherBackend(ctx context.Context, ic iptables.Config, current string, log *slog.Logger) {
	ic.Backend = "legacy"
	if current == "legacy" {
		ic.Backend = "nft"
	}
	if !iptables.HasChains(ctx, ic.Backend) {
		return
	}
	log.Info("removing old interception rules from the iptables backend the agent no longer uses", "backend", ic.Backend)
	old, err := iptables.New(ic, log)
	if old == nil {
		// Expected where the other backend cannot be opened (legacy without NET_RAW, with iptablesBackend: nft).
		log.Debug("the other iptables backend cannot be checked for old rules", "backend", ic.Backend, "error", err.Error())
		return
	}
	if err := old.Remove(ctx); err != nil {
		log.Warn("could not remove old interception rules from the other iptables backend", "backend", ic.Backend, "error", err.Error())
	}
}

// cutFlows deletes conntrack entries to the node's metadata addresses: a flow opened while the rules
// were missing keeps its old (un-redirected) path until its entry goes. At start every flow goes (none
// can be to this process yet); after a repair only the un-redirected ones, so pods mid-request are
// still answered.
func cutFlows(ctx context.Context, log *slog.Logger, flush func(context.Context, netip.Addr) error) {
	for _, a := range []netip.Addr{iptables.IMDSv4, iptables.IMDSv6} {
		if err := flush(ctx, a); err != nil {
			log.Warn("could not cut existing flows to the node metadata address", "address", a.String(), "error", err.Error())
		}
	}
}

// reconcileCache makes the cache hold exactly the live pods' current roles: new pods are prefetched,
// deleted pods and changed roles dropped.
func reconcileCache(index *pods.Index, mapper *roles.Mapper, cache *creds.Cache, hostPods bool, trusted trustList, own types.UID) {
	var want []creds.Request
	live := index.Live()
	if hostPods {
		for _, p := range index.LiveHost() {
			if !trusted.trusts(p) && p.UID != own {
				live = append(live, p)
			}
		}
	}
	for _, p := range live {
		if r, err := mapper.RoleFor(p.Namespace, p.ServiceAccount); err == nil {
			want = append(want, requestFor(p, r))
		}
	}
	cache.Retain(want)
}

func iptablesConfig(cfg Config) iptables.Config {
	ic := iptables.Config{Backend: cfg.IptablesBackend, LockWait: 5 * time.Second}
	for _, a := range cfg.MetadataAddrs {
		if a.Addr().Is4() {
			ic.MetadataV4 = a
		} else {
			ic.MetadataV6 = a
		}
	}
	for _, a := range cfg.ContainerAddrs {
		if a.Addr().Is4() {
			ic.ContainerV4 = a
		} else {
			ic.ContainerV6 = a
		}
	}
	return ic
}

// state is what readiness and status report.
type state struct {
	synced, listening, rulesOK atomic.Bool
	minting                    token.Mode
	hostNetwork                func() string // hostNetwork pods: covered, off, or not covered and why
	// confinement is the last confinement check's failure; nil before the first check.
	confinement atomic.Pointer[error]
}

var errNotChecked = errors.New("token minting confinement not checked yet")

// confinedErr is nil while the last confinement check passed: only then are new tokens minted.
func (s *state) confinedErr() error {
	if p := s.confinement.Load(); p != nil {
		return *p
	}
	return errNotChecked
}

func (s *state) ready() (bool, string) {
	switch {
	case !s.synced.Load():
		return false, "informers not synced"
	case !s.listening.Load():
		return false, "metadata listener not up"
	case !s.rulesOK.Load():
		return false, "interception rules not in place"
	}
	if err := s.confinedErr(); err != nil {
		return false, s.minting.Describe() + ": " + err.Error()
	}
	return true, "ok: " + s.minting.Describe() + "; hostNetwork pods " + s.hostNetwork()
}

func opsHandler(g prometheus.Gatherer, st *state) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := st.ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte(why + "\n"))
	})
	return mux
}

// serve listens on addr and serves h until ctx is done, with timeouts that keep slow or abusive
// clients from holding the agent (SDKs give an answer 1 s, so nothing legitimate is slower).
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger, wg *sync.WaitGroup) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return serveOn(ctx, ln, h, nil, log, wg), nil
}

// serveLimited is serve for the pod-facing faces: connections not redirected from one of redirectedFrom (when
// given) are closed at once, the others counted against conns.
func serveLimited(ctx context.Context, addr string, h http.Handler, conns *connTable, redirectedFrom []netip.Addr,
	connContext func(context.Context, net.Conn) context.Context, m *limitMetrics, log *slog.Logger, wg *sync.WaitGroup) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	if redirectedFrom != nil {
		ln = onlyRedirected(ln, redirectedFrom, m.unredirected)
	}
	serveOn(ctx, conns.limit(ln), h, connContext, log, wg)
	return nil
}

func serveOn(ctx context.Context, ln net.Listener, h http.Handler, connContext func(context.Context, net.Conn) context.Context,
	log *slog.Logger, wg *sync.WaitGroup) *http.Server {
	addr := ln.Addr().String()
	srv := &http.Server{
		Handler:           h,
		ConnContext:       connContext,
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("server stopped", "addr", addr, "error", err.Error())
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return srv
}

func waitFor(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func kubeConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	rc.UserAgent = "iamlet"
	rc.QPS, rc.Burst = 50, 100
	return rc, nil
}

func tokenKey(path string) ([]byte, error) {
	if path == "" {
		key := make([]byte, 32)
		_, err := rand.Read(key)
		return key, err
	}
	return metadata.LoadOrCreateKey(path)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
