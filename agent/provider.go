package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/agent/pods"
	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/agent/satoken"
	"github.com/iamlet/iamlet/agent/sts"
	"github.com/iamlet/iamlet/metadata"
)

// podFinder and roleMapper are what the provider needs of the pod index and the role mapper.
type podFinder interface {
	Lookup(ctx context.Context, ip netip.Addr) (pods.Pod, error)
	HostPod(ctx context.Context, uid types.UID) (pods.Pod, error)
}

type roleMapper interface {
	RoleFor(namespace, serviceAccount string) (roles.Role, error)
}

type credentialCache interface {
	Get(ctx context.Context, r creds.Request) (creds.Credentials, creds.Outcome, error)
}

// provider answers "which credentials for this caller": source IP -> one live pod -> its
// ServiceAccount's role -> the cached credentials of that (pod UID, role). It implements
// metadata.CredentialProvider and fails closed at every step.
type provider struct {
	pods    podFinder
	roles   roleMapper
	cache   credentialCache
	metrics *metrics
	log     *slog.Logger
	dryRun  bool
	// trusted tells node-trusted hostNetwork pods, which are exempted from interception rather than served.
	trusted func(pods.Pod) bool
}

// identify finds the one live pod calling: by its socket's cgroup for a caller in the node's own network namespace
// (a hostNetwork pod, whose address is the node's), otherwise by its address.
func (p *provider) identify(ctx context.Context, caller netip.Addr) (pods.Pod, error) {
	hc, host := hostCallerOf(ctx)
	switch {
	case !host:
		return p.pods.Lookup(ctx, caller)
	case hc.err != nil:
		return pods.Pod{}, fmt.Errorf("a process of the node's network namespace not traced to a pod: %w", hc.err)
	}
	pod, err := p.pods.HostPod(ctx, hc.uid)
	if err == nil && p.trusted != nil && p.trusted(pod) {
		// Its exemption is not in place yet (the agent is starting, or the pod just did): it asks again shortly.
		return pods.Pod{}, fmt.Errorf("%w: node-trusted hostNetwork pod %s/%s is not exempted yet", errTrustedNotExempt, pod.Namespace, pod.Name)
	}
	return pod, err
}

var errTrustedNotExempt = errors.New("node-trusted")

