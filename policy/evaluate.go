package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Decision is what one document says of one call. The package evaluates no conditions and knows no request
// context, so a statement with a Condition, or a resource pattern with a policy variable, decides only "maybe";
// the two Conditional decisions say so instead of guessing.
type Decision int

const (
	// ImplicitDeny: no statement allows the call (whatever any conditional deny would say).
	ImplicitDeny Decision = iota
	// ExplicitDeny: an unconditional Deny statement matches; nothing else matters.
	ExplicitDeny
	// DenyIfConditions: something allows the call, but a Deny statement with conditions (or a policy variable)
	// matches it: denied whenever its conditions hold.
	DenyIfConditions
	// AllowIfConditions: only statements with conditions (or policy variables) allow the call, and no Deny matches.
	AllowIfConditions
	// Allow: an unconditional Allow statement matches and no Deny does.
	Allow
)

func (d Decision) String() string {
	switch d {
	case ImplicitDeny:
		return "implicit deny"
	case ExplicitDeny:
		return "explicit deny"
	case DenyIfConditions:
		return "denied if conditions hold"
	case AllowIfConditions:
		return "allowed only if conditions hold"
	case Allow:
		return "allow"
	}
	return fmt.Sprintf("Decision(%d)", int(d))
}

// MarshalText writes the decision as a stable word for JSON output: implicit_deny, explicit_deny,
// deny_if_conditions, allow_if_conditions, allow.
func (d Decision) MarshalText() ([]byte, error) {
	switch d {
	case ImplicitDeny:
		return []byte("implicit_deny"), nil
	case ExplicitDeny:
		return []byte("explicit_deny"), nil
	case DenyIfConditions:
		return []byte("deny_if_conditions"), nil
	case AllowIfConditions:
		return []byte("allow_if_conditions"), nil
	case Allow:
		return []byte("allow"), nil
	}
	return nil, fmt.Errorf("unknown decision %d", int(d))
}

// UnmarshalText reads what MarshalText writes.
func (d *Decision) UnmarshalText(b []byte) error {
	for c := ImplicitDeny; c <= Allow; c++ {
		if t, _ := c.MarshalText(); string(t) == string(b) {
			*d = c
			return nil
		}
	}
	return fmt.Errorf("unknown decision %q", b)
}

// Evaluate says what the document decides for one call, as IAM would within this one document: an explicit deny
// wins over any allow; without a matching Allow the call is implicitly denied. Actions match case-insensitively,
// resources case-sensitively, both with * and ? wildcards.
func (d *Document) Evaluate(action, resource string) Decision {
	var t tally
	for _, s := range d.Statement {
		applies, conditional := s.applies(action, resource, d.Version == Version2012)
		if applies {
			t.statement(s.Effect, conditional)
		}
	}
	return t.decision()
}

// EvaluateAll combines the documents' decisions of one call as IAM combines identity policies: an explicit deny in
// any wins, then an allow in any; conditional answers stay conditional. No documents decide ImplicitDeny.
func EvaluateAll(docs []*Document, action, resource string) Decision {
	var t tally
	for _, d := range docs {
		if t.document(d.Evaluate(action, resource)); t.deny {
			return ExplicitDeny
		}
	}
	return t.decision()
}

// tally gathers what the matching statements of one document, or the decisions of several, say of one call, and
// combines them by the one rule both Evaluate and EvaluateAll follow.
type tally struct{ deny, maybeDeny, allow, maybeAllow bool }

// statement counts one matching statement; conditional says its match depends on what the package cannot know.
func (t *tally) statement(effect Effect, conditional bool) {
	switch {
	case effect == EffectDeny && !conditional:
		t.deny = true
	case effect == EffectDeny:
		t.maybeDeny = true
	case !conditional:
		t.allow = true
	default:
		t.maybeAllow = true
	}
}

// document counts one document's decision.
func (t *tally) document(d Decision) {
	switch d {
	case ExplicitDeny:
		t.deny = true
	case DenyIfConditions:
		t.allow, t.maybeDeny = true, true
	case AllowIfConditions:
		t.maybeAllow = true
	case Allow:
		t.allow = true
	}
}

func (t tally) decision() Decision {
	switch {
	case t.deny:
		return ExplicitDeny
	case !t.allow && !t.maybeAllow:
		return ImplicitDeny
	case t.maybeDeny:
		return DenyIfConditions
	case t.allow:
		return Allow
	}
	return AllowIfConditions
}

// applies says whether s matches the call, and whether that depends on what this package cannot know: a Condition,
// or a policy variable in a resource pattern.
func (s *Statement) applies(action, resource string, variables bool) (applies, conditional bool) {
	conditional = len(s.Condition) > 0
	one := func(list, notList []string, value string, fold, variables bool) bool {
		patterns, negated := list, false
		if patterns == nil {
			patterns, negated = notList, true
		}
		if fold {
			value = strings.ToLower(value)
		}
		var sure, maybe bool
		for _, raw := range patterns {
			p := compile(raw, fold, variables)
			if p.match(value) {
				if p.hasVariable() {
					maybe = true
				} else {
					sure = true
				}
			}
		}
		if maybe && !sure {
			conditional = true
		}
		if negated {
			return !sure
		}
		return sure || maybe
	}
	if !one(s.Action, s.NotAction, action, true, false) {
		return false, false
	}
	if !one(s.Resource, s.NotResource, resource, false, variables) {
		return false, false
	}
	return true, conditional
}

