package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/iamlet/iamlet/e2e/stack"
)

// The conformance suite (issue 4): unmodified SDKs in pod namespaces, the real agent, real iptables, MinIO
// as STS and S3. Each client must get its pod's own role credentials in every mode its SDK supports and
// use them (role A: GetObject allowed, PutObject denied), and never see a node secret. Wire details that
// the handler's unit tests already pin (TTL parsing, path normalisation, refusals) are not repeated here;
// what is checked is what only the real SDKs and the real network path show.

// The agent's container-credentials listeners in these tests, and the addresses pods call.
const (
	containerAddrs = stack.NodeIP + ":8183,[" + stack.NodeIPv6 + "]:8183"
	containerURI   = "http://169.254.170.23/v1/credentials"
	imdsV6         = "fd00:ec2::254"
	containerV6    = "fd00:ec2::23"
)

// sdkResult is one client run, in the gov2 protocol's terms.
type sdkResult struct {
	source, akid string // from "creds <source> <akid>"
	get, put     string // what followed "get " and "put ": "ok", "denied AccessDenied", "error ..."
	out          string // everything printed, for leak checks and messages
	err          error
}

func (r sdkResult) gotCreds() bool { return r.akid != "" }

// sdk is one unmodified SDK workload.
type sdk struct {
	name string
	// How the client names the provider that answered: from IMDS, and from the container endpoint.
	imdsSource, containerSource string
	// noContainer says why this SDK version cannot use the container endpoint ("" = it can).
	noContainer string
	run         func(ctx context.Context, p execer, env []string) sdkResult
}

// execer runs a program as one of a pod's processes: *stack.Pod in its own network namespace, *stack.HostPod in
// the node's, in its cgroup.
type execer interface {
	Exec(ctx context.Context, env []string, argv ...string) stack.Result
}

// The aws-sdk-go v1 program and the JavaScript client, built or put in place on first use.
var jsPath string

func jsScript(t *testing.T) string {
	t.Helper()
	if jsPath == "" {
		p, err := stack.JSClient(suite.Dir)
		if err != nil {
			t.Fatal(err)
		}
		jsPath = p
	}
	return jsPath
}

