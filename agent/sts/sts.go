// Package sts exchanges a web identity token for role credentials with STS AssumeRoleWithWebIdentity,
// and chains from those to a role in another account with AssumeRole. The first call is unsigned: the
// agent holds no AWS credentials of its own. It talks to AWS and never to Kubernetes.
package sts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awssts "github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	smithyendpoints "github.com/aws/smithy-go/endpoints"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Config says which STS to call.
type Config struct {
	Region string // the node's region; regional endpoint sts.REGION.amazonaws.com
	// Endpoint overrides every endpoint (tests point it at MinIO; private VPC endpoints in production).
	Endpoint   string
	HTTPClient *http.Client // nil: a client with conservative timeouts
}

// Request is one AssumeRoleWithWebIdentity call.
type Request struct {
	RoleARN          string
	SessionName      string
	WebIdentityToken string
	Duration         time.Duration
	Regional         bool // false: the global endpoint (eks.amazonaws.com/sts-regional-endpoints: "false")

	// Policy is an inline session policy, validated and compacted by the caller; empty: none.
	Policy string
	// PolicyARNs are managed session policies; the caller keeps them to STS's 10.
	PolicyARNs []string
}

// ChainRequest is one AssumeRole call made with the credentials of an earlier session (role chaining).
type ChainRequest struct {
	RoleARN     string
	SessionName string
	ExternalID  string // empty: none sent
	Policy      string // as in Request
	PolicyARNs  []string
	Duration    time.Duration // at most MaxChainedDuration; more is clamped
	Regional    bool
}

// MaxChainedDuration is AWS's cap on a session assumed by role chaining, whatever the role's
// MaxSessionDuration: STS refuses a longer DurationSeconds with a ValidationError.
const MaxChainedDuration = time.Hour

// Credentials are the temporary credentials STS returned.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
	AccountID       string // from the assumed-role ARN; empty when STS does not say (MinIO)
	AssumedRoleARN  string // arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION; empty when STS does not say
	// PackedPolicySize is how much of the packed session policy limit the session policies used, in
	// percent, as STS reports it when they were sent; 0 when it does not.
	PackedPolicySize int32
}

// Client calls STS.
type Client struct {
	regional *awssts.Client
	global   *awssts.Client
}

// New builds a client. Retries are off: the credential cache retries with its own backoff, so every
// STS call is counted once and a throttled STS is not hit again by the SDK behind our back.
func New(cfg Config) (*Client, error) {
	if cfg.Region == "" && cfg.Endpoint == "" {
		return nil, errors.New("sts: a region or an endpoint is required")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				TLSHandshakeTimeout:   3 * time.Second,
				ResponseHeaderTimeout: 5 * time.Second,
				MaxIdleConnsPerHost:   16,
				IdleConnTimeout:       90 * time.Second,
			},
		}
	}
	// A chained role's AssumeRole is signed for this region, and AWS's STS endpoints refuse a signature for another.
	region := cfg.Region
	if r, ok := EndpointRegion(cfg.Endpoint); ok {
		region = r
	}
	if region == "" {
		region = "us-east-1"
	}
	var endpoint *string
	if cfg.Endpoint != "" {
		endpoint = aws.String(cfg.Endpoint)
	}
	build := func(global bool) *awssts.Client {
		return awssts.New(awssts.Options{
			Region:       region,
			HTTPClient:   hc,
			Retryer:      aws.NopRetryer{},
			Credentials:  aws.AnonymousCredentials{},
			BaseEndpoint: endpoint,
		}, func(o *awssts.Options) {
			if global {
				o.EndpointResolverV2 = globalResolver{awssts.NewDefaultEndpointResolverV2()}
			}
		})
	}
	return &Client{regional: build(false), global: build(true)}, nil
}

