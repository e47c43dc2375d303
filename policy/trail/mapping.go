package trail

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/iamlet/iamlet/policy/trail/internal/iammap"
)

// The inputs are iam-dataset's map.json at commit e06c7e62bfd977fe4fb20de1a2e503c2517c402d (2023-01-01) and its
// aws/iam_definition.json at 7ff619b9b675f8d48209b15ca7d8ebcb1c40177d (2026-07-09), placed here before running
// go generate; neither is committed.
//go:generate go run ./internal/trimiammap -map map.json -definition iam_definition.json -source "github.com/iann0036/iam-dataset map.json@e06c7e62bfd977fe4fb20de1a2e503c2517c402d (2023-01-01), aws/iam_definition.json@7ff619b9b675f8d48209b15ca7d8ebcb1c40177d (2026-07-09); MIT, see THIRD_PARTY_NOTICE" -o iammap.json.gz

//go:embed iammap.json.gz
var iamMapGz []byte

// Mapping turns CloudTrail events into the IAM actions and resources they needed. It is read-only once loaded.
type Mapping struct {
	iammap.File
	simple         map[string]map[string]bool
	services       map[string][]string // IAM prefix -> the SDK services that may hold its methods, its own first
	permissionless map[string]bool     // SDK service "." method
}

// LoadMapping reads the embedded mapping (derived from iam-dataset; see THIRD_PARTY_NOTICE).
func LoadMapping() (*Mapping, error) {
	zr, err := gzip.NewReader(bytes.NewReader(iamMapGz))
	if err != nil {
		return nil, fmt.Errorf("embedded IAM mapping: %w", err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("embedded IAM mapping: %w", err)
	}
	m := &Mapping{}
	if err := json.Unmarshal(b, &m.File); err != nil {
		return nil, fmt.Errorf("embedded IAM mapping: %w", err)
	}
	m.simple = map[string]map[string]bool{}
	for svc, names := range m.Simple {
		m.simple[svc] = map[string]bool{}
		for _, n := range strings.Fields(names) {
			m.simple[svc][n] = true
		}
	}
	m.permissionless = map[string]bool{}
	for _, p := range m.Permissionless {
		m.permissionless[p] = true
	}
	// A prefix's own SDK services first, then, sorted, the other services with methods that name it.
	m.services = map[string][]string{}
	for prefix, svcs := range m.PrefixToSDK {
		m.services[prefix] = slices.Clone(svcs)
	}
	others := map[string][]string{}
	for svc, prefix := range m.SDKToPrefix {
		if m.Methods[svc] != nil && !slices.Contains(m.PrefixToSDK[prefix], svc) {
			others[prefix] = append(others[prefix], svc)
		}
	}
	for prefix, svcs := range others {
		slices.Sort(svcs)
		m.services[prefix] = append(m.services[prefix], svcs...)
	}
	return m, nil
}

// Access is one IAM action on one resource that a call needed. Resource is "*" when it cannot be named; Why then
// says so.
type Access struct {
	Action   string `json:"action"`
	Resource string `json:"resource"`
	Why      string `json:"why,omitempty"`
}

// Result is what the mapping says of one event.
type Result struct {
	Accesses []Access
	// Permissionless: the call needs no IAM permission (sts:GetCallerIdentity).
	Permissionless bool
	// Assumed: the mapping does not know the call; its action is guessed as PREFIX:EVENTNAME on "*".
	Assumed bool
}

// Map says which actions on which resources e needed.
func (m *Mapping) Map(e *Event) Result {
	prefix := iamPrefix(e.EventSource)
	name := eventMethod(e)
	for _, svc := range m.services[prefix] {
		if m.permissionless[svc+"."+name] {
			return Result{Permissionless: true}
		}
		if m.simple[svc][name] {
			return Result{Accesses: []Access{{Action: prefix + ":" + name, Resource: "*", Why: "the action has no resource type"}}}
		}
		calls, ok := m.Methods[svc][name]
		if !ok {
			continue
		}
		var out []Access
		for _, c := range calls {
			if c.If != nil && !holds(c.If, e.lookup) {
				continue
			}
			out = append(out, m.accesses(c, e)...)
		}
		return Result{Accesses: out}
	}
	return Result{Assumed: true, Accesses: []Access{{Action: prefix + ":" + e.EventName, Resource: "*",
		Why: "not in the mapping: action assumed from the event name"}}}
}

// accesses names the resources of one action of a call: a whole-ARN template when the mapping has one, else the
// action's resource types' ARN formats filled from the event.
func (m *Mapping) accesses(c iammap.Call, e *Event) []Access {
	star := func(why string) []Access { return []Access{{Action: c.Action, Resource: "*", Why: why}} }
	if c.Override != "" {
		arns := e.expand(c.Override)
		if len(arns) == 0 {
			return star("the record lacks the parameter naming the resource")
		}
		return accessesOf(c.Action, arns)
	}
	var arns []string
	for _, tmpl := range slices.Sorted(maps.Values(c.ARNs)) {
		for _, v := range e.expand(tmpl) {
			if strings.HasPrefix(v, "arn:") {
				arns = append(arns, v)
			}
		}
	}
	if len(arns) > 0 {
		return accessesOf(c.Action, arns)
	}
	if len(c.Resources) == 0 {
		return star("the action has no resource type")
	}
	prefix, _, _ := strings.Cut(c.Action, ":")
	types := m.Types[c.Action]
	if len(types) == 0 {
		return star("the resource's ARN format is not known")
	}
	var missing []string
	for _, t := range types {
		format := m.Resources[prefix][t]
		filled, lack := e.fill(format, c.Resources)
		arns = append(arns, filled...)
		missing = append(missing, lack...)
	}
	if len(arns) == 0 {
		slices.Sort(missing)
		return star("the record lacks " + strings.Join(slices.Compact(missing), ", "))
	}
	return accessesOf(c.Action, arns)
}

func accessesOf(action string, arns []string) []Access {
	slices.Sort(arns)
	var out []Access
	for _, a := range slices.Compact(arns) {
		out = append(out, Access{Action: action, Resource: a})
	}
	return out
}

var placeholder = regexp.MustCompile(`\$\{([^}]+)\}`)

// fill fills an ARN format's placeholders: partition, region and account from the event, the others from the
// call's templates over the request parameters. It returns the ARNs, or the parameters it lacked.
func (e *Event) fill(format string, templates map[string]string) (arns, lacking []string) {
	values := map[string][]string{}
	for _, m := range placeholder.FindAllStringSubmatch(format, -1) {
		name := m[1]
		switch name {
		case "Partition":
			values[name] = []string{e.partition()}
		case "Region":
			values[name] = []string{e.AWSRegion}
		case "Account":
			values[name] = []string{e.account()}
		default:
			tmpl, ok := templates[name]
			if !ok {
				return nil, []string{name}
			}
			v := e.expand(tmpl)
			if len(v) == 0 {
				return nil, []string{templateParams(tmpl)}
			}
			values[name] = v
		}
	}
	arns = []string{format}
	for name, vs := range values {
		var next []string
		for _, a := range arns {
			for _, v := range vs {
				next = append(next, strings.ReplaceAll(a, "${"+name+"}", v))
			}
		}
		arns = next
	}
	return arns, nil
}

// templateParams names the parameters a template reads, for the report.
func templateParams(tmpl string) string {
	var names []string
	for _, m := range placeholder.FindAllStringSubmatch(tmpl, -1) {
		names = append(names, m[1])
	}
	return strings.Join(names, "/")
}

// expand evaluates a mapping template over the event's request parameters: ${Param} (dotted paths, [] for each
// element), and the dataset's %%regex%, %%many% and %%iftruthy% functions. Nothing when a parameter is missing
// or the function is not one of those.
func (e *Event) expand(tmpl string) []string {
	if strings.HasPrefix(tmpl, "%%") {
		body := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(tmpl, "%%"), "%%"), "$$")
		fn, rest, _ := strings.Cut(body, "%")
		switch fn {
		case "regex":
			// %%regex%${X}%/RE/g%%: the first group of RE in X.
			i := strings.LastIndex(rest, "%/")
			if i < 0 {
				return nil
			}
			re, err := regexp.Compile(strings.TrimSuffix(strings.TrimSuffix(rest[i+2:], "g"), "/"))
			if err != nil {
				return nil
			}
			var out []string
			for _, v := range e.expand(rest[:i]) {
				if m := re.FindStringSubmatch(v); len(m) > 1 {
					out = append(out, m[1])
				} else if m != nil {
					out = append(out, m[0])
				}
			}
			return out
		case "many":
			var out []string
			for _, alt := range strings.Split(rest, "%") {
				out = append(out, e.expand(alt)...)
			}
			return out
		case "iftruthy":
			parts := strings.Split(rest, "%")
			if len(parts) < 2 {
				return nil
			}
			if len(e.expand(parts[0])) > 0 {
				return e.expand(parts[1])
			}
			if len(parts) > 2 && parts[2] != "" {
				return e.expand(parts[2])
			}
			return nil
		}
		return nil
	}
	out := []string{tmpl}
	for _, m := range placeholder.FindAllStringSubmatch(tmpl, -1) {
		var vs []string
		switch m[1] {
		case "Partition":
			vs = []string{e.partition()}
		case "Region":
			vs = []string{e.AWSRegion}
		case "Account":
			vs = []string{e.account()}
		default:
			vs = e.lookup(m[1])
		}
		if len(vs) == 0 {
			return nil
		}
		var next []string
		for _, o := range out {
			for _, v := range vs {
				next = append(next, strings.Replace(o, m[0], v, 1))
			}
		}
		out = next
	}
	return out
}

// holds evaluates a mapping condition over the request. An operator the package does not know holds, so the
// action it guards is kept: a policy with one action too many works, one with one too few does not.
func holds(c *iammap.Cond, lookup func(string) []string) bool {
	vs := lookup(c.LHS)
	var ok bool
	switch c.Op {
	case "Exists":
		ok = len(vs) > 0
	case "NotExists":
		ok = len(vs) == 0
	case "Equals":
		ok = slices.Contains(vs, c.RHS)
	case "NotEquals":
		ok = !slices.Contains(vs, c.RHS)
	case "IContains":
		ok = slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(strings.ToLower(v), strings.ToLower(c.RHS)) })
	case "INotContains":
		ok = !slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(strings.ToLower(v), strings.ToLower(c.RHS)) })
	default:
		ok = true
	}
	if ok && c.And != nil {
		return holds(c.And, lookup)
	}
	return ok
}