// NotCoveredError is Covers' answer when the inner document allows something the ceiling is not shown to allow.
type NotCoveredError struct {
	Statement int    // index in the inner document
	Sid       string // the statement's Sid, if any
	Action    string // the first action pattern not covered; empty when the statement uses NotAction/NotResource
	Resource  string
	Reason    string
}

func (e *NotCoveredError) Error() string {
	where := fmt.Sprintf("Statement[%d]", e.Statement)
	if e.Sid != "" {
		where += fmt.Sprintf(" (Sid %q)", e.Sid)
	}
	if e.Action == "" {
		return where + ": " + e.Reason
	}
	return fmt.Sprintf("%s: action %q on resource %q: %s", where, e.Action, e.Resource, e.Reason)
}

// Covers returns nil when everything inner allows, ceiling allows too, and a *NotCoveredError naming the first
// action and resource pattern it cannot show to be covered. It is sound and conservative: it may refuse a document
// that is in fact covered, never accept one that is not.
//
// Each (action, resource) pair of each inner Allow statement must be contained in the patterns of one
// unconditional ceiling Allow statement written with Action and Resource. Inner conditions only narrow, so they
// are ignored; inner NotAction or NotResource allows an open set and is refused; ceiling statements with conditions
// or NotAction/NotResource cover nothing. Ceiling Deny statements play no part: a caller that wants them enforced
// sends inner.WithDenies(ceiling).
func Covers(ceiling, inner *Document) error {
	for i, s := range inner.Statement {
		if s.Effect != EffectAllow {
			continue
		}
		if s.NotAction != nil || s.NotResource != nil {
			return &NotCoveredError{Statement: i, Sid: s.Sid, Reason: "an Allow with NotAction or NotResource allows an open-ended set that cannot be checked against a ceiling"}
		}
		for _, a := range s.Action {
			for _, r := range s.Resource {
				if !ceiling.covers(a, r, inner.Version == Version2012) {
					return &NotCoveredError{Statement: i, Sid: s.Sid, Action: a, Resource: r, Reason: "not allowed by any unconditional Allow statement of the ceiling"}
				}
			}
		}
	}
	return nil
}

func (d *Document) covers(action, resource string, innerVariables bool) bool {
	a := compile(action, true, false)
	r := compile(resource, false, innerVariables)
	for _, s := range d.Statement {
		if s.Effect != EffectAllow || len(s.Condition) > 0 || s.Action == nil || s.Resource == nil {
			continue
		}
		if slices.ContainsFunc(s.Action, func(p string) bool { return compile(p, true, false).contains(a) }) &&
			slices.ContainsFunc(s.Resource, func(p string) bool { return compile(p, false, d.Version == Version2012).contains(r) }) {
			return true
		}
	}
	return false
}

// Denies returns the document's Deny statements.
func (d *Document) Denies() []Statement {
	var out []Statement
	for _, s := range d.Statement {
		if s.Effect == EffectDeny {
			out = append(out, s)
		}
	}
	return out
}

// WithDenies returns a copy of d with from's Deny statements appended: what to send so that a ceiling's denies
// hold for a narrower document that Covers accepted. An appended statement whose Sid d already uses loses its Sid
// (Sids must be unique within a document). Documents of different Versions read "${...}" differently, so when they
// differ and either uses one, WithDenies refuses rather than change a statement's meaning.
func (d *Document) WithDenies(from *Document) (*Document, error) {
	denies := from.Denies()
	if d.Version != from.Version && (usesVariables(d.Statement) || usesVariables(denies)) {
		return nil, fmt.Errorf("versions %s and %s read policy variables differently, and the statements use ${", d.Version, from.Version)
	}
	out := &Document{Version: d.Version, ID: d.ID, Statement: slices.Clone(d.Statement)}
	sids := map[string]bool{}
	for _, s := range d.Statement {
		sids[s.Sid] = true
	}
	for _, s := range denies {
		if s.Sid != "" && sids[s.Sid] {
			s.Sid = ""
		}
		sids[s.Sid] = true
		out.Statement = append(out.Statement, s)
	}
	return out, nil
}

func usesVariables(statements []Statement) bool {
	for _, s := range statements {
		for _, list := range [][]string{s.Action, s.NotAction, s.Resource, s.NotResource} {
			if slices.ContainsFunc(list, func(v string) bool { return strings.Contains(v, "${") }) {
				return true
			}
		}
		for _, keys := range s.Condition {
			for _, v := range keys {
				if strings.Contains(string(v), "${") {
					return true
				}
			}
		}
	}
	return false
}
