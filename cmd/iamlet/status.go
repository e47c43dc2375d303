package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/iamlet/iamlet/agent"
)

// status reads the agent's loopback /status endpoint and prints it as a table or JSON.
func status(ctx context.Context, args []string, out, stderr io.Writer) error {
	fs := flag.NewFlagSet("iamlet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("debug-addr", "127.0.0.1:9181", "the agent's --debug-addr")
	format := fs.String("o", "table", "table or json")
	if err := parse(fs, args); err != nil {
		return err
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
	case "table":
		return printStatus(out, st, time.Now())
	}
	return fmt.Errorf("-o %q: want table or json", *format)
}

func printStatus(out io.Writer, st agent.Status, now time.Time) error {
	fmt.Fprintf(out, "ready: %v (%s)\ninterception: %s\nminting: %s\nhostNetwork pods: %s\n", st.Ready, st.Reason, st.Interception, st.Minting, st.HostNetwork)
	if len(st.NodeTrusted) > 0 {
		fmt.Fprintf(out, "node-trusted (keep the node's IMDS): %s\n", strings.Join(st.NodeTrusted, ", "))
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tSERVICE ACCOUNT\tROLE\tSTATE\tEXPIRES IN\tDETAIL")
	for _, p := range st.Pods {
		exp := "-"
		if p.Expiration != nil {
			exp = p.Expiration.Sub(now).Round(time.Second).String()
		}
		role := p.RoleARN
		if role == "" {
			role = "-"
		}
		name := p.Pod
		if p.HostNetwork {
			name += " (hostNetwork)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, name, p.ServiceAccount, role, p.State, exp, p.Detail)
	}
	return tw.Flush()
}
