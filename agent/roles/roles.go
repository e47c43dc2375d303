// Package roles maps a pod's ServiceAccount to the IAM role it may assume, from IRSA-compatible
// annotations, checked against the namespace's allow-list. It reads Kubernetes and never AWS.
package roles

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"
)

// Annotations read by the mapper. The eks.amazonaws.com ones are IRSA's, so existing manifests work unchanged.
const (
	AnnotationRoleARN     = "eks.amazonaws.com/role-arn"
	AnnotationAudience    = "eks.amazonaws.com/audience"
	AnnotationRegionalSTS = "eks.amazonaws.com/sts-regional-endpoints"
	// AnnotationSessionDuration on a ServiceAccount sets DurationSeconds, as a Go duration ("2h") or seconds.
	AnnotationSessionDuration = "iamlet.dev/session-duration"
	// AnnotationAllowedRoles on a Namespace lists the role ARNs (globs, comma or newline separated) its
	// ServiceAccounts may use.
	AnnotationAllowedRoles = "iamlet.dev/allowed-roles"
)

// STS accepts DurationSeconds in this range.
const (
	MinDuration = 15 * time.Minute
	MaxDuration = 12 * time.Hour
)

// Errors RoleFor returns.
var (
	ErrNoRole     = errors.New("service account has no role annotation")
	ErrNotAllowed = errors.New("role is not allowed in this namespace")
	ErrInvalid    = errors.New("invalid role annotation")
)

// Role is what the credential source needs to assume a pod's role.
type Role struct {
	ARN      string
	Audience string
	Duration time.Duration
	Regional bool
	// Narrowing is the session policies and chained role, from the ServiceAccount's and Namespace's annotations.
	Narrowing Narrowing
}

// Config holds the mapper's defaults and policy.
type Config struct {
	DefaultAudience string        // "sts.amazonaws.com" when empty
	DefaultDuration time.Duration // 1h when zero
	// RequireNamespaceAllowlist denies every role in a namespace without the allow-list annotation.
	RequireNamespaceAllowlist bool
}

func (c Config) withDefaults() Config {
	if c.DefaultAudience == "" {
		c.DefaultAudience = "sts.amazonaws.com"
	}
	if c.DefaultDuration == 0 {
		c.DefaultDuration = time.Hour
	}
	return c
}

// Mapper answers from ServiceAccounts and Namespaces watched cluster-wide, so annotation changes apply at once.
type Mapper struct {
	cfg        Config
	arns       memo[string, error]                   // ValidateARN's verdicts
	narrowings memo[narrowingInput, narrowingResult] // narrowingFor's results
	sas        *store                                // only the ServiceAccounts with an annotation the mapper reads
	namespaces *store                                // every Namespace
	reflectors []*cache.Reflector
	wg         sync.WaitGroup
}

// API lists and watches ServiceAccounts and Namespaces, cluster-wide (kube.Client).
type API interface {
	ServiceAccounts() cache.ListerWatcher
	Namespaces() cache.ListerWatcher
}

// New builds a mapper over api. Call Start, then wait for HasSynced.
func New(api API, cfg Config) *Mapper {
	m := &Mapper{cfg: cfg.withDefaults(), sas: newStore(false), namespaces: newStore(true)}
	m.reflectors = reflectors(api, m.sas, m.namespaces)
	return m
}

// AddHandler registers h, called after every change to a role-related annotation of a ServiceAccount or Namespace,
// and when a Namespace comes or goes. Call it before Start.
func (m *Mapper) AddHandler(h func()) {
	m.sas.addHandler(h)
	m.namespaces.addHandler(h)
}

// Start starts listing and watching; it stops when ctx is done.
func (m *Mapper) Start(ctx context.Context) {
	for _, r := range m.reflectors {
		m.wg.Go(func() { r.RunWithContext(ctx) })
	}
}

// Shutdown waits for the watches' goroutines after ctx is done.
func (m *Mapper) Shutdown() { m.wg.Wait() }

// HasSynced reports whether both stores hold their initial lists.
func (m *Mapper) HasSynced() bool {
	for _, s := range []*store{m.sas, m.namespaces} {
		select {
		case <-s.synced:
		default:
			return false
		}
	}
	return true
}