// EndpointRegion is the region an AWS STS endpoint serves, and so signs for: sts.REGION.amazonaws.com (sts-fips too,
// .amazonaws.com.cn, and dual-stack .api.aws), a VPC endpoint's *.sts.REGION.vpce.amazonaws.com, and us-east-1 for
// the global sts.amazonaws.com. Any other endpoint (an STS that is not AWS's) names none.
func EndpointRegion(endpoint string) (string, bool) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", false
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if host == "sts.amazonaws.com" {
		return "us-east-1", true
	}
	for _, suffix := range []string{".amazonaws.com", ".amazonaws.com.cn", ".api.aws"} {
		rest, ok := strings.CutSuffix(host, suffix)
		if !ok {
			continue
		}
		labels := strings.Split(strings.TrimSuffix(rest, ".vpce"), ".")
		if n := len(labels); n >= 2 && (labels[n-2] == "sts" || labels[n-2] == "sts-fips") && labels[n-1] != "" {
			return labels[n-1], true
		}
	}
	return "", false
}

// globalResolver resolves STS's global endpoint by AWS's own rule: sts.amazonaws.com for the regions
// that had it before regional endpoints, and the regional endpoint everywhere else (aws-cn, aws-us-gov
// and newer regions have no global one to fall back to).
type globalResolver struct{ awssts.EndpointResolverV2 }

func (r globalResolver) ResolveEndpoint(ctx context.Context, p awssts.EndpointParameters) (smithyendpoints.Endpoint, error) {
	p.UseGlobalEndpoint = aws.Bool(true)
	return r.EndpointResolverV2.ResolveEndpoint(ctx, p)
}

// AssumeRole calls AssumeRoleWithWebIdentity. Errors are *Error.
func (c *Client) AssumeRole(ctx context.Context, r Request) (Credentials, error) {
	in := &awssts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(r.RoleARN),
		RoleSessionName:  aws.String(r.SessionName),
		WebIdentityToken: aws.String(r.WebIdentityToken),
		DurationSeconds:  seconds(r.Duration),
		Policy:           optional(r.Policy),
		PolicyArns:       descriptors(r.PolicyARNs),
	}
	out, err := c.api(r.Regional).AssumeRoleWithWebIdentity(ctx, in)
	if err != nil {
		// STS's ValidationError messages quote the values they reject; the token must not reach a log.
		return Credentials{}, classify(err).redact(secret{r.WebIdentityToken, "[web identity token]"})
	}
	return credentialsOf(out.Credentials, out.AssumedRoleUser, out.PackedPolicySize, r.RoleARN)
}

// AssumeRoleChained calls AssumeRole signed with from's credentials, to reach a role (typically in
// another account) that trusts from's role. Duration is clamped to MaxChainedDuration: AWS caps a
// role-chained session at one hour and would refuse more. Errors are *Error, with from's secret key
// and session token redacted should STS quote them.
func (c *Client) AssumeRoleChained(ctx context.Context, from Credentials, r ChainRequest) (Credentials, error) {
	if from.AccessKeyID == "" || from.SecretAccessKey == "" {
		// The SDK would fail to sign too, but as if the network had failed: retryable.
		return Credentials{}, newError("NoCredentials", false, errors.New("no first session to sign the chained call with"))
	}
	in := &awssts.AssumeRoleInput{
		RoleArn:         aws.String(r.RoleARN),
		RoleSessionName: aws.String(r.SessionName),
		ExternalId:      optional(r.ExternalID),
		DurationSeconds: seconds(min(r.Duration, MaxChainedDuration)),
		Policy:          optional(r.Policy),
		PolicyArns:      descriptors(r.PolicyARNs),
	}
	signed := credentials.NewStaticCredentialsProvider(from.AccessKeyID, from.SecretAccessKey, from.SessionToken)
	out, err := c.api(r.Regional).AssumeRole(ctx, in, func(o *awssts.Options) { o.Credentials = signed })
	if err != nil {
		// The token first: should the secret key occur inside it, replacing the key first would leave
		// the rest of the token behind.
		return Credentials{}, classify(err).redact(
			secret{from.SessionToken, "[session token]"}, secret{from.SecretAccessKey, "[secret access key]"})
	}
	return credentialsOf(out.Credentials, out.AssumedRoleUser, out.PackedPolicySize, r.RoleARN)
}

