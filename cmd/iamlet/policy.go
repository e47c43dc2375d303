package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/iamlet/iamlet/policy"
	"github.com/iamlet/iamlet/policy/issuance"
	"github.com/iamlet/iamlet/policy/trail"
)

// policyCmd is `iamlet policy`: least-privilege policies from evidence (docs/least-privilege.md).
//
//	iamlet policy [generate] --cloudtrail DIR|FILE --issuance FILE [--role-policy FILE] [--service-account NS/NAME] [-o table|json]
//	iamlet policy check --session-policy FILE --service-account NS/NAME --cloudtrail DIR|FILE --issuance FILE [-o table|json]
//
// check exits 1 when the session policy would deny any observed call (or the workload made none), 0 otherwise.
func policyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := "generate"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		sub, args = args[0], args[1:]
	}
	switch sub {
	case "generate":
		return policyGenerate(args, stdout, stderr)
	case "check":
		return policyCheck(args, stdout, stderr)
	}
	return badValue(fmt.Errorf("policy %s: want generate or check", sub))
}

// paths is a flag that may be given more than once.
type paths []string

func (p *paths) String() string     { return strings.Join(*p, ",") }
func (p *paths) Set(v string) error { *p = append(*p, v); return nil }

// evidenceFlags are the inputs both subcommands read.
type evidenceFlags struct {
	cloudtrail, issuance paths
	serviceAccount       string
	format               string
}

func (f *evidenceFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.cloudtrail, "cloudtrail", "CloudTrail log files or directories of them, as delivered to S3 (*.json.gz, *.json); repeatable")
	fs.Var(&f.issuance, "issuance", "issuance records: the agent's --issuance-file, or its JSON log (kubectl logs); repeatable")
	fs.StringVar(&f.format, "o", "table", "table or json")
}

func (f *evidenceFlags) check(requireSA bool) (trail.Workload, error) {
	var w trail.Workload
	switch {
	case len(f.cloudtrail) == 0:
		return w, badValue(errors.New("--cloudtrail is required"))
	case len(f.issuance) == 0:
		return w, badValue(errors.New("--issuance is required: without it no call can be attributed to a workload"))
	case f.format != "table" && f.format != "json":
		return w, badValue(fmt.Errorf("-o %q: want table or json", f.format))
	case f.serviceAccount == "" && requireSA:
		return w, badValue(errors.New("--service-account NAMESPACE/NAME is required"))
	case f.serviceAccount == "":
		return w, nil
	}
	ns, name, ok := strings.Cut(f.serviceAccount, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return w, badValue(fmt.Errorf("--service-account %q: want NAMESPACE/NAME", f.serviceAccount))
	}
	return trail.Workload{Namespace: ns, ServiceAccount: name}, nil
}

func (f *evidenceFlags) analyze() (*trail.Mapping, *trail.Analysis, error) {
	m, err := trail.LoadMapping()
	if err != nil {
		return nil, nil, err
	}
	events, err := trail.ReadCloudTrail(f.cloudtrail...)
	if err != nil {
		return nil, nil, fmt.Errorf("reading CloudTrail: %w", err)
	}
	records, err := issuance.ReadFiles(f.issuance...)
	if err != nil {
		return nil, nil, fmt.Errorf("reading issuance records: %w", err)
	}
	return m, trail.Analyze(m, events, records), nil
}

func readPolicy(file string) (*policy.Document, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	d, err := policy.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return d, nil
}

func policyGenerate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet policy generate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ev evidenceFlags
	var rolePolicies paths
	ev.register(fs)
	fs.StringVar(&ev.serviceAccount, "service-account", "", "only this NAMESPACE/NAME (default: every workload seen)")
	fs.Var(&rolePolicies, "role-policy", "a policy document of the role, to diff against (used, granted but unused, used but not granted); repeatable")
	if err := parse(fs, args); err != nil {
		return err
	}
	only, err := ev.check(false)
	if err != nil {
		return err
	}
	var docs []*policy.Document
	for _, f := range rolePolicies {
		d, err := readPolicy(f)
		if err != nil {
			return badValue(fmt.Errorf("--role-policy: %w", err))
		}
		docs = append(docs, d)
	}
	m, a, err := ev.analyze()
	if err != nil {
		return err
	}
	var keep func(trail.Workload) bool
	if ev.serviceAccount != "" {
		keep = func(w trail.Workload) bool { return w == only }
	}
	rep := a.Report(m, keep, docs)
	if ev.format == "json" {
		return writeJSON(stdout, rep)
	}
	return printReport(stdout, rep, rolePolicies)
}

// checkReport is the JSON output of iamlet policy check.
type checkReport struct {
	Workload            trail.Workload  `json:"workload"`
	SessionPolicySHA256 string          `json:"session_policy_sha256"`
	Calls               int             `json:"calls"`
	WouldDeny           []trail.Finding `json:"would_deny"` // every observed access the policy does not plainly allow
	NotObservable       []string        `json:"not_observable"`
}

