package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
)

// The adversarial and fault suite (issue 9). docs/security.md lists every case with the test that
// proves it; TestSecurityTableMatchesTests keeps the two in step.

// TestAttackPathsAreRefused: every spelling, over IPv4 and IPv6, with and without a token, is refused
// and no node marker comes back.
func TestAttackPathsAreRefused(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "attacker", stack.PodOptions{ServiceAccount: saA})
	for _, addr := range []string{stack.IMDSv4 + ":80", "[fd00:ec2::254]:80"} {
		for _, token := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/token=%v", addr, token), func(t *testing.T) {
				args := []string{clientBin(t, "probe"), "-addr", addr}
				if token {
					args = append(args, "-token")
				}
				r := p.Exec(context.Background(), nil, append(args, stack.AttackPaths...)...)
				stack.AssertNoNodeSecrets(t, "probe", r.Output())
				answers := stack.ParseProbe(r.Stdout)
				if len(answers) != len(stack.AttackPaths) {
					t.Fatalf("probe answered %d of %d requests:\n%s", len(answers), len(stack.AttackPaths), r.Output())
				}
				for _, a := range answers {
					if a.Status == "200" || strings.HasPrefix(a.Status, "error") {
						t.Errorf("%s: got %s, want a refusal from the agent:\n%s", a.Request, a.Status, a.Body)
					}
				}
			})
		}
	}
}

