package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssts "github.com/aws/aws-sdk-go-v2/service/sts"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/iamlet/iamlet/e2e/stack"
)

// herdSize is workload 5's burst: concurrent cold requests from one pod.
const herdSize = 1000

// prefetchBurst is the agent's --prefetch-burst here: that many new pods' fetches go through before
// --prefetch-qps applies.
const prefetchBurst = 10

// cold is workload 2, the cold answer, and workload 5's burst of concurrent cold requests.
//
// A cold answer is forced, not raced for: the agent runs with --prefetch-qps=0.001 --prefetch-burst=10 and ten filler pods
// use up the limiter's burst, so the prefetch of every later pod waits ~1000 s and its first request is
// a true miss (TokenRequest, then STS, while the pod waits). The baseline is the same TokenRequest
// (client-go, bound to the same pod) and AssumeRoleWithWebIdentity (aws-sdk-go-v2, unsigned, to the
// same MinIO) made directly from here, on warmed-up clients, as the agent's are.
func (b *bench) cold(ctx context.Context) error {
	return phase(func(t *tb) error {
		ag, err := b.startAgent("iamlet-cold", "--prefetch-qps=0.001", fmt.Sprintf("--prefetch-burst=%d", prefetchBurst), "--max-conns-per-pod=0", "--requests-per-pod=0")
		if err != nil {
			return err
		}
		t.Cleanup(ag.stop)
		var fillers []string
		t.Cleanup(func() { _ = b.deletePods(context.Background(), "default", fillers) })
		for i := range prefetchBurst {
			name := fmt.Sprintf("cold-filler-%d", i)
			if _, _, err := b.createPod(ctx, "default", name, stack.NodeName, stack.SAA, b.ips.get()); err != nil {
				return err
			}
			fillers = append(fillers, name)
		}
		if err := waitStatus(ctx, "the fillers' prefetch", 60*time.Second, func(st agentStatus) bool {
			s := podStates(st)
			for _, n := range fillers {
				if s["default/"+n].State != "valid" {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}

		stsc := awssts.New(awssts.Options{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(stack.STSEndpoint),
			Credentials:  aws.AnonymousCredentials{},
			Retryer:      aws.NopRetryer{},
			HTTPClient:   &http.Client{Timeout: 10 * time.Second},
		})
		filler, err := b.kube.CoreV1().Pods("default").Get(ctx, fillers[0], metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, _, err := b.direct(ctx, stsc, filler); err != nil { // warm both clients up
			return fmt.Errorf("baseline warm-up: %w", err)
		}

		body := filepath.Join(b.s.Dir, "cold-body.json")
		runs := b.o.runs
		for i := range runs {
			p := b.s.NewPod(t, fmt.Sprintf("cold-%d", i), stack.PodOptions{ServiceAccount: stack.SAA})
			if err := waitPending(ctx, p.Name); err != nil {
				return err
			}
			obj, err := b.kube.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			var run ColdRun
			base := func() {
				tok, sts, err := b.direct(ctx, stsc, obj)
				run.BaseToken, run.BaseSTS = ms(tok), ms(sts)
				if err != nil {
					run.BaseFailed = err.Error()
				}
			}
			if i%2 == 1 {
				base()
			}
			m0, err := scrape()
			if err != nil {
				return err
			}
			l, err := b.loadgen(ctx, p.NetNS, "-url", "http://"+stack.IMDSv4+credsPath(), "-c", "1", "-n", "1", "-warmup", "0", "-token", "-expect", credsExpect, "-body-out", body)
			if err != nil {
				return err
			}
			m1, err := scrape()
			if err != nil {
				return err
			}
			if i%2 == 0 {
				base()
			}
			run.TotalMS = l.P50 / 1000
			run.TokenMS = 1000 * (histSum(m1, "iamlet_kube_token_request_duration_seconds") - histSum(m0, "iamlet_kube_token_request_duration_seconds"))
			run.STSMS = 1000 * (histSum(m1, "iamlet_sts_request_duration_seconds") - histSum(m0, "iamlet_sts_request_duration_seconds"))
			run.STSCalls = stsCalls(m1) - stsCalls(m0)
			run.Outcome = outcomeOf(m1, p.Name)
			logf("cold run %d: %.1fms (token %.1f, sts %.1f, overhead %.1f; %s, %v STS calls); direct: token %.1f, sts %.1f %s",
				i+1, run.TotalMS, run.TokenMS, run.STSMS, run.OverheadMS(), run.Outcome, run.STSCalls, run.BaseToken, run.BaseSTS, run.BaseFailed)
			b.res.Cold = append(b.res.Cold, run)
			b.res.Economy.ColdRequests++
			b.res.Economy.ColdSTSCalls += run.STSCalls
		}

		// The same burst against the floor server, from the same pod, is the burst's latency baseline.
		if _, err := b.startFloor(t, -1, credsPath(), body); err != nil {
			return err
		}
		herds := 3
		if b.o.quick {
			herds = 1
		}
		for i := range herds {
			p := b.s.NewPod(t, fmt.Sprintf("herd-%d", i), stack.PodOptions{ServiceAccount: stack.SAA})
			if err := waitPending(ctx, p.Name); err != nil {
				return err
			}
			m0, err := scrape()
			if err != nil {
				return err
			}
			l, err := b.loadgen(ctx, p.NetNS, "-url", "http://"+stack.IMDSv4+credsPath(), "-burst", "-c", strconv.Itoa(herdSize), "-token", "-expect", credsExpect)
			if err != nil {
				return err
			}
			m1, err := scrape()
			if err != nil {
				return err
			}
			h := HerdRun{Requests: herdSize, OK: l.Requests, STSCalls: stsCalls(m1) - stsCalls(m0),
				Fetches: m1.Sum("iamlet_credentials_fetches_total", nil) - m0.Sum("iamlet_credentials_fetches_total", nil),
				P50MS:   l.P50 / 1000, MaxMS: l.Max / 1000}
			fl, err := b.loadgen(ctx, p.NetNS, "-url", "http://"+floorVIP+credsPath(), "-burst", "-c", strconv.Itoa(herdSize), "-token", "-expect", credsExpect)
			if err != nil {
				return err
			}
			h.FloorP50MS, h.FloorMaxMS = fl.P50/1000, fl.Max/1000
			logf("herd %d: %d/%d answered, %v STS calls, %v fetches, p50 %.1fms max %.1fms %s; floor p50 %.1fms max %.1fms",
				i+1, h.OK, h.Requests, h.STSCalls, h.Fetches, h.P50MS, h.MaxMS, l.FirstError, h.FloorP50MS, h.FloorMaxMS)
			b.res.Herd = append(b.res.Herd, h)
		}
		return nil
	})
}

// direct is the cold answer's baseline: a TokenRequest bound to pod, then AssumeRoleWithWebIdentity.
func (b *bench) direct(ctx context.Context, stsc *awssts.Client, pod *corev1.Pod) (tokenTime, stsTime time.Duration, err error) {
	secs := int64(600)
	t0 := time.Now()
	tr, err := b.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         []string{stack.AudienceA},
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	tokenTime = time.Since(t0)
	if err != nil {
		return tokenTime, 0, err
	}
	t1 := time.Now()
	_, err = stsc.AssumeRoleWithWebIdentity(ctx, &awssts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(stack.RoleARN(stack.AudienceA)),
		RoleSessionName:  aws.String("bench-" + string(pod.UID)[:8]),
		WebIdentityToken: aws.String(tr.Status.Token),
		DurationSeconds:  aws.Int32(3600),
	})
	return tokenTime, time.Since(t1), err
}

// waitPending waits until the agent knows the pod and wants its credentials (state "pending").
func waitPending(ctx context.Context, pod string) error {
	return waitStatus(ctx, "pod "+pod+" in the agent", 30*time.Second, func(st agentStatus) bool {
		return podStates(st)["default/"+pod].State == "pending"
	})
}

// outcomeOf is how the agent counted the pod's requests: "hit", "miss", or a mix.
func outcomeOf(m stack.Metrics, pod string) string {
	out := ""
	for _, o := range []string{"hit", "miss", "stale", "error"} {
		v, _ := m.Value("iamlet_pod_credential_requests_total", map[string]string{"namespace": "default", "pod": pod, "outcome": o})
		if v > 0 {
			if out != "" {
				out += "+"
			}
			out += fmt.Sprintf("%s×%v", o, v)
		}
	}
	if out == "" {
		return "none"
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
