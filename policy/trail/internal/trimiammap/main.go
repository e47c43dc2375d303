// Command trimiammap cuts iann0036/iam-dataset's map.json (SDK method -> IAM actions) and iam_definition.json
// (IAM resource types and their ARN formats) down to what package policy/trail reads, as gzipped compact JSON:
//
//	go run ./policy/trail/internal/trimiammap -map map.json -definition iam_definition.json -source '...' -o policy/trail/iammap.json.gz
//
// The trimmed file keeps, per SDK method, each IAM action with its resource templates (over the request's
// parameters), whole-ARN templates and the request conditions that choose between actions; the SDK-service and
// IAM-prefix maps; the methods that need no permission; and per action the ARN formats of its resource types.
// Condition-key mappings and descriptions are dropped. iam_definition.json lists no resource types per action in
// the version used, so an action's ARN formats are chosen from its service's resource types by the placeholders
// its mappings fill (see arnFormats).
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/iamlet/iamlet/policy/trail/internal/iammap"
)

// The inputs' shapes, as far as this program reads them.
type dataset struct {
	Permissionless []string                 `json:"sdk_permissionless_actions"`
	Methods        map[string][]datasetCall `json:"sdk_method_iam_mappings"`
	SDKToPrefix    map[string]string        `json:"sdk_service_mappings"`
	PrefixToSDK    map[string][]string      `json:"service_sdk_mappings"`
	Info           string                   `json:"info"`
}

type datasetCall struct {
	Action           string                     `json:"action"`
	ResourceMappings map[string]datasetTemplate `json:"resource_mappings"`
	ResourceARNs     map[string]string          `json:"resourcearn_mappings"`
	ARNOverride      *datasetTemplate           `json:"arn_override"`
	Conditions       *iammap.Cond               `json:"conditions"`
}

type datasetTemplate struct {
	Template string `json:"template"`
}

type service struct {
	Prefix    string `json:"prefix"`
	Resources []struct {
		Name string `json:"resource"`
		ARN  string `json:"arn"`
	} `json:"resources"`
}

func main() {
	mapFile := flag.String("map", "", "iam-dataset's aws/map.json")
	defFile := flag.String("definition", "", "iam-dataset's aws/iam_definition.json")
	source := flag.String("source", "", "where the inputs came from (repository and commits), recorded in the output")
	out := flag.String("o", "", "output file")
	flag.Parse()
	if *mapFile == "" || *defFile == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*mapFile, *defFile, *source, *out); err != nil {
		fmt.Fprintln(os.Stderr, "trimiammap:", err)
		os.Exit(1)
	}
}