func (c *Client) api(regional bool) *awssts.Client {
	if regional {
		return c.regional
	}
	return c.global
}

// seconds is DurationSeconds: nil for 0, which leaves the role's default to STS.
func seconds(d time.Duration) *int32 {
	if d <= 0 {
		return nil
	}
	return aws.Int32(int32(d / time.Second))
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}

func descriptors(arns []string) []types.PolicyDescriptorType {
	var out []types.PolicyDescriptorType
	for _, arn := range arns {
		out = append(out, types.PolicyDescriptorType{Arn: aws.String(arn)})
	}
	return out
}

// credentialsOf reads what both AssumeRole calls return. roleARN supplies the account when STS names
// no assumed role (IAM-compatible servers such as MinIO); when it names one, it must be roleARN's.
func credentialsOf(c *types.Credentials, user *types.AssumedRoleUser, packed *int32, roleARN string) (Credentials, error) {
	if c == nil || c.Expiration == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SecretAccessKey) == "" ||
		aws.ToString(c.SessionToken) == "" {
		// A broken answer, not a refusal: asked again after a back-off.
		return Credentials{}, newError("EmptyResponse", true, errors.New("sts returned no credentials, or credentials without a key, secret or session token"))
	}
	creds := Credentials{
		AccessKeyID:      aws.ToString(c.AccessKeyId),
		SecretAccessKey:  aws.ToString(c.SecretAccessKey),
		SessionToken:     aws.ToString(c.SessionToken),
		Expiration:       c.Expiration.UTC(),
		PackedPolicySize: aws.ToInt32(packed),
	}
	if user != nil {
		creds.AssumedRoleARN = aws.ToString(user.Arn)
		creds.AccountID = accountOf(creds.AssumedRoleARN)
		if err := sameRole(creds.AssumedRoleARN, roleARN); err != nil {
			// Another role's credentials (an STS endpoint misconfigured, or not STS) would hand the pod what its
			// ServiceAccount does not name.
			return Credentials{}, newError("RoleMismatch", false, err)
		}
	}
	if creds.AccountID == "" {
		creds.AccountID = accountOf(roleARN)
	}
	return creds, nil
}

// sameRole checks that assumed, an assumed-role ARN (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION), is a session
// of role (arn:aws:iam::ACCOUNT:role/PATH/NAME; the path is not in the session's ARN). An empty assumed is no claim.
func sameRole(assumed, role string) error {
	if assumed == "" {
		return nil
	}
	_, resource, _ := strings.Cut(strings.TrimPrefix(assumed, "arn:"), ":assumed-role/")
	name, _, _ := strings.Cut(resource, "/")
	want := role[strings.LastIndexByte(role, '/')+1:]
	if accountOf(assumed) != accountOf(role) || !strings.EqualFold(name, want) { // IAM role names ignore case
		return fmt.Errorf("sts answered with a session of %s, not of the role asked for, %s", assumed, role)
	}
	return nil
}

// accountOf returns the account field of an ARN (arn:partition:service:region:account:resource).
func accountOf(arn string) string {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) < 6 {
		return ""
	}
	return parts[4]
}

// Error is a classified STS failure. Its message carries the code and STS's own message (for
// PackedPolicyTooLarge, the size in percent), with the web identity token and the signing session's
// secret key and token, should STS quote them, redacted.
type Error struct {
	Code  string // STS error code, "HTTP5xx", "Network" or "Canceled"
	retry bool
	err   error
	msg   string
}

func newError(code string, retry bool, err error) *Error {
	return &Error{Code: code, retry: retry, err: err, msg: err.Error()}
}

// secret is a value that must not reach an error message, and what stands in its place.
type secret struct{ value, label string }