// WaitForSync returns once both stores hold their initial lists, or with ctx's error when it ends first.
// It waits on the stores' own signals, not a poll.
func (m *Mapper) WaitForSync(ctx context.Context) error {
	for _, s := range []*store{m.sas, m.namespaces} {
		select {
		case <-s.synced:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Stale is kube.ErrRefused or kube.ErrUnanswered, with the apiserver's words, while what the mapper holds of
// ServiceAccounts or Namespaces may be stale (kube.Staleness); nil otherwise.
func (m *Mapper) Stale() error {
	if err := m.sas.stale(); err != nil {
		return err
	}
	return m.namespaces.stale()
}

// RoleFor returns the role of ServiceAccount sa in namespace. While the apiserver refuses the mapper's list or watch
// (Stale), it names no role: what the stores hold may have lost a role or an allow-list since.
func (m *Mapper) RoleFor(namespace, sa string) (Role, error) {
	if err := m.Stale(); err != nil {
		return Role{}, err
	}
	acct, ok := m.sas.get(objectKey{namespace, sa})
	if !ok {
		// Unannotated ServiceAccounts are not kept: not found and without a role are one answer.
		return Role{}, fmt.Errorf("service account %s/%s: %w (or is not known)", namespace, sa, ErrNoRole)
	}
	role, err := fromAnnotations(acct, m.cfg, func(arn string) error { return m.arns.get(arn, ValidateARN) })
	if err != nil {
		return Role{}, fmt.Errorf("service account %s/%s: %w", namespace, sa, err)
	}
	ns, ok := m.namespaces.get(objectKey{name: namespace})
	if !ok {
		// Not listed yet (or gone): its allow-list is unknown, so nothing is allowed until it is.
		return Role{}, fmt.Errorf("%w: namespace %s not known yet", ErrNotAllowed, namespace)
	}
	allowed, has := ns.get(AnnotationAllowedRoles)
	if !has && m.cfg.RequireNamespaceAllowlist {
		return Role{}, fmt.Errorf("%w: namespace %s has no %s annotation", ErrNotAllowed, namespace, AnnotationAllowedRoles)
	}
	if has && !Allowed(allowed, role.ARN) {
		return Role{}, fmt.Errorf("%w: %s not in namespace %s's %s", ErrNotAllowed, role.ARN, namespace, AnnotationAllowedRoles)
	}
	n, err := m.narrowing(narrowingInput{
		saPolicy: acct.value(AnnotationSessionPolicy), saARNs: acct.value(AnnotationSessionPolicyARNs),
		nsPolicy: ns.value(AnnotationSessionPolicy), nsARNs: ns.value(AnnotationSessionPolicyARNs),
		chain: acct.value(AnnotationChainRoleARN), externalID: acct.value(AnnotationChainExternalID),
	})
	if err != nil {
		return Role{}, fmt.Errorf("service account %s/%s: %w", namespace, sa, err)
	}
	// The chained role is the one the pod ends up holding: the namespace must allow it too.
	if n.ChainRoleARN != "" && has && !Allowed(allowed, n.ChainRoleARN) {
		return Role{}, fmt.Errorf("%w: chained role %s not in namespace %s's %s", ErrNotAllowed, n.ChainRoleARN, namespace, AnnotationAllowedRoles)
	}
	role.Narrowing = n
	return role, nil
}

// FromAnnotations reads a ServiceAccount's annotations; cfg's zero defaults mean what they mean for New.
func FromAnnotations(a map[string]string, cfg Config) (Role, error) {
	return fromAnnotations(known(a), cfg, ValidateARN)
}

func fromAnnotations(a annotations, cfg Config, validateARN func(string) error) (Role, error) {
	cfg = cfg.withDefaults()
	arn := a.value(AnnotationRoleARN)
	if strings.TrimSpace(arn) == "" {
		return Role{}, ErrNoRole
	}
	arn = strings.TrimSpace(arn)
	if err := validateARN(arn); err != nil {
		return Role{}, err
	}
	r := Role{ARN: arn, Audience: cfg.DefaultAudience, Duration: cfg.DefaultDuration, Regional: true}
	if aud := strings.TrimSpace(a.value(AnnotationAudience)); aud != "" {
		r.Audience = aud
	}
	// IRSA's webhook treats only "true" as regional; for us regional is the default, so only "false" opts out.
	if strings.EqualFold(strings.TrimSpace(a.value(AnnotationRegionalSTS)), "false") {
		r.Regional = false
	}
	if s := strings.TrimSpace(a.value(AnnotationSessionDuration)); s != "" {
		d, err := parseDuration(s)
		if err != nil || d < MinDuration || d > MaxDuration {
			return Role{}, fmt.Errorf("%w: %s %q must be between %s and %s", ErrInvalid, AnnotationSessionDuration, s, MinDuration, MaxDuration)
		}
		r.Duration = d
	}
	return r, nil
}

func parseDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	var secs int64
	if _, err := fmt.Sscanf(s, "%d", &secs); err != nil || fmt.Sprint(secs) != s {
		return 0, fmt.Errorf("not a duration: %q", s)
	}
	return time.Duration(secs) * time.Second, nil
}

// arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME; the account may be empty for IAM-compatible STS servers
// such as MinIO's. Role names and paths follow IAM's character rules.
var arnPattern = regexp.MustCompile(`^arn:[a-z][a-z0-9-]{1,31}:iam::(\d{12})?:role/([\x21-\x7e]*/)?[\w+=,.@-]{1,64}$`)

// ValidateARN checks that arn names an IAM role.
func ValidateARN(arn string) error {
	if len(arn) < 20 || len(arn) > 2048 || !arnPattern.MatchString(arn) {
		return fmt.Errorf("%w: %q is not an IAM role ARN", ErrInvalid, arn)
	}
	return nil
}

// RoleName is the last path segment of a role ARN: what the IMDS role listing shows.
func RoleName(arn string) string {
	return arn[strings.LastIndexByte(arn, '/')+1:]
}

// Allowed reports whether arn matches one of the comma- or newline-separated globs in list.
// A '*' matches any run of characters within one path segment (not '/'), so role/team-a-* admits
// role/team-a-app but not role/team-a-x/Admin; '**' matches across segments too.
func Allowed(list, arn string) bool {
	for _, g := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == '\n' }) {
		if g = strings.TrimSpace(g); g != "" && glob(g, arn) {
			return true
		}
	}
	return false
}