func run(mapFile, defFile, source, out string) error {
	var ds dataset
	if err := readJSON(mapFile, &ds); err != nil {
		return err
	}
	var services []service
	if err := readJSON(defFile, &services); err != nil {
		return err
	}
	t := iammap.File{
		Source:         source,
		SDKToPrefix:    ds.SDKToPrefix,
		PrefixToSDK:    ds.PrefixToSDK,
		Permissionless: ds.Permissionless,
		Methods:        map[string]map[string][]iammap.Call{},
		Simple:         map[string]string{},
		Types:          map[string][]string{},
		Resources:      map[string]map[string]string{},
	}
	placeholders := map[string]map[string]bool{} // action -> the ARN placeholders its mappings fill
	for name, calls := range ds.Methods {
		svc, method, ok := strings.Cut(name, ".")
		if !ok {
			return fmt.Errorf("%s: method name without a service", name)
		}
		if len(calls) == 1 && calls[0].Action == ds.SDKToPrefix[svc]+":"+method && len(calls[0].ResourceMappings) == 0 &&
			calls[0].ResourceARNs == nil && calls[0].ARNOverride == nil && calls[0].Conditions == nil {
			t.Simple[svc] = strings.TrimPrefix(t.Simple[svc]+" "+method, " ")
			continue
		}
		if t.Methods[svc] == nil {
			t.Methods[svc] = map[string][]iammap.Call{}
		}
		for _, c := range calls {
			out := iammap.Call{Action: c.Action, ARNs: c.ResourceARNs, If: c.Conditions}
			if len(c.ResourceMappings) > 0 {
				out.Resources = map[string]string{}
				if placeholders[c.Action] == nil {
					placeholders[c.Action] = map[string]bool{}
				}
			}
			for k, v := range c.ResourceMappings {
				out.Resources[k] = v.Template
				placeholders[c.Action][k] = true
			}
			if c.ARNOverride != nil {
				out.Override = c.ARNOverride.Template
			}
			t.Methods[svc][method] = append(t.Methods[svc][method], out)
		}
	}
	byPrefix := map[string][][2]string{}
	for _, s := range services {
		for _, r := range s.Resources {
			byPrefix[s.Prefix] = append(byPrefix[s.Prefix], [2]string{r.Name, r.ARN})
		}
	}
	for action, keys := range placeholders {
		prefix, _, _ := strings.Cut(action, ":")
		for _, r := range resourceTypes(action, keys, byPrefix[prefix]) {
			t.Types[action] = append(t.Types[action], r[0])
			if t.Resources[prefix] == nil {
				t.Resources[prefix] = map[string]string{}
			}
			t.Resources[prefix][r[0]] = r[1]
		}
	}
	for svc, names := range t.Simple {
		list := strings.Fields(names)
		slices.Sort(list)
		t.Simple[svc] = strings.Join(list, " ")
	}
	// Gzipped: the compact JSON is 1.6 MB with every service, 0.2 MB gzipped. The header carries no name or
	// time, so the same inputs give the same bytes.
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(zw)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(t); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

var placeholder = regexp.MustCompile(`\$\{(\w+)\}`)

// resourceTypes picks an action's resource types (name and ARN format): those whose placeholders (beyond partition,
// region and account) the action's mappings all fill, keeping only the most specific (an object's format, not its
// bucket's). Where several types take the very same placeholders (route53's hosted zone, health check, ... all
// take an Id), the one whose name the action's names wins; with none, the action gets no format (and "*").
func resourceTypes(action string, keys map[string]bool, resources [][2]string) [][2]string {
	type candidate struct {
		name, arn string
		vars      []string
	}
	var cands []candidate
	for _, r := range resources {
		var vars []string
		for _, m := range placeholder.FindAllStringSubmatch(r[1], -1) {
			switch m[1] {
			case "Partition", "Region", "Account":
			default:
				vars = append(vars, m[1])
			}
		}
		if len(vars) == 0 || slices.ContainsFunc(vars, func(v string) bool { return !keys[v] }) {
			continue
		}
		slices.Sort(vars)
		cands = append(cands, candidate{r[0], r[1], slices.Compact(vars)})
	}
	subset := func(a, b []string) bool { // a strictly within b
		return len(a) < len(b) && !slices.ContainsFunc(a, func(v string) bool { return !slices.Contains(b, v) })
	}
	groups := map[string][]candidate{}
	for _, c := range cands {
		if slices.ContainsFunc(cands, func(o candidate) bool { return subset(c.vars, o.vars) }) {
			continue
		}
		k := strings.Join(c.vars, ",")
		groups[k] = append(groups[k], c)
	}
	norm := func(s string) string { return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s)) }
	_, name, _ := strings.Cut(action, ":")
	var out [][2]string
	for _, g := range groups {
		if len(g) == 1 {
			out = append(out, [2]string{g[0].name, g[0].arn})
			continue
		}
		best := -1
		for i, c := range g {
			if strings.Contains(norm(name), norm(c.name)) && (best < 0 || len(c.name) > len(g[best].name)) {
				best = i
			}
		}
		if best >= 0 {
			out = append(out, [2]string{g[best].name, g[best].arn})
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

func readJSON(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}