// sdks lists the clients, cheapest first.
func sdks(t *testing.T) []sdk {
	t.Helper()
	gov1, js := clientBin(t, "gov1"), jsScript(t)
	s3 := []string{"-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket}
	s3long := []string{"--endpoint", stack.MinIOFromPods, "--bucket", stack.Bucket}
	// botocore 1.29 (boto3 1.26, and the copy inside awscli 2.9) predates EKS Pod Identity support
	// (botocore 1.33): FULL_URI may only name 169.254.170.2 or loopback, and only the token itself
	// (AWS_CONTAINER_AUTHORIZATION_TOKEN), not a token file, is read.
	const oldBotocore = "botocore %s allows only 169.254.170.2 and loopback in AWS_CONTAINER_CREDENTIALS_FULL_URI and does not read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
	return []sdk{
		{name: "aws-sdk-go-v2", imdsSource: "EC2RoleProvider", containerSource: "CredentialsEndpointProvider",
			run: programRun(append([]string{suite.gov2Bin}, s3...))},
		{name: "aws-sdk-go-v1", imdsSource: "EC2RoleProvider", containerSource: "CredentialsEndpointProvider",
			run: programRun(append([]string{gov1}, s3...))},
		{name: "boto3", imdsSource: "iam-role", noContainer: fmt.Sprintf(oldBotocore, "1.29.27 (boto3 1.26.27)"),
			run: programRun(append([]string{stack.Python3, stack.RepoPath(stack.Boto3Client)}, s3long...))},
		{name: "js-v3", imdsSource: "imds", containerSource: "http",
			run: programRun(append([]string{stack.Node, js}, s3long...))},
		{name: "aws-cli", imdsSource: "iam-role", noContainer: fmt.Sprintf(oldBotocore, "of awscli 2.9.19"),
			run: cliRun},
	}
}

// programRun runs a client that speaks the gov2 protocol.
func programRun(argv []string) func(context.Context, execer, []string) sdkResult {
	return func(ctx context.Context, p execer, env []string) sdkResult {
		r := p.Exec(ctx, env, argv...)
		res := sdkResult{out: r.Output(), err: r.Err}
		for _, l := range strings.Split(r.Stdout, "\n") {
			f := strings.Fields(l)
			switch {
			case len(f) == 3 && f[0] == "creds":
				res.source, res.akid = f[1], f[2]
			case len(f) > 1 && f[0] == "get":
				res.get = strings.Join(f[1:], " ")
			case len(f) > 1 && f[0] == "put":
				res.put = strings.Join(f[1:], " ")
			}
		}
		return res
	}
}

var (
	cliCredential = regexp.MustCompile(`Credential=([A-Za-z0-9]+)/`)
	cliErrorCode  = regexp.MustCompile(`An error occurred \(([A-Za-z0-9.]+)\)`)
)

// cliRun runs the AWS CLI twice, get-object and put-object, side by side: its cold start is most of the
// suite's time. get-object runs with --debug: botocore's log names the provider that answered and the
// signature shows the key id.
func cliRun(ctx context.Context, p execer, env []string) sdkResult {
	putDone := make(chan stack.Result, 1)
	go func() {
		putDone <- p.Exec(ctx, env, stack.AWSCLI, "--endpoint-url", stack.MinIOFromPods,
			"s3api", "put-object", "--bucket", stack.Bucket, "--key", "cli", "--body", "/etc/hostname")
	}()
	get := p.Exec(ctx, env, stack.AWSCLI, "--debug", "--endpoint-url", stack.MinIOFromPods,
		"s3api", "get-object", "--bucket", stack.Bucket, "--key", "seed", "/dev/null")
	put := <-putDone
	res := sdkResult{out: get.Output() + put.Output(), get: cliOutcome(get), put: cliOutcome(put)}
	switch {
	case strings.Contains(get.Stderr, "Found credentials from IAM Role"):
		res.source = "iam-role"
	case strings.Contains(get.Stderr, "Found credentials from container"):
		res.source = "container-role"
	}
	if m := cliCredential.FindStringSubmatch(get.Stderr); m != nil {
		res.akid = m[1]
	}
	if !res.gotCreds() {
		res.err = fmt.Errorf("aws s3api get-object found no credentials (%v)", get.Err)
	}
	return res
}

func cliOutcome(r stack.Result) string {
	if r.Err == nil {
		return "ok"
	}
	if m := cliErrorCode.FindStringSubmatch(r.Stderr); m != nil {
		return "denied " + m[1]
	}
	lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
	return "error " + lines[len(lines)-1]
}

// counters are the evidence of which path a client took: the agent's request counters and packet
// counters inside the pods.
type counters struct {
	tokens, creds, credsRefused, container float64 // agent: token PUTs served, credential GETs served / refused, container GETs served
	// pod: token PUTs refused by forceIMDSv1, packets to [fd00:ec2::254]:80 and [fd00:ec2::23]:80
	rejectedPUTs, v6IMDS, v6Container int
}

func (c counters) minus(o counters) counters {
	return counters{c.tokens - o.tokens, c.creds - o.creds, c.credsRefused - o.credsRefused, c.container - o.container,
		c.rejectedPUTs - o.rejectedPUTs, c.v6IMDS - o.v6IMDS, c.v6Container - o.v6Container}
}

func readCounters(t *testing.T, p *stack.Pod) counters {
	t.Helper()
	m, err := stack.Scrape()
	if err != nil {
		t.Fatalf("scraping the agent: %v", err)
	}
	const req = "iamlet_metadata_requests_total"
	return counters{
		tokens:       m.Sum(req, map[string]string{"class": "token", "outcome": "served"}),
		creds:        m.Sum(req, map[string]string{"class": "credentials", "outcome": "served"}),
		credsRefused: m.Sum(req, map[string]string{"class": "credentials", "outcome": "bad_token"}),
		container:    m.Sum("iamlet_metadata_container_requests_total", map[string]string{"outcome": "served"}),
		rejectedPUTs: podPackets(t, p, "iptables", "REJECT"),
		v6IMDS:       podPackets(t, p, "ip6tables", imdsV6),
		v6Container:  podPackets(t, p, "ip6tables", containerV6),
	}
}

// podPackets is the packet count of the first OUTPUT rule in the pod's namespace whose listing contains
// match, or 0.
func podPackets(t *testing.T, p *stack.Pod, tool, match string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", p.NetNS, tool, "-L", "OUTPUT", "-v", "-n", "-x").CombinedOutput()
	if err != nil {
		t.Fatalf("%s counters in %s: %v: %s", tool, p.Name, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 2 && strings.Contains(l, match) {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	return 0
}

// countV6 adds rules without a target to the pod's OUTPUT chain: they only count the packets the pod
// sends to the IPv6 metadata and container addresses, which tells that an SDK really used them.
func countV6(t *testing.T, p *stack.Pod) {
	t.Helper()
	for _, dst := range []string{imdsV6, containerV6} {
		out, err := exec.Command("ip", "netns", "exec", p.NetNS, "ip6tables", "-A", "OUTPUT", "-d", dst, "-p", "tcp", "--dport", "80").CombinedOutput()
		if err != nil {
			t.Fatalf("counting IPv6 packets to %s in %s: %v: %s", dst, p.Name, err, out)
		}
	}
}

// confMode is one way of reaching the agent.
type confMode struct {
	name      string
	v1        bool     // run in the pod whose token PUT is refused (forceIMDSv1)
	env       []string // on top of Pod.Exec's (which sets ENDPOINT_MODE=IPv4 and AWS_REGION)
	container bool     // credentials from the container endpoint
	wantFail  bool     // the SDKs must get no credentials
	// evidence says what the counters must show for one client run, "" if they show it took this path.
	evidence func(d counters) string
}

func want(cond bool, why string) string {
	if cond {
		return ""
	}
	return why
}

// confModes are the ways of reaching the agent.
type confModes struct {
	imdsV2, imdsV1, ipv6, endpointEnv, container, containerV6, containerNewline, v1Refused confMode
}

// newConfModes returns the modes; the container modes read their token from tokenFile, and from
// newlineFile, which holds a token with a trailing newline.
func newConfModes(tokenFile, newlineFile string) confModes {
	var m confModes
	m.imdsV2 = confMode{name: "IMDSv2", evidence: func(d counters) string {
		return want(d.tokens > 0 && d.creds > 0, "no token PUT and credential GET served")
	}}
	m.imdsV1 = confMode{name: "IMDSv1", v1: true, evidence: func(d counters) string {
		return want(d.rejectedPUTs > 0 && d.tokens == 0 && d.creds > 0,
			"the token PUT was not tried and refused, or credentials were not served without a token")
	}}
	m.ipv6 = confMode{name: "IPv6", env: []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6"}, evidence: func(d counters) string {
		return want(d.v6IMDS > 0 && d.tokens > 0 && d.creds > 0, "no IMDSv2 exchange over [fd00:ec2::254]")
	}}
	// A user-set endpoint that is an IPv6 literal with a trailing slash: an SDK that joins paths naively sends "//".
	m.endpointEnv = confMode{name: "endpoint-env-v6-slash", env: []string{"AWS_EC2_METADATA_SERVICE_ENDPOINT=http://[" + imdsV6 + "]/"},
		evidence: func(d counters) string {
			return want(d.v6IMDS > 0 && d.creds > 0, "no credentials served over [fd00:ec2::254]")
		}}
	m.container = confMode{name: "container", container: true,
		env: []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + containerURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" + tokenFile},
		evidence: func(d counters) string {
			return want(d.container > 0 && d.creds == 0, "credentials did not come from the container endpoint alone")
		}}
	m.containerV6 = confMode{name: "container-IPv6", container: true,
		env: []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=http://[" + containerV6 + "]/v1/credentials", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" + tokenFile},
		evidence: func(d counters) string {
			return want(d.v6Container > 0 && d.container > 0 && d.creds == 0, "credentials did not come from the container endpoint over [fd00:ec2::23]")
		}}
	// A trailing newline would be sent as part of the Authorization header: SDKs refuse the token
	// before asking, and must not fall back to IMDS either.
	m.containerNewline = confMode{name: "container-token-newline", container: true, wantFail: true,
		env: []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + containerURI, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" + newlineFile},
		evidence: func(d counters) string {
			return want(d.container == 0 && d.creds == 0, "the SDK sent the token anyway, or fell back to IMDS")
		}}
	m.v1Refused = confMode{name: "IMDSv1-refused", v1: true, wantFail: true, evidence: func(d counters) string {
		return want(d.rejectedPUTs > 0 && d.creds == 0 && d.credsRefused > 0,
			"the SDK did not try v2, or a tokenless credential GET was not refused")
	}}
	return m
}

// TestConformance runs every client in every mode against the agent. Two pods of role A: one plain, one
// whose token PUT is refused inside its namespace; the modes that are only an environment variable
// share the plain pod.
func TestConformance(t *testing.T) {
	clients := sdks(t)
	ctx := context.Background()
	plain := suite.NewPod(t, "conf-a", stack.PodOptions{ServiceAccount: saA})
	v1 := suite.NewPod(t, "conf-a-v1", stack.PodOptions{ServiceAccount: saA})
	forceIMDSv1(t, v1)
	countV6(t, plain)
	// The agent does not check the container endpoint's Authorization value yet (any non-empty one is
	// accepted; the caller is identified by source address), so any token will do.
	tokenFile := filepath.Join(suite.Dir, "container-token")
	newlineFile := filepath.Join(suite.Dir, "container-token-newline")
	for f, token := range map[string]string{tokenFile: "iamlet-conformance-token", newlineFile: "iamlet-conformance-token\n"} {
		if err := os.WriteFile(f, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := newConfModes(tokenFile, newlineFile)

	agents := []struct {
		name  string
		flags []string
		token bool // the probe needs an IMDSv2 token
		modes []confMode
	}{
		{"agent", []string{"--container-addr=" + containerAddrs}, false,
			[]confMode{m.imdsV2, m.imdsV1, m.ipv6, m.endpointEnv, m.container, m.containerV6, m.containerNewline}},
		{"require-imdsv2", []string{"--require-imdsv2"}, true,
			[]confMode{m.imdsV2, m.ipv6, m.v1Refused}},
	}
	for _, ag := range agents {
		t.Run(ag.name, func(t *testing.T) {
			dedicatedAgent(t, ag.flags...)
			// What the agent serves each pod: every SDK must end up with exactly these credentials.
			served := map[*stack.Pod]string{plain: servedDoc(t, plain, ag.token).AccessKeyID}
			if !ag.token {
				served[v1] = servedDoc(t, v1, false).AccessKeyID
			}
			for _, mode := range ag.modes {
				t.Run(mode.name, func(t *testing.T) {
					p := plain
					if mode.v1 {
						p = v1
					}
					for _, c := range clients {
						t.Run(c.name, func(t *testing.T) {
							if mode.container && c.noContainer != "" {
								t.Skip(c.noContainer)
							}
							before := readCounters(t, p)
							start := time.Now()
							r := c.run(ctx, p, mode.env)
							took := time.Since(start)
							d := readCounters(t, p).minus(before)
							stack.AssertNoNodeSecrets(t, c.name, r.out)
							if why := mode.evidence(d); why != "" {
								t.Errorf("%s in %s (%s): %s; counters moved by %+v", c.name, mode.name, took.Round(time.Millisecond), why, d)
							}
							checkSDKResult(t, c, mode, r, served[p])
							t.Logf("%s: %s in %s", c.name, summary(r), took.Round(time.Millisecond))
						})
					}
				})
			}
		})
	}
}

func checkSDKResult(t *testing.T, c sdk, mode confMode, r sdkResult, servedAKID string) {
	t.Helper()
	if mode.wantFail {
		if r.gotCreds() || r.err == nil {
			t.Errorf("%s got credentials in mode %s, want none (err=%v):\n%s", c.name, mode.name, r.err, r.out)
		}
		return
	}
	if r.err != nil || !r.gotCreds() {
		t.Fatalf("%s: no credentials: %v\n%s", c.name, r.err, r.out)
	}
	wantSource := c.imdsSource
	if mode.container {
		wantSource = c.containerSource
	}
	if r.source != wantSource {
		t.Errorf("%s: credentials from %q, want %q", c.name, r.source, wantSource)
	}
	if servedAKID != "" && r.akid != servedAKID {
		t.Errorf("%s: access key %s, want %s (what the agent serves this pod)", c.name, r.akid, servedAKID)
	}
	if r.get != "ok" {
		t.Errorf("%s: GetObject: %q, want ok (role A may read)", c.name, r.get)
	}
	if r.put != "denied AccessDenied" {
		t.Errorf("%s: PutObject: %q, want \"denied AccessDenied\" (role A may not write)", c.name, r.put)
	}
}

func summary(r sdkResult) string {
	if !r.gotCreds() {
		return fmt.Sprintf("no credentials (%v)", r.err)
	}
	return fmt.Sprintf("creds %s, get %s, put %s", r.source, r.get, r.put)
}

// credentialDocument is the IMDS credential document as SDKs parse it.
type credentialDocument struct {
	Code, Type, LastUpdated, Expiration string
	AccessKeyID                         string `json:"AccessKeyId"`
	SecretAccessKey, Token              string
	AccountID                           *string `json:"AccountId"`
}

// probeBlock is one answer printed by e2e/clients/probe.
type probeBlock struct {
	Request string
	Status  int
	Body    string
}

// probe runs the probe in p and returns its answers, one per request; addr "" is 169.254.169.254:80.
func probe(t *testing.T, p *stack.Pod, addr string, args ...string) []probeBlock {
	t.Helper()
	if addr == "" {
		addr = stack.IMDSv4 + ":80"
	}
	r := p.Exec(context.Background(), nil, append([]string{clientBin(t, "probe"), "-addr", addr}, args...)...)
	stack.AssertNoNodeSecrets(t, "probe", r.Output())
	if r.Err != nil {
		t.Fatalf("probe %v in %s: %v\n%s", args, p.Name, r.Err, r.Output())
	}
	var out []probeBlock
	for _, b := range strings.Split(r.Stdout, "=== ")[1:] {
		// "METHOD PATH\nSTATUS\nBODY\n": the probe adds exactly one newline after the body.
		req, rest, _ := strings.Cut(b, "\n")
		status, body, _ := strings.Cut(rest, "\n")
		n, err := strconv.Atoi(status)
		if err != nil {
			t.Fatalf("probe %s: %s", req, rest)
		}
		out = append(out, probeBlock{req, n, strings.TrimSuffix(body, "\n")})
	}
	return out
}

// servedDoc reads p's credential document from the agent through the pod's own network path.
func servedDoc(t *testing.T, p *stack.Pod, token bool) credentialDocument {
	t.Helper()
	var flags []string
	if token {
		flags = []string{"-token"}
	}
	list := probe(t, p, "", append(flags, "/latest/meta-data/iam/security-credentials/")...)[0]
	if list.Status != 200 {
		t.Fatalf("role listing from %s: %d %s", p.Name, list.Status, list.Body)
	}
	doc := probe(t, p, "", append(flags, "/latest/meta-data/iam/security-credentials/"+list.Body)...)[0]
	var d credentialDocument
	if err := json.Unmarshal([]byte(doc.Body), &d); doc.Status != 200 || err != nil {
		t.Fatalf("credential document from %s: %d %v\n%s", p.Name, doc.Status, err, doc.Body)
	}
	return d
}

// TestConformanceHeldTokens restarts the agent under an SDK that holds an IMDSv2 token: aws-sdk-go v1
// asks for 21600 s and keeps its token across credential fetches. With the same --token-key-file the
// held token stays valid, because tokens are stateless (the restarted agent serves credentials without
// a new token PUT). With another key the held token is refused (401) and the SDK recovers with a new
// token; aws-sdk-go v1 does not retry the refused GET, so the first fetch after the 401 fails and the
// next one succeeds (aws-sdk-go-v2 retries at once). That one failure per workload is what a restart
// with a per-process key costs, and why deployments should persist --token-key-file. (aws-sdk-go-v2
// holds its token for 300 s too; botocore and the JS SDK fetch a token per credential fetch.)
func TestConformanceHeldTokens(t *testing.T) {
	gov1 := clientBin(t, "gov1")
	p := suite.NewPod(t, "held-token", stack.PodOptions{ServiceAccount: saA})
	agent := dedicatedAgent(t)
	sess, err := p.Start(context.Background(), nil, gov1, "-refetch")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { stack.AssertNoNodeSecrets(t, "gov1", sess.Close().Output()) }()
	first, err := sess.Next(30 * time.Second)
	if err != nil || !strings.HasPrefix(first, "creds EC2RoleProvider ") {
		t.Fatalf("first fetch: %q, %v", first, err)
	}

	otherKey := filepath.Join(suite.Dir, "imds-token-other.key")
	steps := []struct {
		name     string
		flags    []string
		newToken bool // the held token must be refused and replaced
	}{
		{"same key", nil, false},
		{"new key", []string{"--token-key-file=" + otherKey}, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			agent.Stop()
			agent = suite.StartAgent(t, suite.agentBin, st.flags...)
			fetch := func() string {
				t.Helper()
				if err := sess.Send("fetch"); err != nil {
					t.Fatal(err)
				}
				line, err := sess.Next(30 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				return line
			}
			line := fetch()
			if st.newToken && strings.HasPrefix(line, "error ") {
				t.Logf("first fetch after the 401 failed, as aws-sdk-go v1 does: %s", line)
				line = fetch()
			}
			d := readCounters(t, p) // a fresh agent: its counters count this fetch alone
			served := servedDoc(t, p, false).AccessKeyID
			if want := "creds EC2RoleProvider " + served; line != want {
				t.Errorf("fetch after the restart: %q, want %q", line, want)
			}
			switch {
			case !st.newToken && (d.tokens != 0 || d.credsRefused != 0):
				t.Errorf("the held token was not accepted: %v token PUTs, %v refused GETs, want 0 and 0", d.tokens, d.credsRefused)
			case st.newToken && (d.tokens == 0 || d.credsRefused == 0):
				t.Errorf("want the held token refused (401) and a new one fetched: %v refused GETs, %v token PUTs", d.credsRefused, d.tokens)
			}
			t.Logf("after the restart: %v token PUTs, %v credential GETs refused, %v served", d.tokens, d.credsRefused, d.creds)
		})
	}
}

// TestConformanceRegion runs the SDKs' own IMDS region lookups with AWS_REGION unset and checks them
// against the region paths as served through the pod's network path: aws-sdk-go v1 reads the instance
// identity document, boto3 and the AWS CLI placement/availability-zone/ (with the trailing slash; the
// region is the zone less its letter), the JS SDK placement/region over IMDSv2 only. The identity
// document must also parse the way aws-sdk-go-v2 parses it (a time.Time pendingTime).
func TestConformanceRegion(t *testing.T) {
	sharedAgent(t)
	gov1, js := clientBin(t, "gov1"), jsScript(t)
	p := suite.NewPod(t, "region", stack.PodOptions{ServiceAccount: saA})
	b := probe(t, p, "", "-token", "/latest/meta-data/placement/region", "/latest/meta-data/placement/availability-zone/",
		"/latest/dynamic/instance-identity/document")
	for _, x := range b {
		if x.Status != 200 {
			t.Fatalf("%s: %d %s", x.Request, x.Status, x.Body)
		}
	}
	region, az := b[0].Body, b[1].Body
	if region == "" || !strings.HasPrefix(az, region) || len(az) != len(region)+1 {
		t.Errorf("placement: region %q, availability zone %q: want the zone to be the region plus a letter", region, az)
	}
	var doc imds.InstanceIdentityDocument
	if err := json.Unmarshal([]byte(b[2].Body), &doc); err != nil {
		t.Errorf("the identity document does not parse as aws-sdk-go-v2 parses it: %v\n%s", err, b[2].Body)
	}
	if doc.Region != region {
		t.Errorf("identity document region %q, placement/region %q", doc.Region, region)
	}

	unset := []string{"env", "-u", "AWS_REGION"}
	regionLine := func(out string) string {
		for _, l := range strings.Split(out, "\n") {
			if r, ok := strings.CutPrefix(l, "region "); ok {
				return r
			}
		}
		return ""
	}
	cases := []struct {
		name  string
		argv  []string
		parse func(stdout string) string
	}{
		{"aws-sdk-go-v1", []string{gov1, "-region"}, regionLine},
		{"boto3", []string{stack.Python3, stack.RepoPath(stack.Boto3Client), "--region"}, regionLine},
		{"js-v3", []string{stack.Node, js, "--region"}, regionLine},
		// `aws configure list` resolves the region through the CLI's chain and says where it came from.
		{"aws-cli", []string{stack.AWSCLI, "configure", "list"}, func(out string) string {
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) >= 3 && f[0] == "region" {
					if f[2] != "imds" {
						return f[1] + " (from " + f[2] + ", not imds)"
					}
					return f[1]
				}
			}
			return ""
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := p.Exec(context.Background(), nil, append(unset, c.argv...)...)
			stack.AssertNoNodeSecrets(t, c.name, r.Output())
			if got := c.parse(r.Stdout); r.Err != nil || got != region {
				t.Errorf("%s: region %q (%v), want %q from IMDS:\n%s", c.name, got, r.Err, region, r.Output())
			}
		})
	}
}

var timestamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// TestConformanceWireFormat checks, through the real DNAT on both families and with real STS
// credentials, what SDKs depend on byte for byte: the token exchange with headers in odd case, the role
// listing (with and without the slash, no newline: botocore pastes it into the next URL), the document's
// fields and timestamps (botocore's strptime takes exactly YYYY-MM-DDTHH:MM:SSZ), enough lifetime left,
// and the extended paths agreeing with the legacy ones. The agent requires IMDSv2, so the token headers
// are really checked.
func TestConformanceWireFormat(t *testing.T) {
	dedicatedAgent(t, "--require-imdsv2")
	p := suite.NewPod(t, "wire", stack.PodOptions{ServiceAccount: saA})
	const (
		list    = "/latest/meta-data/iam/security-credentials/"
		extList = "/latest/meta-data/iam/security-credentials-extended/"
	)
	tokens := map[string]string{}
	for _, fam := range []struct{ name, addr string }{{"IPv4", stack.IMDSv4 + ":80"}, {"IPv6", "[" + imdsV6 + "]:80"}} {
		t.Run(fam.name, func(t *testing.T) {
			put := probe(t, p, fam.addr, "-H", "x-AWS-ec2-metadata-TOKEN-ttl-SECONDS: 21600", "PUT /latest/api/token")[0]
			if put.Status != 200 || put.Body == "" || strings.TrimSpace(put.Body) != put.Body {
				t.Fatalf("token PUT with a mixed-case TTL header: %d %q", put.Status, put.Body)
			}
			tokens[fam.name] = put.Body
			auth := []string{"-H", "x-AWS-EC2-metadata-Token: " + put.Body}
			b := probe(t, p, fam.addr, append(auth, list, strings.TrimSuffix(list, "/"), extList, strings.TrimSuffix(extList, "/"))...)
			role := b[0].Body
			for _, x := range b {
				if x.Status != 200 || x.Body != role {
					t.Errorf("%s: %d %q, want 200 %q", x.Request, x.Status, x.Body, role)
				}
			}
			if role == "" || strings.ContainsAny(role, "/\r\n \t") {
				t.Fatalf("role listing %q: want one bare name, no newline", role)
			}
			b = probe(t, p, fam.addr, append(auth, list+role, extList+role)...)
			var doc, ext credentialDocument
			for i, d := range []*credentialDocument{&doc, &ext} {
				if err := json.Unmarshal([]byte(b[i].Body), d); b[i].Status != 200 || err != nil {
					t.Fatalf("%s: %d %v", b[i].Request, b[i].Status, err)
				}
			}
			checkCredentialDocument(t, doc)
			if doc.AccountID != nil {
				t.Errorf("the legacy document carries AccountId %q; only the extended one should", *doc.AccountID)
			}
			// MinIO's AssumeRoleWithWebIdentity returns no AssumedRoleUser ARN and its role ARNs have no
			// account, so the agent has none to give and leaves the field out; real STS always names one.
			if ext.AccountID != nil {
				t.Errorf("the extended document carries AccountId %q, but this STS named no account", *ext.AccountID)
			}
			legacy := ext
			legacy.AccountID = nil
			if legacy != doc {
				t.Errorf("the extended document differs from the legacy one beyond AccountId:\n%+v\n%+v", ext, doc)
			}
			if r := probe(t, p, fam.addr, list)[0]; r.Status != 401 {
				t.Errorf("%s without a token from an IMDSv2-only agent: %d, want 401", list, r.Status)
			}
		})
	}
	// Tokens are bound to the caller's address, and a pod's IPv4 and IPv6 addresses are two callers.
	if v4 := tokens["IPv4"]; v4 != "" {
		if r := probe(t, p, "["+imdsV6+"]:80", "-H", "X-aws-ec2-metadata-token: "+v4, list)[0]; r.Status != 401 {
			t.Errorf("a token minted over IPv4 used over IPv6: %d, want 401", r.Status)
		}
	}
}

func checkCredentialDocument(t *testing.T, d credentialDocument) {
	t.Helper()
	if d.Code != "Success" || d.Type != "AWS-HMAC" || d.AccessKeyID == "" || d.SecretAccessKey == "" || d.Token == "" {
		t.Errorf("credential document: Code %q Type %q, key id/secret/token present %v/%v/%v", d.Code, d.Type,
			d.AccessKeyID != "", d.SecretAccessKey != "", d.Token != "")
	}
	now := time.Now()
	for _, ts := range []struct {
		name, v string
		ok      func(time.Time) bool
		want    string
	}{
		{"LastUpdated", d.LastUpdated, func(x time.Time) bool { return !x.After(now.Add(time.Minute)) }, "not in the future"},
		{"Expiration", d.Expiration, func(x time.Time) bool { return x.Sub(now) >= 15*time.Minute }, "at least 15 minutes away"},
	} {
		x, err := time.Parse("2006-01-02T15:04:05Z", ts.v)
		switch {
		case !timestamp.MatchString(ts.v) || err != nil:
			t.Errorf("%s %q: want YYYY-MM-DDTHH:MM:SSZ", ts.name, ts.v)
		case !ts.ok(x):
			t.Errorf("%s %s: want it %s", ts.name, ts.v, ts.want)
		}
	}
}