func glob(pattern, s string) bool {
	// match[j]: the pattern read so far matches s[:j]. One pass per pattern element keeps it linear in both.
	match := make([]bool, len(s)+1)
	match[0] = true
	for i := 0; i < len(pattern); i++ {
		next := make([]bool, len(s)+1)
		switch {
		case pattern[i] == '*' && i+1 < len(pattern) && pattern[i+1] == '*':
			for i+1 < len(pattern) && pattern[i+1] == '*' {
				i++
			}
			for j := range next {
				next[j] = match[j] || j > 0 && next[j-1]
			}
		case pattern[i] == '*':
			for j := range next {
				next[j] = match[j] || j > 0 && next[j-1] && s[j-1] != '/'
			}
		default:
			for j := 1; j <= len(s); j++ {
				next[j] = match[j-1] && s[j-1] == pattern[i]
			}
		}
		match = next
	}
	return match[len(s)]
}

// memo remembers a pure function's result per input: RoleFor runs on every credential request, though a
// ServiceAccount's annotations rarely change. Keyed by the input itself, it cannot go stale; it is emptied when it
// outgrows what a cluster plausibly names.
type memo[K comparable, V any] struct {
	mu      sync.RWMutex
	results map[K]V
}

const maxMemo = 4096

func (m *memo[K, V]) get(in K, f func(K) V) V {
	m.mu.RLock()
	v, ok := m.results[in]
	m.mu.RUnlock()
	if ok {
		return v
	}
	v = f(in)
	m.mu.Lock()
	if m.results == nil || len(m.results) >= maxMemo {
		m.results = make(map[K]V)
	}
	m.results[in] = v
	m.mu.Unlock()
	return v
}