// TestTokenReplayAndForgery: a token minted for pod A does not work from pod B; forged, tampered and
// expired tokens get 401; none of them yields credentials.
func TestTokenReplayAndForgery(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewPod(t, "token-a", stack.PodOptions{ServiceAccount: saA})
	b := suite.NewPod(t, "token-b", stack.PodOptions{ServiceAccount: saB})
	mint := func(p *stack.Pod, ttl int) string {
		t.Helper()
		r := p.Exec(ctx, nil, clientBin(t, "probe"), "-H", fmt.Sprintf("X-aws-ec2-metadata-token-ttl-seconds: %d", ttl), "PUT /latest/api/token")
		ans := stack.ParseProbe(r.Stdout)
		if len(ans) != 1 || ans[0].Status != "200" {
			t.Fatalf("token PUT from %s: %s", p.Name, r.Output())
		}
		return strings.TrimSpace(ans[0].Body)
	}
	credsWith := func(p *stack.Pod, token string) stack.ProbeAnswer {
		t.Helper()
		r := p.Exec(ctx, nil, clientBin(t, "probe"), "-H", "X-aws-ec2-metadata-token: "+token, "/latest/meta-data/iam/security-credentials/")
		ans := stack.ParseProbe(r.Stdout)
		if len(ans) != 1 {
			t.Fatalf("probe from %s: %s", p.Name, r.Output())
		}
		return ans[0]
	}
	tokA := mint(a, 300)
	if got := credsWith(a, tokA); got.Status != "200" {
		t.Fatalf("pod A with its own token: %s %s", got.Status, got.Body)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(tokA)
	tampered := []byte(tokA)
	tampered[len(tampered)/2] ^= 1
	cases := []struct {
		name, token string
	}{
		{"A's token from B", tokA},
		{"forged", base64.RawURLEncoding.EncodeToString(make([]byte, len(raw)))},
		{"tampered", string(tampered)},
		{"garbage", "not-a-token"},
	}
	for _, c := range cases {
		if got := credsWith(b, c.token); got.Status != "401" {
			t.Errorf("%s: %s, want 401:\n%s", c.name, got.Status, got.Body)
		}
	}
	short := mint(a, 1)
	deadline := time.Now().Add(machineDeadline)
	for credsWith(a, short).Status != "401" {
		if time.Now().After(deadline) {
			t.Fatalf("a token with a 1 s TTL still works after %s", machineDeadline)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestIPReuseRace: requests keep coming from an address while its pod is replaced by one with another
// role; the API learns of the new pod only after it has started calling. No answer ever carries the
// old pod's role.
func TestIPReuseRace(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	a := suite.NewPod(t, "race-a", stack.PodOptions{ServiceAccount: saA})
	if r := a.Exec(ctx, nil, suite.gov2Bin); r.Err != nil {
		t.Fatalf("pod A: %v\n%s", r.Err, r.Output())
	}
	n := ipIndex(t, a.IP)
	a.Remove(t)
	b := suite.NewPod(t, "race-b", stack.PodOptions{ServiceAccount: saB, IP: n, NoStatus: true})
	roleA := roleName(stack.RoleARN(stack.AudienceA))
	paths := []string{"/latest/meta-data/iam/security-credentials/", "/latest/meta-data/iam/security-credentials/" + roleA}
	var reqs []string
	for range 40 {
		reqs = append(reqs, paths...)
	}
	probe := clientBin(t, "probe")
	var wg sync.WaitGroup
	var outs []string
	var mu sync.Mutex
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := b.Exec(ctx, nil, append([]string{probe, "-token"}, reqs...)...)
			mu.Lock()
			outs = append(outs, r.Output())
			mu.Unlock()
		}()
	}
	b.SetStatus(t, b.IP, b.IPv6)
	wg.Wait()
	served := 0
	for _, out := range outs {
		for _, ans := range stack.ParseProbe(out) {
			if ans.Status == "200" && strings.Contains(ans.Body, roleA) || strings.HasSuffix(ans.Request, roleA) && ans.Status == "200" {
				t.Errorf("pod B was answered with pod A's role: %s -> %s %s", ans.Request, ans.Status, ans.Body)
			}
			if ans.Status == "200" {
				served++
			}
		}
	}
	r := b.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
	checkAccess(t, b.Name, r.Stdout, "put", true)
	t.Logf("%d answers served during the race, none with role A", served)
}

// TestTwoPodsOneAddress: when the API says two live pods hold one address, neither is served.
func TestTwoPodsOneAddress(t *testing.T) {
	sharedAgent(t)
	c := suite.NewPod(t, "dup-c", stack.PodOptions{ServiceAccount: saA})
	d := suite.NewPod(t, "dup-d", stack.PodOptions{ServiceAccount: saB, NoStatus: true})
	d.SetStatus(t, c.IP, c.IPv6)
	deadline := time.Now().Add(machineDeadline)
	for {
		r := c.Exec(context.Background(), nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
		ans := stack.ParseProbe(r.Stdout)
		if len(ans) == 1 && ans[0].Status == "403" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("address claimed by two live pods still answered: %s", r.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAddressFromBeforeTheNodeBootIdentifiesNobody: after a reboot (or a sandbox made anew) a pod keeps its old
// addresses in the API until the kubelet reports its new sandbox, while the CNI may already have given them to another
// pod. A pod whose sandbox the kubelet reports not ready, or ready since before the node booted, identifies nobody;
// once the kubelet reports a sandbox made since, the pod is served again.
func TestAddressFromBeforeTheNodeBootIdentifiesNobody(t *testing.T) {
	sharedAgent(t)
	p := suite.NewPod(t, "rebooted", stack.PodOptions{ServiceAccount: saA})
	for _, c := range []struct {
		name  string
		ready bool
		at    time.Time
		want  string
	}{
		{"no condition (a kubelet before 1.29)", true, time.Time{}, "200"},
		// A year ago: before this machine, the simulated node, booted.
		{"sandbox ready before the node booted", true, time.Now().AddDate(-1, 0, 0), "403"},
		{"sandbox made since the node booted", true, time.Now(), "200"},
		{"sandbox gone", false, time.Now(), "403"},
	} {
		if !c.at.IsZero() {
			p.SetSandbox(t, c.ready, c.at)
		}
		var last string
		if !eventually(machineDeadline, func() bool {
			r := p.Exec(context.Background(), nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
			last = r.Output()
			ans := stack.ParseProbe(r.Stdout)
			return len(ans) == 1 && ans[0].Status == c.want
		}) {
			t.Errorf("%s: want %s, got:\n%s", c.name, c.want, last)
		}
		if c.want == "403" { // told apart from a stranger's address: counted
			waitMetric(t, "the pod counted as unvouched", machineDeadline, func(m stack.Metrics) bool {
				v, ok := m.Value("iamlet_pods_unvouched", nil)
				return ok && v >= 1
			})
		}
	}
}

// TestRoleOfAnotherNamespace: with allow-lists required, a ServiceAccount naming a role that only
// another namespace may use is refused, while that namespace's own ServiceAccount is served.
func TestRoleOfAnotherNamespace(t *testing.T) {
	dedicatedAgent(t, "--require-namespace-allowlist")
	ctx := context.Background()
	teamA := newNamespace(t, "team-a", map[string]string{roles.AnnotationAllowedRoles: stack.RoleARN(stack.AudienceA)})
	teamB := newNamespace(t, "team-b", map[string]string{roles.AnnotationAllowedRoles: stack.RoleARN(stack.AudienceB)})
	own := newServiceAccount(t, teamA, "own", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	thief := newServiceAccount(t, teamB, "thief", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	unlisted := newServiceAccount(t, "default", "unlisted", map[string]string{roles.AnnotationRoleARN: stack.RoleARN(stack.AudienceA)})
	pOwn := suite.NewPod(t, "own", stack.PodOptions{Namespace: teamA, ServiceAccount: own})
	pThief := suite.NewPod(t, "thief", stack.PodOptions{Namespace: teamB, ServiceAccount: thief})
	pUnlisted := suite.NewPod(t, "unlisted", stack.PodOptions{ServiceAccount: unlisted})
	waitCached(t, pOwn) // its namespace must be known before its allow-list can admit the role
	if r := pOwn.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket); !strings.Contains(r.Stdout, "get ok") {
		t.Errorf("team-a's own role: %v\n%s", r.Err, r.Output())
	}
	for _, p := range []*stack.Pod{pThief, pUnlisted} {
		r := p.Exec(ctx, nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
		if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || ans[0].Status != "403" {
			t.Errorf("%s/%s: want 403, got:\n%s", p.Namespace, p.Name, r.Output())
		}
	}
}

// TestProtocolAbuse: oversized headers and bodies, slow and garbage requests, and thousands of
// connections from one pod are cut off while another pod keeps getting its credentials.
func TestProtocolAbuse(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	bad := suite.NewPod(t, "abuser", stack.PodOptions{ServiceAccount: saA})
	good := suite.NewPod(t, "bystander", stack.PodOptions{ServiceAccount: saB})
	waitCached(t, good)
	abuseBin := clientBin(t, "abuse")
	single := map[string]func(string) bool{
		"bigheader": func(out string) bool { return strings.Contains(out, "status 431") || strings.Contains(out, "error") },
		"bigbody":   func(out string) bool { return !strings.Contains(out, "status 200") },
		"garbage":   func(out string) bool { return strings.Contains(out, "status 400") || strings.Contains(out, "error") },
	}
	for mode, ok := range single {
		r := bad.Exec(ctx, nil, abuseBin, "-mode", mode)
		stack.AssertNoNodeSecrets(t, mode, r.Output())
		if !ok(r.Stdout) {
			t.Errorf("%s: unexpected answer:\n%s", mode, r.Output())
		}
	}
	for _, mode := range []string{"conns", "slowloris"} {
		t.Run(mode, func(t *testing.T) {
			rejected := func(m stack.Metrics) float64 {
				v, _ := m.Value("iamlet_limits_rejected_connections_total", nil)
				return v
			}
			before := rejected(waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true }))
			done := make(chan stack.Result, 1)
			go func() { done <- bad.Exec(ctx, nil, abuseBin, "-mode", mode, "-n", "1000", "-for", "8s") }()
			waitMetric(t, "the per-pod connection limit to engage", machineDeadline, func(m stack.Metrics) bool {
				return rejected(m) > before
			})
			start := time.Now()
			r := good.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
			if !strings.Contains(r.Stdout, "put ok") {
				t.Errorf("bystander during %s: %v\n%s", mode, r.Err, r.Output())
			}
			t.Logf("bystander served in %s during %s", time.Since(start).Round(time.Millisecond), mode)
			<-done
		})
	}
	// A flood from as many connections as the pod may hold: whatever the machine's speed, the pod is served no more
	// than its burst and its rate allow in the time the flood took; the rest waited or was answered 429.
	r := bad.Exec(ctx, nil, abuseBin, "-mode", "flood", "-n", "4000", "-c", "64")
	stack.AssertNoNodeSecrets(t, "flood", r.Output())
	served, elapsed := floodResult(t, r.Stdout)
	if budget := shippedBurstPerPod + int(shippedRequestsPerPod*elapsed.Seconds()) + 64; served > budget {
		t.Errorf("a flood was served %d answers in %s, more than the pod's burst and rate allow (%d):\n%s", served, elapsed, budget, r.Output())
	}
	t.Logf("flood of 4000 requests over 64 connections: %d served in %s\n%s", served, elapsed.Round(time.Millisecond), r.Stdout)
	if r := good.Exec(ctx, nil, suite.gov2Bin); r.Err != nil {
		t.Errorf("bystander after the flood: %v\n%s", r.Err, r.Output())
	}
}

// TestConnectionFloodFromManySources: 200 source addresses behind one pod interface each hold 16 connections that
// have asked once and stay open, and open them again when closed: more than the agent's bound on connections. The
// agent holds no more than the bound, its memory stays under the DaemonSet's limit, and a bystander pod opening a
// new connection for each request is answered within 1 s (the SDKs' IMDS timeout) every time.
func TestConnectionFloodFromManySources(t *testing.T) {
	agent := sharedAgent(t)
	flooder := suite.NewPod(t, "source-flooder", stack.PodOptions{ServiceAccount: saA})
	flooder.AddSources(t, "10.201.0.0/24")
	good := suite.NewPod(t, "flood-bystander", stack.PodOptions{ServiceAccount: saB})
	waitCached(t, good)
	memLimit := shippedMemoryLimit(t)
	counter := func(m stack.Metrics, name string) float64 { v, _ := m.Value(name, nil); return v }
	before := waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true })

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan stack.Result, 1)
	go func() {
		done <- flooder.Exec(ctx, nil, clientBin(t, "abuse"), "-mode", "sources", "-from", "10.201.0.1", "-sources", "200", "-n", "16", "-for", "50s")
	}()
	waitMetric(t, "the flood to fill the agent's connection bound", machineDeadline, func(m stack.Metrics) bool {
		return counter(m, "iamlet_listener_connections") >= shippedMaxConns*9/10 &&
			counter(m, "iamlet_limits_rejected_connections_total") > counter(before, "iamlet_limits_rejected_connections_total")
	})

	// The bystander: an IMDSv2 token, then the role and its credentials, every request on a new connection, for
	// 5 s, while the agent's connections and memory are sampled.
	role := roleName(stack.RoleARN(stack.AudienceB))
	credPath := "/latest/meta-data/iam/security-credentials/"
	bystander := make(chan stack.Result, 1)
	go func() {
		bystander <- good.Exec(ctx, nil, clientBin(t, "probe"), "-token", "-timeout", "1s", "-timed", "-for", "5s", "-every", "100ms", credPath, credPath+role)
	}()
	var maxConns, maxRSS float64
	var r stack.Result
	for sampling := true; sampling; {
		select {
		case r = <-bystander:
			sampling = false
		case <-time.After(200 * time.Millisecond):
		}
		if m, err := stack.Scrape(); err == nil {
			maxConns = max(maxConns, counter(m, "iamlet_listener_connections"))
			maxRSS = max(maxRSS, counter(m, "process_resident_memory_bytes"))
		}
	}
	after := waitMetric(t, "a scrape", machineDeadline, func(stack.Metrics) bool { return true })
	stop()
	flood := <-done
	stack.AssertNoNodeSecrets(t, "the flood", flood.Output())
	stack.AssertNoNodeSecrets(t, "the bystander", r.Output())

	var tookMS []float64
	for _, a := range stack.ParseProbe(r.Stdout) {
		if want := map[bool]string{true: role, false: `"Code":"Success"`}[strings.HasSuffix(a.Request, credPath)]; a.Status != "200" || !strings.Contains(a.Body, want) {
			t.Errorf("bystander during the flood: %s -> %s %.80s", a.Request, a.Status, a.Body)
		}
		if i := strings.Index(a.Body, "took "); i >= 0 {
			var ms float64
			if _, err := fmt.Sscanf(a.Body[i:], "took %f", &ms); err == nil {
				tookMS = append(tookMS, ms)
			}
		}
	}
	if r.Err != nil || len(tookMS) < 4 {
		t.Fatalf("bystander: %v, %d timed answers\n%s", r.Err, len(tookMS), r.Output())
	}
	if maxConns > shippedMaxConns {
		t.Errorf("the agent held %v connections, more than its bound of %d", maxConns, shippedMaxConns)
	}
	peak, anon := memory(t, agent.Pid())
	if peak >= memLimit {
		t.Errorf("the agent's peak resident memory %d MiB reached the DaemonSet's limit of %d MiB", peak>>20, memLimit>>20)
	}
	slices.Sort(tookMS)
	evicted := counter(after, "iamlet_limits_evicted_connections_total") - counter(before, "iamlet_limits_evicted_connections_total")
	refused := counter(after, "iamlet_limits_rejected_connections_total") - counter(before, "iamlet_limits_rejected_connections_total")
	t.Logf("flood from 200 sources x 16 connections: agent held at most %.0f connections (bound %d), %.0f evicted, %.0f refused; "+
		"resident memory at most %.1f MiB sampled, peak %.1f MiB over the agent's life (limit %d MiB; %.1f MiB anonymous at the end, the rest the binary's pages); bystander %d answers, "+
		"median %.1f ms, max %.1f ms",
		maxConns, shippedMaxConns, evicted, refused, maxRSS/(1<<20), float64(peak)/(1<<20), memLimit>>20, float64(anon)/(1<<20),
		len(tookMS), tookMS[len(tookMS)/2], tookMS[len(tookMS)-1])
}

// memory is a process's peak resident memory (VmHWM) and its anonymous resident memory now, in bytes.
func memory(t *testing.T, pid int) (peak, anon int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "VmHWM: %d kB", &kb); err == nil {
			peak = kb << 10
		}
		if _, err := fmt.Sscanf(line, "RssAnon: %d kB", &kb); err == nil {
			anon = kb << 10
		}
	}
	if peak == 0 {
		t.Fatalf("no VmHWM in /proc/%d/status", pid)
	}
	return peak, anon
}

// The per-pod request limits the agent ships with (cmd/iamlet's flag defaults, which deploy/ does not override).
const (
	shippedRequestsPerPod = 200
	shippedBurstPerPod    = 1000
	shippedMaxConns       = 512
)

// floodResult reads what the abuse client's flood mode prints: the number of 200 answers and the time it took.
func floodResult(t *testing.T, out string) (served int, elapsed time.Duration) {
	t.Helper()
	var secs float64
	found := false
	for _, line := range strings.Split(out, "\n") {
		var n int
		if _, err := fmt.Sscanf(line, "status 200 x%d", &n); err == nil {
			served = n
		}
		if _, err := fmt.Sscanf(line, "elapsed %f", &secs); err == nil {
			found = true
		}
	}
	if !found {
		t.Fatalf("flood printed no elapsed time:\n%s", out)
	}
	return served, time.Duration(secs * float64(time.Second))
}

// TestSDKBurstFromOnePod: a pod whose processes start together (a batch of scripts polling the metadata service, a
// worker pool of SDK processes) sends more requests at once than the pod's burst. SDKs give up on a 429 rather than
// back off, so each request over the burst must wait its turn and be answered, not refused.
func TestSDKBurstFromOnePod(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	p := suite.NewPod(t, "burst", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, p) // the burst's subject is the limiter, not a new pod's first fetch
	before := limitCounters(t)
	var reqs []string
	for range 175 {
		reqs = append(reqs, roleListPath, "/latest/meta-data/iam/security-credentials/"+roleName(stack.RoleARN(stack.AudienceA)))
	}
	probeBin := clientBin(t, "probe")
	const scripts, sdks = 3, 24
	results := make(chan stack.Result, scripts+sdks)
	var wg sync.WaitGroup
	for range scripts {
		wg.Go(func() { results <- p.Exec(ctx, nil, append([]string{probeBin, "-token"}, reqs...)...) })
	}
	for range sdks {
		wg.Go(func() { results <- p.Exec(ctx, nil, suite.gov2Bin) })
	}
	wg.Wait()
	close(results)
	answers := 0
	for r := range results {
		stack.AssertNoNodeSecrets(t, "burst", r.Output())
		if r.Err != nil {
			t.Errorf("a process of the burst failed: %v\n%s", r.Err, r.Output())
			continue
		}
		if strings.HasPrefix(r.Stdout, "creds ") {
			answers++
			continue
		}
		for _, ans := range stack.ParseProbe(r.Stdout) {
			if ans.Status != "200" {
				t.Errorf("a request of the burst was answered %s: %s", ans.Status, ans.Body)
			} else {
				answers++
			}
		}
	}
	after := limitCounters(t)
	if d := after["throttled"] - before["throttled"]; d > 0 {
		t.Errorf("%v requests of the burst were answered 429", d)
	}
	t.Logf("%d answers to %d processes of one pod; %v requests waited for their turn", answers, scripts+sdks, after["delayed"]-before["delayed"])
}

func limitCounters(t *testing.T) map[string]float64 {
	t.Helper()
	m, err := stack.Scrape()
	if err != nil {
		t.Fatal(err)
	}
	delayed, _ := m.Value("iamlet_limits_delayed_requests_total", nil)
	throttled, _ := m.Value("iamlet_limits_throttled_requests_total", nil)
	return map[string]float64{"delayed": delayed, "throttled": throttled}
}

// TestSourceAddressSpoofing: a pod that puts another pod's address on its interface cannot get that
// pod's credentials. With reverse-path filtering (what CNIs set) its packets are dropped; without it
// the handshake's reply goes to the real owner, so the spoofer never completes a connection.
func TestSourceAddressSpoofing(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	victim := suite.NewPod(t, "victim", stack.PodOptions{ServiceAccount: saA})
	spoofer := suite.NewPod(t, "spoofer", stack.PodOptions{ServiceAccount: saNoRole})
	if out, err := exec.Command("ip", "-n", spoofer.NetNS, "addr", "add", victim.IP+"/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("spoof address: %v: %s", err, out)
	}
	for _, rp := range []string{"1", "0"} {
		t.Run("rp_filter="+rp, func(t *testing.T) {
			veth := "ia" + suite.Run + "p" + strings.TrimPrefix(spoofer.IP, "10.200.0.")
			for _, k := range []string{"net.ipv4.conf.all.rp_filter=" + rp, "net.ipv4.conf." + veth + ".rp_filter=" + rp} {
				if out, err := exec.Command("sysctl", "-qw", k).CombinedOutput(); err != nil {
					t.Fatalf("sysctl %s: %v: %s", k, err, out)
				}
			}
			r := spoofer.Exec(ctx, nil, clientBin(t, "spoofdial"), victim.IP, stack.IMDSv4+":80")
			stack.AssertNoNodeSecrets(t, "spoofed", r.Output())
			if strings.Contains(r.Stdout, "connected") {
				t.Errorf("a connection with the victim's source address completed:\n%s", r.Output())
			}
		})
	}
	_ = exec.Command("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0").Run()
}

// stsFaults sits between the agent and MinIO and fails chosen roles' AssumeRoleWithWebIdentity calls.
type stsFaults struct {
	mu    sync.Mutex
	fail  map[string]string // role ARN -> error code to answer
	calls map[string]*atomic.Int64
}

func (f *stsFaults) count(role string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[role]; c != nil {
		return c.Load()
	}
	return 0
}

func startSTSFaults(t *testing.T) (*stsFaults, string) {
	t.Helper()
	f := &stsFaults{fail: map[string]string{}, calls: map[string]*atomic.Int64{}}
	target, _ := url.Parse(stack.STSEndpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		role := form.Get("RoleArn")
		f.mu.Lock()
		if f.calls[role] == nil {
			f.calls[role] = &atomic.Int64{}
		}
		f.calls[role].Add(1)
		code := f.fail[role]
		f.mu.Unlock()
		if code != "" {
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>injected by the test</Message></Error><RequestId>x</RequestId></ErrorResponse>`, code)
			return
		}
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		r.ContentLength = int64(len(body))
		proxy.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f, "http://" + ln.Addr().String()
}

// TestSTSFaultsForOneRole: STS throttling one role, then refusing it, leaves the other role's pods
// served; the failing role's pods get clear errors, and the agent backs off instead of retrying in a loop.
func TestSTSFaultsForOneRole(t *testing.T) {
	faults, endpoint := startSTSFaults(t)
	dedicatedAgent(t, "--sts-endpoint="+endpoint)
	ctx := context.Background()
	roleB := stack.RoleARN(stack.AudienceB)
	for _, c := range []struct{ code, status string }{{"Throttling", "503"}, {"AccessDenied", "403"}} {
		t.Run(c.code, func(t *testing.T) {
			faults.mu.Lock()
			faults.fail[roleB] = c.code
			faults.mu.Unlock()
			a := suite.NewPod(t, "fault-a-"+strings.ToLower(c.code), stack.PodOptions{ServiceAccount: saA})
			b := suite.NewPod(t, "fault-b-"+strings.ToLower(c.code), stack.PodOptions{ServiceAccount: saB})
			if r := a.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket); !strings.Contains(r.Stdout, "get ok") {
				t.Errorf("role A while role B fails: %v\n%s", r.Err, r.Output())
			}
			// The prefetch's failed call comes first, so the window below holds only what the pod's requests cause.
			waitUntil(t, machineDeadline, "the prefetch of role B to reach STS", func() bool { return faults.count(roleB) >= 1 })
			before := faults.count(roleB)
			var reqs []string
			for range 30 {
				reqs = append(reqs, "/latest/meta-data/iam/security-credentials/")
			}
			probe := clientBin(t, "probe")
			start := time.Now()
			r := b.Exec(ctx, nil, append([]string{probe, "-token"}, reqs...)...)
			elapsed := time.Since(start)
			for _, ans := range stack.ParseProbe(r.Stdout) {
				if ans.Status != c.status || !strings.Contains(ans.Body, "iamlet: ") {
					t.Errorf("role B with STS answering %s: %s %q, want %s", c.code, ans.Status, ans.Body, c.status)
					break
				}
			}
			// Backoff waits at least 0.5 s, then 1 s, 2 s...: k retries need 0.5*(2^k-1) s, however fast the requests
			// come. A slow machine stretches the window, so the bound follows it.
			allowed := max(3, int(math.Log2(2*elapsed.Seconds()+1))+1)
			if extra := faults.count(roleB) - before; extra > int64(allowed) {
				t.Errorf("30 requests from the failing pod in %s made %d STS calls; want backoff (<= %d)", elapsed.Round(time.Millisecond), extra, allowed)
			}
			m, err := stack.Scrape()
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := m.Value("iamlet_sts_requests_total", map[string]string{"result": "error", "code": c.code}); v < 1 {
				t.Errorf("iamlet_sts_requests_total{code=%q} = %v, want >= 1", c.code, v)
			}
		})
	}
}

// TestAPIServerOutage: with the apiserver down, known pods keep being served from cache and a new
// address is refused, not guessed; when it returns the agent recovers without a restart.
func TestAPIServerOutage(t *testing.T) {
	sharedAgent(t)
	ctx := context.Background()
	known := suite.NewPod(t, "api-known", stack.PodOptions{ServiceAccount: saA})
	waitCached(t, known)
	if r := known.Exec(ctx, nil, suite.gov2Bin); r.Err != nil {
		t.Fatalf("before the outage: %v\n%s", r.Err, r.Output())
	}
	late := suite.NewPod(t, "api-late", stack.PodOptions{ServiceAccount: saA, NoStatus: true})

	suite.StopComponent("kube-apiserver")
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := suite.StartComponent("kube-apiserver"); err != nil {
				t.Errorf("restarting the apiserver: %v", err)
			}
		}
	})
	if r := known.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket); !strings.Contains(r.Stdout, "get ok") {
		t.Errorf("known pod during the apiserver outage: %v\n%s", r.Err, r.Output())
	}
	r := late.Exec(ctx, nil, clientBin(t, "probe"), "-token", "/latest/meta-data/iam/security-credentials/")
	if ans := stack.ParseProbe(r.Stdout); len(ans) != 1 || ans[0].Status != "403" {
		t.Errorf("unknown address during the outage: want 403, got:\n%s", r.Output())
	}

	if err := suite.StartComponent("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	restarted = true
	late.SetStatus(t, late.IP, late.IPv6)
	// client-go's reflectors back off while the apiserver is away (up to a minute with jitter), so recovery takes
	// that long in the worst case; the property is that it comes without a restart.
	const recovery = 3 * time.Minute
	start := time.Now()
	deadline := start.Add(recovery)
	for {
		r := late.Exec(ctx, nil, suite.gov2Bin, "-endpoint", stack.MinIOFromPods, "-bucket", stack.Bucket)
		if strings.Contains(r.Stdout, "get ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new pod not served %s after the apiserver returned:\n%s", recovery, r.Output())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("new pod served %s after the apiserver returned", time.Since(start).Round(time.Millisecond))
}

// TestAgentKilledUnderLoad: two pods ask for credentials all the time while the agent is killed with
// SIGKILL and restarted. During the gap they get errors (connection refused), never the node's role or
// the other pod's; after the restart they are served again.
func TestAgentKilledUnderLoad(t *testing.T) {
	agent := dedicatedAgent(t)
	loadBin := clientBin(t, "soakload")
	pods := map[*stack.Pod]string{
		suite.NewPod(t, "killed-a", stack.PodOptions{ServiceAccount: saA}): roleName(stack.RoleARN(stack.AudienceA)),
		suite.NewPod(t, "killed-b", stack.PodOptions{ServiceAccount: saB}): roleName(stack.RoleARN(stack.AudienceB)),
	}
	type summary struct {
		Served, Markers int
		Errors, Roles   map[string]int
		KeyIDs          map[string]int
	}
	results := map[*stack.Pod]*summary{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// The load runs until the restarted agent has served it, however long the restart takes on a busy machine.
	stop := filepath.Join(t.TempDir(), "stop")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for p := range pods {
		wg.Go(func() {
			r := p.Exec(ctx, nil, loadBin, "-for", "4m", "-until", stop, "-every", "50ms", "-markers", strings.Join(stack.Markers, ","))
			var s summary
			if err := json.Unmarshal([]byte(r.Stdout), &s); err != nil {
				t.Errorf("%s: %v\n%s", p.Name, err, r.Output())
				return
			}
			mu.Lock()
			results[p] = &s
			mu.Unlock()
		})
	}
	waitMetric(t, "both pods being served", machineDeadline, func(m stack.Metrics) bool {
		return m.Sum("iamlet_pod_credential_requests_total", map[string]string{"outcome": "hit"}) >= 10
	})
	agent.Kill()
	restarted, err := agent.Restart()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restarted.Stop)
	if err := restarted.WaitHTTP("http://"+stack.AgentMetricsAddr+"/readyz", machineDeadline); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, "the restarted agent serving both pods", machineDeadline, func(m stack.Metrics) bool {
		for p := range pods {
			if m.Sum("iamlet_pod_credential_requests_total", podLabels(p)) < 2 {
				return false
			}
		}
		return true
	})
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	keys := map[string]string{}
	for p, role := range pods {
		s := results[p]
		if s == nil {
			continue
		}
		if s.Markers > 0 {
			t.Errorf("%s saw the node's secrets %d times", p.Name, s.Markers)
		}
		for r := range s.Roles {
			if r != role {
				t.Errorf("%s (role %s) was served role %s", p.Name, role, r)
			}
		}
		for k := range s.KeyIDs {
			if other, ok := keys[k]; ok {
				t.Errorf("access key %s served to both %s and %s", k, other, p.Name)
			}
			keys[k] = p.Name
		}
		if s.Served == 0 {
			t.Errorf("%s was never served", p.Name)
		}
		t.Logf("%s: %d answers served, errors during the gap: %v", p.Name, s.Served, s.Errors)
	}
}