func policyCheck(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet policy check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ev evidenceFlags
	var sessionPolicy string
	ev.register(fs)
	fs.StringVar(&ev.serviceAccount, "service-account", "", "the workload, NAMESPACE/NAME (required)")
	fs.StringVar(&sessionPolicy, "session-policy", "", "the session policy to check (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	w, err := ev.check(true)
	if err != nil {
		return err
	}
	if sessionPolicy == "" {
		return badValue(errors.New("--session-policy is required"))
	}
	doc, err := readPolicy(sessionPolicy)
	if err != nil {
		return badValue(fmt.Errorf("--session-policy: %w", err))
	}
	_, a, err := ev.analyze()
	if err != nil {
		return err
	}
	act := a.Workload(w)
	if act == nil {
		return fmt.Errorf("no call of %s in the CloudTrail records given (%d records, %d unattributed): nothing to check against", w, a.Events, a.Unattributed.Events)
	}
	rep := checkReport{Workload: w, SessionPolicySHA256: doc.Hash(), Calls: act.Calls, WouldDeny: act.Check(doc), NotObservable: trail.NotObservable}
	if rep.WouldDeny == nil {
		rep.WouldDeny = []trail.Finding{}
	}
	if ev.format == "json" {
		err = writeJSON(stdout, rep)
	} else {
		err = printCheck(stdout, rep)
	}
	if err != nil {
		return err
	}
	if n := len(rep.WouldDeny); n > 0 {
		return fmt.Errorf("the session policy would deny %d of the accesses %s made", n, w)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printReport(out io.Writer, rep trail.Report, rolePolicies []string) error {
	fmt.Fprintf(out, "%d CloudTrail records: %d issued the workloads' credentials, %d not attributed to any workload\n",
		rep.Events, rep.IssuanceEvents, rep.Unattributed.Events)
	for _, w := range rep.Workloads {
		fmt.Fprintf(out, "\n== %s: %d calls, role %s\n", w.Workload, w.Calls, strings.Join(w.Roles, ", "))
		printUses(out, "used", w.Uses)
		printUses(out, "denied by IAM (left out of the policy)", w.Denied)
		for _, e := range w.Assumed {
			fmt.Fprintf(out, "not in the mapping, action guessed from the event: %s\n", e)
		}
		if w.Policy == nil {
			fmt.Fprintln(out, "no call needed a permission: no policy")
		} else {
			b, err := json.MarshalIndent(w.Policy, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "policy (%d characters compact, sha256 %s):\n%s\n", w.PolicySize, w.PolicySHA256, b)
		}
		if w.Diff != nil {
			printFindings(out, "used and granted by "+strings.Join(rolePolicies, ", "), w.Diff.Used)
			printFindings(out, "used but not granted by those documents (granted elsewhere?)", w.Diff.UsedNotGranted)
			var rows [][]string
			for _, g := range w.Diff.GrantedUnused {
				st := fmt.Sprint(g.Statement)
				if g.Sid != "" {
					st += " (" + g.Sid + ")"
				}
				rows = append(rows, []string{rolePolicies[g.Document], st, g.Action, strings.Join(g.Resources, ",")})
			}
			printTable(out, "granted but unused", []string{"DOCUMENT", "STATEMENT", "ACTION", "RESOURCES"}, rows)
		}
	}
	if len(rep.Unattributed.Principals) > 0 {
		fmt.Fprintln(out, "\nnot attributed (no issuance record names their key or session):")
		for _, p := range rep.Unattributed.Principals {
			fmt.Fprintf(out, "  %6d  %s\n", p.Events, p.Principal)
		}
	}
	return printNotObservable(out, rep.NotObservable)
}

func printUses(out io.Writer, title string, uses []trail.Use) {
	var rows [][]string
	for _, u := range uses {
		events := strings.ReplaceAll(strings.Join(u.Events, ","), ".amazonaws.com", "")
		rows = append(rows, []string{u.Action, u.Resource, fmt.Sprint(u.Calls), events, u.Why})
	}
	printTable(out, title, []string{"ACTION", "RESOURCE", "CALLS", "EVENTS", "NOTE"}, rows)
}

func printFindings(out io.Writer, title string, fs []trail.Finding) {
	var rows [][]string
	for _, f := range fs {
		rows = append(rows, []string{f.Action, f.Resource, fmt.Sprint(f.Calls), f.Decision.String(), f.Why})
	}
	printTable(out, title, []string{"ACTION", "RESOURCE", "CALLS", "DECISION", "NOTE"}, rows)
}

// printTable prints a titled, indented table, or nothing when it has no rows.
func printTable(out io.Writer, title string, head []string, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(out, title+":")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, r := range append([][]string{head}, rows...) {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	tw.Flush()
}

func printNotObservable(out io.Writer, notes []string) error {
	fmt.Fprintln(out, "\nnot observable in CloudTrail:")
	for _, n := range notes {
		fmt.Fprintf(out, "  - %s\n", n)
	}
	return nil
}

func printCheck(out io.Writer, rep checkReport) error {
	fmt.Fprintf(out, "%s: %d calls checked against the session policy (sha256 %s)\n", rep.Workload, rep.Calls, rep.SessionPolicySHA256)
	if len(rep.WouldDeny) == 0 {
		fmt.Fprintln(out, "the session policy allows every observed access")
	} else {
		printFindings(out, "would be denied (or decided by conditions this check cannot evaluate)", rep.WouldDeny)
	}
	return printNotObservable(out, rep.NotObservable)
}
