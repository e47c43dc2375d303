package trail

import (
	"cmp"
	"slices"
	"strings"

	"github.com/iamlet/iamlet/policy"
)

// Policy is the least-privilege policy the observed, allowed calls call for: one statement per set of resources,
// actions sorted. Nil when nothing was observed.
func (a *Activity) Policy() *policy.Document {
	byAction := map[string][]string{}
	for _, u := range a.Uses {
		byAction[u.Action] = append(byAction[u.Action], literalARN(u.Resource))
	}
	groups := map[string][]string{} // resources joined -> actions
	for action, resources := range byAction {
		if slices.Contains(resources, "*") {
			resources = []string{"*"}
		}
		slices.Sort(resources)
		key := strings.Join(slices.Compact(resources), "\n")
		groups[key] = append(groups[key], action)
	}
	if len(groups) == 0 {
		return nil
	}
	doc := &policy.Document{Version: policy.Version2012}
	for key, actions := range groups {
		slices.Sort(actions)
		doc.Statement = append(doc.Statement, policy.Statement{Effect: policy.EffectAllow, Action: actions, Resource: strings.Split(key, "\n")})
	}
	slices.SortFunc(doc.Statement, func(x, y policy.Statement) int {
		return cmp.Or(slices.Compare(x.Resource, y.Resource), slices.Compare(x.Action, y.Action))
	})
	return doc
}

// literalARN escapes what IAM would read as a wildcard or a policy variable in a resource's name (an object key
// with a * in it), so the statement grants that resource and no other.
func literalARN(arn string) string {
	if arn == "*" {
		return arn
	}
	return strings.NewReplacer("$", "${$}", "*", "${*}", "?", "${?}").Replace(arn)
}

// Diff compares what a workload used with what a role's policy documents allow.
type Diff struct {
	// Used lists the observed accesses the documents allow (Decision allow or allow_if_conditions).
	Used []Finding `json:"used"`
	// UsedNotGranted lists observed accesses the documents do not allow: the role must have them from elsewhere
	// (another attached policy, a resource policy), or a document denies them.
	UsedNotGranted []Finding `json:"used_not_granted"`
	// GrantedUnused lists the Allow statements' action patterns that no observed access used.
	GrantedUnused []Grant `json:"granted_unused"`
}

// Finding is one access and what a policy decides of it.
type Finding struct {
	Use
	Decision policy.Decision `json:"decision"`
}

// Grant is one action pattern of one Allow statement.
type Grant struct {
	Document  int      `json:"document"`  // index in the documents given
	Statement int      `json:"statement"` // index in that document
	Sid       string   `json:"sid,omitempty"`
	Action    string   `json:"action"` // the pattern; for NotAction statements, "NotAction" and the statement is listed once
	Resources []string `json:"resources"`
}

// Diff compares the activity with the union of docs, as IAM combines identity policies: any explicit deny wins,
// then any allow.
func (a *Activity) Diff(docs []*policy.Document) Diff {
	var d Diff
	for _, u := range a.Uses {
		f := Finding{Use: u, Decision: policy.EvaluateAll(docs, u.Action, u.Resource)}
		if f.Decision == policy.Allow || f.Decision == policy.AllowIfConditions {
			d.Used = append(d.Used, f)
		} else {
			d.UsedNotGranted = append(d.UsedNotGranted, f)
		}
	}
	for i, doc := range docs {
		for j, s := range doc.Statement {
			if s.Effect != policy.EffectAllow {
				continue
			}
			if s.NotAction != nil {
				if !a.usedBy(doc, s) {
					d.GrantedUnused = append(d.GrantedUnused, Grant{i, j, s.Sid, "NotAction", resourcesOf(s)})
				}
				continue
			}
			for _, pattern := range s.Action {
				one := s
				one.Action = []string{pattern}
				if !a.usedBy(doc, one) {
					d.GrantedUnused = append(d.GrantedUnused, Grant{i, j, s.Sid, pattern, resourcesOf(s)})
				}
			}
		}
	}
	return d
}

