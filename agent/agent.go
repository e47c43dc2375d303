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
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/iptables"
	"github.com/iamlet/iamlet/metadata"
)

// Config is everything the agent needs; cmd/iamlet fills it from flags.
type Config struct {
	NodeName   string
	Kubeconfig string // "" = in-cluster

	// TokenMinting is the identity pod tokens are minted with: the node's own (confined to its pods) or the
	// agent's ServiceAccount cluster-wide. ConfinementCheckInterval is how often the agent proves the
	// apiserver still refuses what it must (see satoken.Source.CheckConfined).
	TokenMinting             satoken.Mode
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

	RequireIMDSv2    bool
	IMDSTokenKeyFile string // "" = a per-process key (held tokens do not survive a restart)
	NodeIMDS         string // the node's IMDS, for allow-listed node facts; "" = synthesise
	NodeFacts        metadata.NodeFacts
}

// installRules puts the interception rules in place for both families.
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
	return rules, nil
}

// settleRules finishes what installRules began: it removes old rules from the other backend and cuts the flows
// opened before the rules were in place, which keep their old fate until their conntrack entries go.
func settleRules(ctx context.Context, ic iptables.Config, rules *iptables.Rules, log *slog.Logger) {
	removeOtherBackend(ctx, ic, rules.Backend(), log)
	if err := rules.CutFlows(ctx); err != nil {
		log.Warn("could not cut existing flows to the intercepted addresses", "error", err.Error())
	}
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
	if err := old.RemoveChains(ctx); err != nil {
		log.Warn("could not remove old interception rules from the other iptables backend", "backend", ic.Backend, "error", err.Error())
	}
}

// heldStale is why what the pod index or the role mapper holds may be stale, if it may (kube.Staleness).
func heldStale(index *pods.Index, mapper *roles.Mapper) error {
	if err := index.Stale(); err != nil {
		return err
	}
	return mapper.Stale()
}

// reconcileCache makes the cache hold exactly the live pods' current roles: new pods are prefetched,
// deleted pods and changed roles dropped. While what the index or the mapper holds may be stale, it changes nothing:
// no role would be named, and the whole cache would go (nothing is served meanwhile, and the relist that ends the
// staleness runs it again).
func reconcileCache(index *pods.Index, mapper *roles.Mapper, cache *creds.Cache, hostPods bool, trusted trustList, own types.UID) {
	if heldStale(index, mapper) != nil {
		return
	}
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
	minting                    satoken.Mode
	hostNetwork                func() string // hostNetwork pods: covered, off, or not covered and why
	stale                      func() error  // why what the pod index or the mapper holds may be stale; nil: it is not
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
	// Staleness first: a refusal is why the informers do not sync when the agent's RBAC is wrong from the start.
	if s.stale != nil {
		if err := s.stale(); err != nil {
			return false, err.Error()
		}
	}
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
		// "OPTIONS *" goes to the face like any request, to be refused, counted and logged, not answered by net/http.
		DisableGeneralOptionsHandler: true,
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

func imdsTokenKey(path string) ([]byte, error) {
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
