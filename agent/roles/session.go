package roles

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/iamlet/iamlet/policy"
)

// Annotations that narrow or chain a role's session. On a ServiceAccount they narrow its pods' sessions; on a
// Namespace the session-policy ones are a ceiling for every ServiceAccount in it (see Narrowing).
const (
	// AnnotationSessionPolicy holds an inline IAM policy (JSON) sent as AssumeRoleWithWebIdentity's Policy.
	AnnotationSessionPolicy = "iamlet.dev/session-policy"
	// AnnotationSessionPolicyARNs lists managed policy ARNs (comma or newline separated) sent as PolicyArns.
	AnnotationSessionPolicyARNs = "iamlet.dev/session-policy-arns"
	// AnnotationChainRoleARN on a ServiceAccount names a second role, usually in another account, assumed with
	// the first role's credentials; its pods are served the second role's credentials.
	AnnotationChainRoleARN = "iamlet.dev/chain-role-arn"
	// AnnotationChainExternalID is the ExternalId the second role's trust policy requires.
	AnnotationChainExternalID = "iamlet.dev/chain-external-id"
)

// Limits STS sets on session policies.
const (
	MaxSessionPolicyChars = 2048 // the plain-text inline policy, as sent
	MaxSessionPolicyARNs  = 10
)

// ErrInvalidPolicy is returned for a session policy or chained role annotation that cannot be honoured. The pod
// is refused rather than served credentials without the narrowing its owners asked for.
var ErrInvalidPolicy = errors.New("invalid session policy annotation")

// Narrowing is how a pod's session is narrowed (session policies) or chained beyond its role.
type Narrowing struct {
	Policy       string   // compact JSON as sent to STS; empty for none
	PolicyHash   string   // hex SHA-256 of Policy; empty for none
	PolicyARNs   []string // managed session policies
	ChainRoleARN string
	ExternalID   string
	// Key digests the fields above: equal Keys mean the same session shape. Empty for a plain role.
	Key string
}

// narrowingInput is the annotations a Narrowing is made of.
type narrowingInput struct {
	saPolicy, saARNs, nsPolicy, nsARNs, chain, externalID string
}