func resourcesOf(s policy.Statement) []string {
	if s.NotResource != nil {
		return append([]string{"NotResource"}, s.NotResource...)
	}
	return s.Resource
}

// usedBy says whether some observed access falls within statement s (read in doc's Version).
func (a *Activity) usedBy(doc *policy.Document, s policy.Statement) bool {
	one := &policy.Document{Version: doc.Version, Statement: []policy.Statement{s}}
	return slices.ContainsFunc(a.Uses, func(u Use) bool { return one.Evaluate(u.Action, u.Resource) != policy.ImplicitDeny })
}

// Check lists the observed accesses that doc would not plainly allow: what enforcing it as a session policy
// could break. Accesses on "*" (resource unknown) are checked as "*", which only a "*" resource pattern allows.
func (a *Activity) Check(doc *policy.Document) []Finding {
	var out []Finding
	for _, u := range a.Uses {
		if d := doc.Evaluate(u.Action, u.Resource); d != policy.Allow {
			out = append(out, Finding{Use: u, Decision: d})
		}
	}
	return out
}

// Report is the JSON output of iamlet policy: its field names are stable.
type Report struct {
	Events         int              `json:"events"`          // CloudTrail records read
	IssuanceEvents int              `json:"issuance_events"` // the STS calls that minted the workloads' credentials
	Workloads      []WorkloadReport `json:"workloads"`
	Unattributed   Unattributed     `json:"unattributed"`
	NotObservable  []string         `json:"not_observable"`
	MappingSource  string           `json:"mapping_source"`
}

// WorkloadReport is one workload's evidence and the policy it calls for.
type WorkloadReport struct {
	Workload
	Roles          []string         `json:"roles"`
	Sessions       []string         `json:"sessions"`
	Calls          int              `json:"calls"`
	Policy         *policy.Document `json:"policy"`                    // null when no call needed a permission
	PolicySHA256   string           `json:"policy_sha256,omitempty"`   // of the compact policy
	PolicySize     int              `json:"policy_size,omitempty"`     // compact characters; STS takes at most 2048 in a session policy
	Uses           []Use            `json:"uses"`                      // allowed calls' needs; resource "*" with a why when no ARN could be named
	Denied         []Use            `json:"denied,omitempty"`          // calls IAM refused, not in the policy
	Assumed        []string         `json:"assumed_actions,omitempty"` // events the mapping does not know: action guessed as PREFIX:EVENTNAME
	Permissionless []string         `json:"permissionless,omitempty"`  // events that needed no permission
	Diff           *Diff            `json:"diff,omitempty"`            // with --role-policy
}

// Report builds the report for the workloads keep selects (all when nil), diffed against roleDocs when any.
func (a *Analysis) Report(m *Mapping, keep func(Workload) bool, roleDocs []*policy.Document) Report {
	r := Report{Events: a.Events, IssuanceEvents: a.Issuance, Unattributed: a.Unattributed, NotObservable: NotObservable,
		MappingSource: m.Source, Workloads: []WorkloadReport{}}
	for _, act := range a.Workloads {
		if keep != nil && !keep(act.Workload) {
			continue
		}
		w := WorkloadReport{Workload: act.Workload, Roles: act.Roles, Sessions: act.Sessions, Calls: act.Calls,
			Policy: act.Policy(), Uses: act.Uses, Denied: act.Denied, Assumed: act.Assumed, Permissionless: act.Permissionless}
		if w.Uses == nil {
			w.Uses = []Use{}
		}
		if w.Policy != nil {
			compact := w.Policy.Compact()
			w.PolicySHA256, w.PolicySize = policy.HashOf(compact), len(compact)
		}
		if len(roleDocs) > 0 {
			d := act.Diff(roleDocs)
			w.Diff = &d
		}
		r.Workloads = append(r.Workloads, w)
	}
	return r
}
