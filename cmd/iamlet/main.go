// Command iamlet is the node agent: it serves each pod its own IAM role's credentials on the instance
// metadata address and keeps pods away from the node's own.
//
//	iamlet [run] [flags]      run the agent (the DaemonSet's command)
//	iamlet status [-o json]   show the node's pods, their roles and credential state
//	iamlet uninstall          remove the interception rules (a real uninstall; pods then reach the node's IMDS)
//	iamlet host-rules         write the hostNetwork pods' rules (the pod's privileged container; see agent/hostrules.go)
//	iamlet policy             least-privilege policies from CloudTrail and issuance records (see policy/trail)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/iamlet/iamlet/agent"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/iptables"
)

// version is set at build time (-ldflags "-X main.version=v1.2.3"); the commit and Go version come from the
// build information the Go toolchain embeds.
var version = "dev"

const usage = `iamlet serves each pod its own IAM role's credentials on the instance metadata address.

Usage:
  iamlet [run] [flags]         run the agent (the DaemonSet's iamlet container)
  iamlet host-rules [flags]    write the hostNetwork pods' rules (the DaemonSet's privileged host-rules container)
  iamlet status [flags]        show the node's pods, their roles and credential state
  iamlet uninstall [flags]     remove the interception rules (pods then reach the node's IMDS)
  iamlet cleanup-hook [flags]  the chart's uninstall hook: wait for the clean-up DaemonSet, then delete it
  iamlet namespace-label [flags]  the chart's install hook: give its namespace the Pod Security label the agent needs
  iamlet policy [flags]        least-privilege policies per ServiceAccount from CloudTrail and issuance records
  iamlet policy check [flags]  the observed calls a session policy would deny (exit 1 if any)
  iamlet version               print the version, commit and Go version

"iamlet COMMAND -h" lists a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli runs one command and returns the exit code: 0, 1 for a failure, 2 for a command line that cannot be used.
func cli(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = run(ctx, args, stderr)
	case "status":
		err = status(ctx, args, stdout, stderr)
	case "uninstall":
		err = uninstall(ctx, args, stderr)
	case "host-rules":
		err = hostRules(ctx, args, stderr)
	case "policy":
		err = policyCmd(ctx, args, stdout, stderr)
	case "cleanup-hook":
		err = cleanupHook(ctx, args, stderr)
	case "namespace-label":
		err = namespaceLabel(ctx, args, stderr)
	case "version":
		fmt.Fprintln(stdout, versionLine())
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "iamlet: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var bad *badFlags
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &bad):
		return 2 // the flag package has printed the error and the command's flags
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "iamlet:", err)
		return 2
	}
	fmt.Fprintln(stderr, "iamlet:", err)
	return 1
}

// usageError is a command line whose values cannot be used; cli prints it and exits 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func badValue(err error) error { return &usageError{err} }

// badFlags is a command line the flag package refused.
type badFlags struct{ err error }

func (e *badFlags) Error() string { return e.err.Error() }
func (e *badFlags) Unwrap() error { return e.err }

// fromEnv sets each flag of fs from IAMLET_<NAME> (upper case, dashes as underscores) when that is set, so a
// DaemonSet can configure through env; the command line, parsed afterwards, wins.
func fromEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := "IAMLET_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// parse parses args with fs, telling a refused command line from -h.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil && !errors.Is(err, flag.ErrHelp) {
		return &badFlags{err}
	} else if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		return &badFlags{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	return nil
}

func versionLine() string {
	commit, goVersion := "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, st := range bi.Settings {
			if st.Key == "vcs.revision" {
				commit = st.Value
			}
		}
	}
	return fmt.Sprintf("iamlet %s (commit %s, %s)", version, commit, goVersion)
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg agent.Config
	var metadataAddrs, containerAddrs, metricsAddr, interfaces, logFormat, logLevel, minting, trusted string
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME, from the downward API)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty for in-cluster config")
	fs.StringVar(&minting, "token-minting", string(satoken.AsNode), "whose identity pod tokens are minted with: node (constrained impersonation of this node, Kubernetes 1.35+: only this node's pods) or cluster (the agent's ServiceAccount, cluster-wide, narrowed by the admission policy)")
	fs.DurationVar(&cfg.ConfinementCheckInterval, "confinement-check-interval", 5*time.Minute, "how often the agent checks that the apiserver still refuses a token it must refuse")
	fs.StringVar(&metadataAddrs, "metadata-addr", envOr("METADATA_ADDR", ""), "comma-separated listen addresses of the IMDS face, at most one per family: address:port, or a bare address with --metadata-port (e.g. $(HOST_IPS) from status.hostIPs); interception DNATs to them")
	metadataPort := fs.Uint("metadata-port", 8181, "port for bare addresses in --metadata-addr")
	fs.StringVar(&containerAddrs, "container-addr", "", "comma-separated listen addresses of the container-credentials face (169.254.170.23 style); empty = off")
	fs.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1", "listen address for /metrics, /healthz and /readyz: address:port, or a bare address with --metrics-port (the manifests pass $(POD_IP), the node's primary address); empty = off")
	metricsPort := fs.Uint("metrics-port", 9180, "port for a bare address in --metrics-addr")
	memoryLimit := fs.Int64("memory-limit", 0, "the container's memory limit in bytes (the manifests pass limits.memory from the downward API): the Go runtime collects garbage harder as it nears 3/4 of it; GOMEMLIMIT, when set, wins; 0 = none")
	fs.StringVar(&cfg.DebugAddr, "debug-addr", "127.0.0.1:9181", "loopback listen address of the read-only /status endpoint that iamlet status reads")
	fs.BoolVar(&cfg.ManageIptables, "iptables", true, "install and reconcile the interception rules")
	fs.StringVar(&interfaces, "interfaces", "", "deprecated and ignored: interception covers every pod interface (rules name none)")
	fs.StringVar(&cfg.IptablesBackend, "iptables-backend", "auto", "auto, nft or legacy")
	fs.BoolVar(&cfg.PerPodMetrics, "per-pod-metrics", true, "export per-pod series (namespace, pod, service_account, role_arn); false keeps only the node's aggregates, a fixed number of series")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", 5*time.Second, "how often interception rules are checked and restored")
	fs.DurationVar(&cfg.UnknownPodWait, "unknown-pod-wait", time.Second, "how long a request from an address not yet known waits for its pod to appear")
	fs.BoolVar(&cfg.RequireNamespaceAllowlist, "require-namespace-allowlist", false, "deny roles in namespaces without the iamlet.dev/allowed-roles annotation")
	fs.StringVar(&cfg.DefaultAudience, "default-audience", "sts.amazonaws.com", "token audience when a ServiceAccount has no eks.amazonaws.com/audience")
	fs.DurationVar(&cfg.SessionDuration, "session-duration", time.Hour, "default STS session duration (900s..12h)")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "identify callers and log the role each would get, but serve no credentials (for migrations)")
	fs.StringVar(&cfg.Region, "region", os.Getenv("AWS_REGION"), "STS region; asked of the node's IMDS when empty")
	fs.StringVar(&cfg.STSEndpoint, "sts-endpoint", "", "STS endpoint override (a VPC endpoint, or a test STS)")
	fs.Float64Var(&cfg.PrefetchQPS, "prefetch-qps", 50, "credential fetches per second for new pods, after --prefetch-burst")
	fs.IntVar(&cfg.PrefetchBurst, "prefetch-burst", 110, "new pods' credential fetches at once: a node filling up (the kubelet's max-pods)")
	fs.Float64Var(&cfg.RefreshQPS, "refresh-qps", 10, "credential rotations per second (new pods have their own limit, --prefetch-qps)")
	fs.StringVar(&cfg.IssuanceFile, "issuance-file", "", "append a JSON line per credential set issued to this file, for `iamlet policy` (access key IDs, never secrets)")
	fs.IntVar(&cfg.Limits.ConnsPerPod, "max-conns-per-pod", 64, "concurrent connections one pod may hold to the metadata faces; 0 = unlimited")
	fs.IntVar(&cfg.Limits.Conns, "max-conns", 512, "concurrent connections all pods together may hold to the metadata faces (bounds the agent's memory); at the bound a pod holding fewer than the heaviest still gets in, the heaviest's oldest connection is closed; 0 = unlimited")
	fs.Float64Var(&cfg.Limits.RequestsPerPod, "requests-per-pod", 200, "sustained requests per second one pod may make; 0 = unlimited")
	fs.IntVar(&cfg.Limits.BurstPerPod, "request-burst-per-pod", 1000, "requests one pod may make at once above --requests-per-pod")
	fs.DurationVar(&cfg.Limits.MaxWait, "request-max-wait", 250*time.Millisecond, "how long a request over the pod's rate waits for its turn before it is answered 429 (SDKs time out after 1 s)")
	fs.BoolVar(&cfg.HostNetworkPods, "host-network-pods", true, "intercept hostNetwork pods by their sockets' cgroup (cgroup v2, nf_tables) and serve each its own role; when the node cannot, the agent says so and they keep the node's IMDS")
	hostNetworkPort := fs.Uint("host-network-port", 8182, "port of the hostNetwork pods' listeners on the --metadata-addr addresses (apart from the pods', so a connection is never identified the wrong way)")
	fs.StringVar(&cfg.HostRulesDir, "host-rules-dir", "/run/iamlet", "directory shared with the host-rules container: the agent names the node-trusted pods' cgroups there and reads back the rules' state")
	fs.StringVar(&cfg.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "where the node's cgroup hierarchy is mounted in the agent's container (a hostPath mount of the host's /sys/fs/cgroup)")
	fs.StringVar(&cfg.PodsCgroup, "pods-cgroup", "", "the kubelet's pods cgroup below --cgroup-root; empty = detect kubepods.slice or kubepods")
	fs.StringVar(&cfg.PodUID, "pod-uid", os.Getenv("POD_UID"), "the agent's own pod UID (default $POD_UID, from metadata.uid): its requests keep the node's IMDS")
	fs.StringVar(&trusted, "node-trusted", "", "comma-separated namespace/serviceaccount of hostNetwork pods left on the node's IMDS and its role (e.g. kube-system/aws-node, which manages the node's network interfaces)")
	fs.StringVar(&cfg.StartupTaint, "startup-taint", "iamlet.dev/agent-not-ready", "taint key the agent removes from its own node once it is ready (register nodes with it so no pod starts before the agent serves); empty = none")
	fs.BoolVar(&cfg.RequireIMDSv2, "require-imdsv2", false, "refuse IMDSv1 requests (like EC2's HttpTokens=required)")
	fs.StringVar(&cfg.IMDSTokenKeyFile, "token-key-file", "", "file holding the IMDSv2 token key, created if absent; empty = a per-process key")
	fs.StringVar(&cfg.NodeIMDS, "node-imds", "http://169.254.169.254", "the node's own IMDS, for allow-listed node facts and the region; empty = synthesise")
	fs.StringVar(&logFormat, "log-format", "json", "json or text")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fromEnv(fs, os.LookupEnv); err != nil {
		return &badFlags{err}
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	// Everything up to the agent's start is the command line's fault: exit 2, with the reason.
	log, err := func() (*slog.Logger, error) {
		log, err := newLogger(stderr, logFormat, logLevel)
		if err != nil {
			return nil, badValue(err)
		}
		for name, p := range map[string]uint{"--metadata-port": *metadataPort, "--metrics-port": *metricsPort, "--host-network-port": *hostNetworkPort} {
			if p == 0 || p > 65535 {
				return nil, badValue(fmt.Errorf("%s %d: want 1..65535", name, p))
			}
		}
		cfg.HostNetworkPort = uint16(*hostNetworkPort)
		if metricsAddr != "" {
			a, err := parseAddrs(metricsAddr, uint16(*metricsPort))
			if err != nil || len(a) != 1 {
				return nil, badValue(fmt.Errorf("--metrics-addr %q: want one address, with or without a port: %v", metricsAddr, err))
			}
			cfg.MetricsAddr = a[0].String()
		}
		if *memoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
			// The rest of the container's limit is the binary's own pages and the kernel's socket buffers.
			debug.SetMemoryLimit(*memoryLimit / 4 * 3)
		}
		if cfg.MetadataAddrs, err = parseAddrs(metadataAddrs, uint16(*metadataPort)); err != nil {
			return nil, badValue(fmt.Errorf("--metadata-addr: %w", err))
		}
		if cfg.ContainerAddrs, err = parseAddrs(containerAddrs, 0); err != nil {
			return nil, badValue(fmt.Errorf("--container-addr: %w", err))
		}
		if interfaces != "" {
			log.Warn("--interfaces is deprecated and ignored: interception covers every pod interface", "interfaces", interfaces)
		}
		if cfg.NodeTrusted, err = agent.ParseNodeTrusted(trusted); err != nil {
			return nil, badValue(fmt.Errorf("--node-trusted: %w", err))
		}
		if cfg.HostNetworkPods && cfg.ManageIptables && cfg.PodUID == "" {
			return nil, badValue(errors.New("--pod-uid (or POD_UID from metadata.uid) is required to intercept hostNetwork pods: the agent's own requests must keep the node's IMDS"))
		}
		if cfg.TokenMinting, err = satoken.ParseMode(minting); err != nil {
			return nil, badValue(fmt.Errorf("--token-minting: %w", err))
		}
		if cfg.ConfinementCheckInterval <= 0 {
			return nil, badValue(errors.New("--confinement-check-interval must be positive"))
		}
		return log, nil
	}()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return agent.Run(ctx, cfg, reg, reg, log)
}

func uninstall(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet uninstall", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backend := fs.String("iptables-backend", "auto", "auto, nft or legacy")
	wait := fs.Duration("wait-for-agent", 0, "first wait up to this long until no agent listens on this node (--metadata-port, --host-network-port), so a terminating agent cannot restore the rules")
	metadataPort := fs.Uint("metadata-port", 8181, "the agent's --metadata-port")
	hostPort := fs.Uint("host-network-port", 8182, "the agent's --host-network-port")
	agentDS := fs.String("after-daemonset-deleted", "", "NAMESPACE/NAME of the agent's DaemonSet: remove nothing while it exists (the chart's uninstall hook; in-cluster credentials)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *agentDS != "" {
		if err := waitDaemonSetGone(ctx, *agentDS, *wait); err != nil {
			return err
		}
	}
	if *wait > 0 {
		if err := waitAgentGone(ctx, []uint{*metadataPort, *hostPort}, agent.HostRulesAlive, *wait); err != nil {
			return err
		}
	}
	log, _ := newLogger(os.Stderr, "text", "info")
	// Remove works from the chains' names, so any listener address satisfies the config.
	rules, err := iptables.New(iptables.Config{
		MetadataV4: netip.MustParseAddrPort("127.0.0.1:8181"),
		MetadataV6: netip.MustParseAddrPort("[::1]:8181"),
		Backend:    *backend,
		LockWait:   5 * time.Second,
	}, log)
	if rules == nil {
		// The routing guard is no iptables': removed all the same, or it would refuse pods the node's IMDS for good.
		return errors.Join(err, iptables.RemoveRoutingGuard())
	}
	err = errors.Join(err, rules.Remove(ctx), iptables.RemoveRoutingGuard()) // the latter: a family iptables could not open
	// The hostNetwork table is found by its name; the config only has to be valid.
	if host, herr := iptables.NewHostRules(iptables.HostConfig{Pods: iptables.CgroupRef{Level: 1, ID: 1}}, log); herr == nil {
		err = errors.Join(err, host.Remove())
	} else {
		log.Warn("no nf_tables here, so no hostNetwork rules to remove", "error", herr.Error())
	}
	if err != nil {
		return fmt.Errorf("removing interception rules: %w", err)
	}
	fmt.Fprintln(os.Stderr, "iamlet: interception rules removed; pods on this node can now reach the node's own IMDS")
	return nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// parseAddrs reads a list of address:port, or of bare addresses given port (0: bare addresses are an error).
// Bare addresses are what the downward API's status.hostIPs gives, IPv6 ones unbracketed.
func parseAddrs(s string, port uint16) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	seen := map[bool]bool{}
	for _, f := range splitList(s) {
		a, err := netip.ParseAddrPort(f)
		if err != nil && port != 0 {
			var ip netip.Addr
			if ip, err = netip.ParseAddr(strings.Trim(f, "[]")); err == nil {
				a = netip.AddrPortFrom(ip.Unmap(), port)
			}
		}
		if err != nil {
			return nil, err
		}
		if seen[a.Addr().Is4()] {
			return nil, fmt.Errorf("%s: at most one address per family", f)
		}
		seen[a.Addr().Is4()] = true
		out = append(out, a)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
