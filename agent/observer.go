package agent

import (
	"context"
	"log/slog"
	"sync"

	"github.com/iamlet/iamlet/agent/creds"
	"github.com/iamlet/iamlet/policy/issuance"
)

// observer turns cache events into metrics and audit lines. Credentials never reach a log: only the
// session name and expiry do.
type observer struct {
	metrics *metrics
	log     *slog.Logger
	// stale, when set, keeps "serving older credentials" to one line per entry until it is stored again; nil: a
	// line per stale answer.
	stale *staleLines
}

// staleLines are the entries that have said they serve older credentials since they were last stored. An SDK in
// its refresh window asks on every API call, so a line per answer would flood the log (under the cache's lock)
// while STS is down; the metric counts every answer, and each failed fetch is logged anyway.
type staleLines struct {
	mu   sync.Mutex
	said map[creds.Key]bool
}

// first reports whether r's entry has not said so yet, and marks it said.
func (s *staleLines) first(r creds.Request) bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.said[r.Key()] {
		return false
	}
	if s.said == nil {
		s.said = make(map[creds.Key]bool)
	}
	s.said[r.Key()] = true
	return true
}

func (s *staleLines) reset(r creds.Request) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.said, r.Key())
}

func podAttrs(r creds.Request) []slog.Attr {
	return []slog.Attr{slog.Bool("audit", true), slog.String("namespace", r.Namespace), slog.String("pod", r.Pod),
		slog.String("pod_uid", r.PodUID), slog.String("service_account", r.ServiceAccount), slog.String("role_arn", r.RoleARN)}
}

func (o observer) Added(r creds.Request) { o.metrics.added(r) }

func (o observer) Stored(r creds.Request, c creds.Credentials, reason string) {
	o.stale.reset(r)
	o.metrics.fetches.WithLabelValues(reason, "success").Inc()
	o.metrics.stored(r, c)
	// The issuance record itself, so that `iamlet policy` reads these lines as well as --issuance-file.
	attrs := append(issuanceOf(r, c, c.Issued).LogAttrs(), slog.Bool("audit", true), slog.String("outcome", "issued"),
		slog.String("reason", reason))
	if c.PackedPolicySize > 0 {
		attrs = append(attrs, slog.Int("packed_policy_size_percent", int(c.PackedPolicySize)))
	}
	o.log.LogAttrs(context.Background(), slog.LevelInfo, issuance.LogMessage, attrs...)
}

func (o observer) FetchFailed(r creds.Request, reason string, err error) {
	o.metrics.fetches.WithLabelValues(reason, "error").Inc()
	o.log.LogAttrs(context.Background(), slog.LevelWarn, "credential fetch failed", append(podAttrs(r), slog.String("outcome", "fetch_failed"),
		slog.String("reason", reason), slog.String("error", err.Error()))...)
}

func (o observer) Stale(r creds.Request, c creds.Credentials) {
	o.metrics.stale.Inc()
	if !o.stale.first(r) {
		return
	}
	o.log.LogAttrs(context.Background(), slog.LevelWarn, "serving older credentials while fetches fail", append(podAttrs(r),
		slog.String("outcome", "stale"), slog.Time("expiration", c.Expiration))...)
}

func (o observer) Forgot(r creds.Request) {
	o.stale.reset(r)
	o.metrics.forget(r)
	o.log.LogAttrs(context.Background(), slog.LevelInfo, "credentials dropped", append(podAttrs(r), slog.String("outcome", "dropped"))...)
}