func (p *provider) Credentials(ctx context.Context, caller netip.Addr) (metadata.Credentials, error) {
	pod, err := p.identify(ctx, caller)
	if err != nil {
		reason := "unknown_pod"
		switch {
		case errors.Is(err, errTrustedNotExempt):
			reason = "not_exempt"
		case errors.Is(err, kube.ErrRefused):
			reason = "pods_refused"
		case errors.Is(err, kube.ErrUnanswered):
			reason = "pods_unanswered"
		}
		attrs := []slog.Attr{slog.Bool("audit", true), slog.String("caller", caller.String()),
			slog.String("outcome", "refused"), slog.String("reason", reason), slog.String("error", err.Error())}
		if hc, host := hostCallerOf(ctx); host {
			attrs = append(attrs, slog.Bool("host_network", true), slog.String("pod_uid", string(hc.uid)))
		}
		refusal := fmt.Errorf("%w: %s: %w", metadata.ErrUnknownCaller, caller, err)
		if reason != "unknown_pod" { // not the caller's fault: it asks again shortly
			refusal = fmt.Errorf("%w: %w", metadata.ErrUnavailable, err)
		}
		return metadata.Credentials{}, p.refused(ctx, refusal, attrs)
	}
	// Built only on the paths that log: the served path logs at debug, normally off.
	attrs := func(more ...slog.Attr) []slog.Attr {
		return append([]slog.Attr{slog.Bool("audit", true), slog.String("caller", caller.String()),
			slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name), slog.String("pod_uid", string(pod.UID)),
			slog.String("service_account", pod.ServiceAccount)}, more...)
	}

	role, err := p.roles.RoleFor(pod.Namespace, pod.ServiceAccount)
	if err != nil {
		reason, sentinel := "not_allowed", metadata.ErrForbidden
		switch {
		case errors.Is(err, roles.ErrNoRole):
			reason, sentinel = "no_role", metadata.ErrNoRole
		case errors.Is(err, roles.ErrInvalidPolicy):
			reason = "bad_session_policy"
		case errors.Is(err, kube.ErrRefused): // not the pod's fault: it asks again shortly
			reason, sentinel = "roles_refused", metadata.ErrUnavailable
		case errors.Is(err, kube.ErrUnanswered):
			reason, sentinel = "roles_unanswered", metadata.ErrUnavailable
		}
		return metadata.Credentials{}, p.refused(ctx, fmt.Errorf("%w: %w", sentinel, err), attrs(slog.String("outcome", "refused"),
			slog.String("reason", reason), slog.String("error", err.Error())))
	}
	req := requestFor(pod, role)
	roleAttr := slog.String("role_arn", role.ARN)

	if p.dryRun {
		err := fmt.Errorf("%w: dry-run mode serves no credentials (would serve %s)", metadata.ErrUnavailable, role.ARN)
		p.log.LogAttrs(ctx, slog.LevelInfo, "dry run: would serve", attrs(roleAttr, slog.String("outcome", "dry_run"),
			slog.Int("status", metadata.RefusalStatus(err)))...)
		return metadata.Credentials{}, err
	}

	c, outcome, err := p.cache.Get(ctx, req)
	if err != nil {
		p.metrics.request(req, "error")
		sentinel, reason := metadata.ErrUnavailable, "unavailable"
		switch {
		case errors.Is(err, errNotMinting):
			reason = "not_minting"
		case creds.Retryable(err):
		case satoken.Refused(err):
			sentinel, reason = metadata.ErrForbidden, "token_refused"
		default:
			sentinel, reason = metadata.ErrForbidden, "sts_refused"
		}
		return metadata.Credentials{}, p.refused(ctx, fmt.Errorf("%w: %w", sentinel, err), attrs(roleAttr, slog.String("outcome", "refused"),
			slog.String("reason", reason), slog.String("error", err.Error())))
	}
	p.metrics.request(req, outcomeName(outcome))
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.LogAttrs(ctx, slog.LevelDebug, "served", attrs(roleAttr, slog.String("outcome", outcomeName(outcome)),
			slog.String("session_name", c.SessionName), slog.Time("expiration", c.Expiration))...)
	}
	return metadata.Credentials{
		RoleName:        roles.RoleName(cmp.Or(c.ServedRoleARN, role.ARN)),
		AccessKeyID:     c.AccessKeyID,
		SecretAccessKey: c.SecretAccessKey,
		SessionToken:    c.SessionToken,
		Expiration:      c.Expiration,
		LastUpdated:     c.Issued,
		AccountID:       c.AccountID,
	}, nil
}

// refused logs a refusal and returns it. This is the request's one line: the metadata faces log only the refusals
// they decide themselves, so it carries the HTTP status they answer err with.
func (p *provider) refused(ctx context.Context, err error, attrs []slog.Attr) error {
	p.log.LogAttrs(ctx, slog.LevelWarn, "refused", append(attrs, slog.Int("status", metadata.RefusalStatus(err)))...)
	return err
}

func outcomeName(o creds.Outcome) string {
	switch o {
	case creds.Hit:
		return "hit"
	case creds.Stale:
		return "stale"
	}
	return "miss"
}

func requestFor(p pods.Pod, r roles.Role) creds.Request {
	return creds.Request{
		PodUID:         string(p.UID),
		Namespace:      p.Namespace,
		Pod:            p.Name,
		ServiceAccount: p.ServiceAccount,
		RoleARN:        r.ARN,
		Audience:       r.Audience,
		Duration:       r.Duration,
		Regional:       r.Regional,

		SessionPolicy:       r.Narrowing.Policy,
		SessionPolicySHA256: r.Narrowing.PolicyHash,
		SessionPolicyARNs:   r.Narrowing.PolicyARNs,
		ChainRoleARN:        r.Narrowing.ChainRoleARN,
		ExternalID:          r.Narrowing.ExternalID,
		Narrowing:           r.Narrowing.Key,
	}
}

