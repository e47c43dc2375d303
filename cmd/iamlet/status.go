package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/iamlet/iamlet/agent"
)

// status reads the agent's loopback /status endpoint and prints it as a table or JSON.
func status(ctx context.Context, args []string, out, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("debug-addr", "127.0.0.1:9181", "the agent's --debug-addr")
	format := fs.String("o", "table", "table, wide (with addresses and last refresh), json or yaml")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch *format {
	case "table", "wide", "json", "yaml":
	default:
		err := fmt.Errorf("-o %q: want table, wide, json or yaml", *format)
		fmt.Fprintln(stderr, "iamlet status:", err)
		return &badFlags{err}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("is the agent running? %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	var st agent.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("decoding status: %w", err)
	}
	switch *format {
	case "json":
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		b, err := yaml.Marshal(st)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	}
	return printStatus(out, st, *format == "wide", time.Now())
}

func printStatus(out io.Writer, st agent.Status, wide bool, now time.Time) error {
	fmt.Fprintf(out, "ready: %v (%s)\ninterception: %s\nminting: %s\nhostNetwork pods: %s\n", st.Ready, st.Reason, st.Interception, st.Minting, st.HostNetwork)
	if len(st.NodeTrusted) > 0 {
		fmt.Fprintf(out, "node-trusted (keep the node's IMDS): %s\n", strings.Join(st.NodeTrusted, ", "))
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	head := "NAMESPACE\tPOD\tSERVICE ACCOUNT\tROLE\tSTATE\tEXPIRES IN"
	if wide {
		head += "\tIPS\tLAST REFRESH\tACCESS KEY ID\tSESSION POLICY"
	}
	fmt.Fprintln(tw, head+"\tDETAIL")
	for _, p := range st.Pods {
		exp := "-"
		if p.Expiration != nil {
			exp = p.Expiration.Sub(now).Round(time.Second).String()
		}
		role := cmp.Or(p.RoleARN, "-")
		if p.ChainedRoleARN != "" {
			role += " -> " + p.ChainedRoleARN
		}
		name := p.Pod
		if p.HostNetwork {
			name += " (hostNetwork)"
		}
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", p.Namespace, name, p.ServiceAccount, role, p.State, exp)
		if wide {
			refreshed := "-"
			if p.LastRefresh != nil {
				refreshed = now.Sub(*p.LastRefresh).Round(time.Second).String() + " ago"
			}
			ips := strings.Join(p.IPs, ",")
			if ips == "" {
				ips = "-"
			}
			row += "\t" + ips + "\t" + refreshed + "\t" + cmp.Or(p.AccessKeyID, "-") + "\t" + sessionPolicy(p)
		}
		fmt.Fprintln(tw, row+"\t"+p.Detail)
	}
	return tw.Flush()
}

// sessionPolicy names what narrows a pod's session: the inline policy's digest (short, as git shows a commit) and
// the managed policies' names.
func sessionPolicy(p agent.PodStatus) string {
	var parts []string
	if p.SessionPolicySHA256 != "" {
		parts = append(parts, "sha256:"+p.SessionPolicySHA256[:12])
	}
	for _, a := range p.SessionPolicyARNs {
		parts = append(parts, a[strings.LastIndexByte(a, '/')+1:])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}