// redact removes the secrets from e's message and, when the wrapped SDK error quotes one too, replaces
// that with an API error that says the same without it, so that unwrapping does not leak it either.
func (e *Error) redact(secrets ...secret) *Error {
	leaked := false
	for _, s := range secrets {
		if s.value == "" {
			continue
		}
		e.msg = strings.ReplaceAll(e.msg, s.value, s.label)
		leaked = leaked || strings.Contains(e.err.Error(), s.value)
	}
	if leaked {
		e.err = &smithy.GenericAPIError{Code: e.Code, Message: e.msg}
	}
	return e
}

func (e *Error) Error() string   { return "sts " + e.Code + ": " + e.msg }
func (e *Error) Unwrap() error   { return e.err }
func (e *Error) Retryable() bool { return e.retry }

// retryable error codes; everything else (AccessDenied, ExpiredTokenException, IDPRejectedClaim,
// RegionDisabledException, ValidationError, PackedPolicyTooLarge, MalformedPolicyDocument, ExpiredToken, ...) is
// terminal for the request that was sent. InvalidIdentityToken is retryable, as the SDKs' web identity providers
// retry it: STS says so when it could not fetch the issuer's keys, or has not yet seen a rotated one, and each
// retry mints a new token.
var retryableCodes = map[string]bool{
	"IDPCommunicationError":         true,
	"InvalidIdentityToken":          true,
	"Throttling":                    true,
	"ThrottlingException":           true,
	"RequestLimitExceeded":          true,
	"ServiceUnavailable":            true,
	"InternalFailure":               true,
	"InternalError":                 true,
	"PriorRequestNotComplete":       true,
	"TooManyRequestsException":      true,
	"RequestThrottledException":     true,
	"ProvisionedThroughputExceeded": true,
}

// classify turns an SDK error into *Error, once, next to the client.
func classify(err error) *Error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return newError("Canceled", true, err)
	}
	// The SDK wraps a failed send (refused, reset, timeout) in a ResponseError with status 0: it is the
	// network, not STS, that failed.
	var send *smithyhttp.RequestSendError
	if errors.As(err, &send) {
		return newError("Network", true, err)
	}
	// An answer the SDK could not read (truncated, a proxy's page with a 200): STS did not refuse anything, so the
	// pod is told to ask again, not that its role is refused.
	var garbled *smithy.DeserializationError
	if errors.As(err, &garbled) {
		return newError("BadResponse", true, err)
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		e := newError(code, retryableCodes[code], err)
		e.msg = api.ErrorMessage()
		var resp *smithyhttp.ResponseError
		if errors.As(err, &resp) {
			if status := resp.HTTPStatusCode(); retryableStatus(status) {
				e.retry = true
			}
			if code == "UnknownError" {
				// No error document (a proxy's page, an empty body): the status says more than the SDK's placeholder.
				e.Code = fmt.Sprintf("HTTP%d", resp.HTTPStatusCode())
			}
		}
		return e
	}
	var resp *smithyhttp.ResponseError
	if errors.As(err, &resp) {
		return newError(fmt.Sprintf("HTTP%d", resp.HTTPStatusCode()), retryableStatus(resp.HTTPStatusCode()), err)
	}
	return newError("Network", true, err)
}

func retryableStatus(code int) bool { return code >= 500 || code == http.StatusTooManyRequests }

// SessionName names the session after the pod so CloudTrail shows which pod did what: "NS.POD@UID8",
// within STS's 2-64 characters of [\w+=,.@-]. The UID prefix keeps it unique across pod incarnations.
func SessionName(namespace, pod, uid string) string {
	clean := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_+=,.@-", c) >= 0) {
				b[i] = '-'
			}
		}
		return string(b)
	}
	suffix := clean(strings.ReplaceAll(uid, "-", ""))
	if len(suffix) > 8 {
		suffix = suffix[:8]
	}
	name := clean(namespace + "." + pod)
	if max := 64 - len(suffix) - 1; len(name) > max {
		name = name[:max]
	}
	if suffix == "" {
		return name
	}
	return name + "@" + suffix
}