// errNotMinting is the fetch error while the confinement check fails. That is the agent's state, not a verdict on
// the pod's token: 503, and retried on the short back-off, so pods are served soon after the check passes again.
var errNotMinting = errors.New("not minting new tokens")

type notMinting struct{ cause error }

func (e notMinting) Error() string        { return errNotMinting.Error() + ": " + e.cause.Error() }
func (e notMinting) Is(target error) bool { return target == errNotMinting }
func (notMinting) Retryable() bool        { return true }

// fetcher gets fresh credentials: a pod-bound token from the apiserver, traded with STS.
type fetcher struct {
	tokens *satoken.Source
	// confined is nil while the last confinement check passed; otherwise no new token is minted.
	confined func() error
	sts      *sts.Client
	metrics  *metrics
	// issued, when set, gets every issuance record (--issuance-file).
	issued *issuanceFile
	now    func() time.Time // the records' clock; nil: time.Now
}

func (f *fetcher) Fetch(ctx context.Context, r creds.Request) (creds.Credentials, error) {
	if err := f.confined(); err != nil {
		return creds.Credentials{}, notMinting{err}
	}
	start := time.Now()
	tok, err := f.tokens.Token(ctx, satoken.Pod{Namespace: r.Namespace, Name: r.Pod, UID: types.UID(r.PodUID), ServiceAccount: r.ServiceAccount}, r.Audience)
	f.metrics.tokenLat.Observe(time.Since(start).Seconds())
	if err != nil {
		f.metrics.tokens.WithLabelValues("error").Inc()
		return creds.Credentials{}, err
	}
	f.metrics.tokens.WithLabelValues("success").Inc()

	name := sts.SessionName(r.Namespace, r.Pod, r.PodUID)
	start = time.Now()
	first := sts.Request{RoleARN: r.RoleARN, SessionName: name, WebIdentityToken: tok, Duration: r.Duration, Regional: r.Regional}
	if r.ChainRoleARN == "" {
		first.Policy, first.PolicyARNs = r.SessionPolicy, r.SessionPolicyARNs
	} else {
		// Used once, to sign the chained call: the shortest session STS grants, should it ever leak.
		first.Duration = roles.MinDuration
	}
	out, err := f.sts.AssumeRole(ctx, first)
	f.metrics.stsLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		f.stsFailed(err)
		return creds.Credentials{}, err
	}
	f.metrics.sts.WithLabelValues("success", "").Inc()
	served := r.RoleARN
	if r.ChainRoleARN != "" {
		// The session policy narrows the session the pod holds: the chained one. The first is only iamlet's, to chain.
		start = time.Now()
		out, err = f.sts.AssumeRoleChained(ctx, out, sts.ChainRequest{RoleARN: r.ChainRoleARN, SessionName: name,
			ExternalID: r.ExternalID, Policy: r.SessionPolicy, PolicyARNs: r.SessionPolicyARNs, Duration: r.Duration, Regional: r.Regional})
		f.metrics.stsLatency.Observe(time.Since(start).Seconds())
		if err != nil {
			f.stsFailed(err)
			return creds.Credentials{}, fmt.Errorf("chaining to %s: %w", r.ChainRoleARN, err)
		}
		f.metrics.sts.WithLabelValues("success", "").Inc()
		served = r.ChainRoleARN
	}
	c := creds.Credentials{
		AccessKeyID:      out.AccessKeyID,
		SecretAccessKey:  out.SecretAccessKey,
		SessionToken:     out.SessionToken,
		Expiration:       out.Expiration,
		AccountID:        out.AccountID,
		SessionName:      name,
		ServedRoleARN:    served,
		PackedPolicySize: out.PackedPolicySize,
	}
	if f.issued != nil {
		now := time.Now
		if f.now != nil {
			now = f.now
		}
		f.issued.write(issuanceOf(r, c, now()))
	}
	return c, nil
}

func (f *fetcher) stsFailed(err error) {
	code := "unknown"
	var se *sts.Error
	if errors.As(err, &se) {
		code = se.Code
	}
	f.metrics.sts.WithLabelValues("error", code).Inc()
}