// narrowingFor reads the narrowing from a ServiceAccount's and its Namespace's annotations.
//
// The namespace's session policy is a ceiling. STS grants the intersection of the role with the union of the
// session policies sent, so two policies cannot both be sent to intersect them; instead a ServiceAccount's own
// policy must lie within the namespace's (checked here, conservatively) and the namespace's Deny statements are
// added to it. A ServiceAccount without one gets the namespace's.
func narrowingFor(in narrowingInput) (Narrowing, error) {
	var n Narrowing
	sa, err := parsePolicy(in.saPolicy, "ServiceAccount")
	if err != nil {
		return n, err
	}
	ns, err := parsePolicy(in.nsPolicy, "Namespace")
	if err != nil {
		return n, err
	}
	saARNs, err := parsePolicyARNs(in.saARNs, "ServiceAccount")
	if err != nil {
		return n, err
	}
	nsARNs, err := parsePolicyARNs(in.nsARNs, "Namespace")
	if err != nil {
		return n, err
	}
	doc, arns := sa, saARNs
	switch saSet, nsSet := sa != nil || saARNs != nil, ns != nil || nsARNs != nil; {
	case !saSet:
		doc, arns = ns, nsARNs
	case nsSet:
		if sa != nil {
			if ns == nil {
				return n, fmt.Errorf("%w: ServiceAccount %s cannot be checked against the namespace's %s, which names only managed policies",
					ErrInvalidPolicy, AnnotationSessionPolicy, AnnotationSessionPolicyARNs)
			}
			if err := policy.Covers(ns, sa); err != nil {
				return n, fmt.Errorf("%w: ServiceAccount %s is not within the namespace's: %v", ErrInvalidPolicy, AnnotationSessionPolicy, err)
			}
			if doc, err = sa.WithDenies(ns); err != nil {
				return n, fmt.Errorf("%w: adding the namespace's Deny statements: %v", ErrInvalidPolicy, err)
			}
		}
		for _, a := range saARNs {
			if !slices.Contains(nsARNs, a) {
				return n, fmt.Errorf("%w: ServiceAccount %s names %s, which the namespace's %s does not list",
					ErrInvalidPolicy, AnnotationSessionPolicyARNs, a, AnnotationSessionPolicyARNs)
			}
		}
	}
	if doc != nil {
		n.Policy = string(doc.Compact())
		if len(n.Policy) > MaxSessionPolicyChars {
			return Narrowing{}, fmt.Errorf("%w: %s is %d characters as sent, over STS's %d", ErrInvalidPolicy,
				AnnotationSessionPolicy, len(n.Policy), MaxSessionPolicyChars)
		}
		n.PolicyHash = doc.Hash()
	}
	n.PolicyARNs = arns
	if c := strings.TrimSpace(in.chain); c != "" {
		if err := ValidateARN(c); err != nil {
			return Narrowing{}, fmt.Errorf("%w: %s: %v", ErrInvalidPolicy, AnnotationChainRoleARN, err)
		}
		n.ChainRoleARN = c
	}
	if x := strings.TrimSpace(in.externalID); x != "" {
		if n.ChainRoleARN == "" {
			return Narrowing{}, fmt.Errorf("%w: %s without %s", ErrInvalidPolicy, AnnotationChainExternalID, AnnotationChainRoleARN)
		}
		if len(x) < 2 || len(x) > 1224 || !externalIDPattern.MatchString(x) {
			return Narrowing{}, fmt.Errorf("%w: %s must be 2 to 1224 characters of letters, digits and +=,.@:/-", ErrInvalidPolicy, AnnotationChainExternalID)
		}
		n.ExternalID = x
	}
	if n.Policy != "" || len(n.PolicyARNs) > 0 || n.ChainRoleARN != "" {
		h := sha256.New()
		for _, f := range append([]string{n.Policy, n.ChainRoleARN, n.ExternalID}, n.PolicyARNs...) {
			h.Write([]byte(f))
			h.Write([]byte{0})
		}
		n.Key = hex.EncodeToString(h.Sum(nil))[:16]
	}
	return n, nil
}

func parsePolicy(s, on string) (*policy.Document, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	doc, err := policy.Parse([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrInvalidPolicy, on, AnnotationSessionPolicy, err)
	}
	return doc, nil
}

// arn:PARTITION:iam::ACCOUNT-or-aws:policy/[PATH/]NAME
var policyARNPattern = regexp.MustCompile(`^arn:[a-z][a-z0-9-]{1,31}:iam::(\d{12}|aws):policy/([\x21-\x7e]*/)?[\w+=,.@-]{1,128}$`)

var externalIDPattern = regexp.MustCompile(`^[\w+=,.@:/-]+$`) // and 2 to 1224 characters

func parsePolicyARNs(s, on string) ([]string, error) {
	var arns []string
	for _, a := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if !policyARNPattern.MatchString(a) {
			return nil, fmt.Errorf("%w: %s %s: %q is not a managed policy ARN", ErrInvalidPolicy, on, AnnotationSessionPolicyARNs, a)
		}
		if !slices.Contains(arns, a) {
			arns = append(arns, a)
		}
	}
	if len(arns) > MaxSessionPolicyARNs {
		return nil, fmt.Errorf("%w: %s %s names %d policies, over STS's %d", ErrInvalidPolicy, on, AnnotationSessionPolicyARNs, len(arns), MaxSessionPolicyARNs)
	}
	return arns, nil
}

// narrowingResult is narrowingFor's answer, as the mapper's memo keeps it.
type narrowingResult struct {
	n   Narrowing
	err error
}

// narrowing is narrowingFor, remembered per annotation values: parsing a policy on every request would cost more
// than the rest of the request.
func (m *Mapper) narrowing(in narrowingInput) (Narrowing, error) {
	if in == (narrowingInput{}) {
		return Narrowing{}, nil
	}
	r := m.narrowings.get(in, func(in narrowingInput) narrowingResult {
		n, err := narrowingFor(in)
		return narrowingResult{n, err}
	})
	return r.n, r.err
}
