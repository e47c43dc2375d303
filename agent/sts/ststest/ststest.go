// Package ststest is a local stand-in for STS's Query API, faithful enough that the real aws-sdk-go-v2
// client is its client: AssumeRoleWithWebIdentity, and AssumeRole signed with SigV4 by credentials it
// issued. It records every call for tests to assert on. It is test infrastructure and checks no IAM
// policy: every role exists and trusts every caller, save for the external IDs it is told to require.
package ststest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// The actions the stand-in serves.
const (
	AssumeRoleWithWebIdentity = "AssumeRoleWithWebIdentity"
	AssumeRole                = "AssumeRole"
)

// MaxPolicyLength is STS's limit on an inline session policy, in characters. The stand-in refuses a
// longer one with PackedPolicyTooLarge and reports a shorter one's share of it as PackedPolicySize.
const MaxPolicyLength = 2048

// Config shapes an STS. The zero value accepts every non-empty web identity token.
type Config struct {
	// VerifyToken accepts or refuses a web identity token. An *Error it returns is sent as it is;
	// any other error as InvalidIdentityToken with the error's text. nil: any non-empty token, with
	// the subject and audience read, unverified, from its claims when it is a JWT.
	VerifyToken func(token string) (Identity, error)
	// Now is the stand-in's clock for issuing and expiring credentials. nil: time.Now.
	Now func() time.Time
}

// Identity is what a web identity token says about its holder.
type Identity struct {
	Subject  string
	Audience string
}

// Error is an STS error response.
type Error struct {
	Status  int    // HTTP status
	Code    string // STS error code, such as AccessDenied
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Call is one request the stand-in answered.
type Call struct {
	Action      string
	RoleARN     string
	SessionName string
	ExternalID  string
	Policy      string
	PolicyARNs  []string
	Duration    time.Duration // 0: DurationSeconds not sent
	// AccessKeyID is the key an AssumeRole call was signed with, as the Authorization header names it.
	AccessKeyID string
	Code        string // the error code answered; empty on success
}

// STS is the stand-in, an http.Handler. It is safe for concurrent use.
type STS struct {
	cfg Config

	mu          sync.Mutex
	sessions    map[string]session // by access key ID
	externalIDs map[string]string  // by role ARN
	faults      map[string]fault   // by action
	calls       []Call
}

type session struct {
	secretAccessKey string
	sessionToken    string
	expiration      time.Time
	arn             string // the assumed-role ARN, as AccessDenied names the caller
}

type fault struct {
	left int
	err  *Error
}

// New returns an STS. Serve it with httptest or on a listener of the caller's; NewServer does the first.
func New(cfg Config) *STS {
	if cfg.VerifyToken == nil {
		cfg.VerifyToken = anyToken
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &STS{cfg: cfg, sessions: map[string]session{}, externalIDs: map[string]string{}, faults: map[string]fault{}}
}

// Server is an STS served over HTTP by httptest.
type Server struct {
	*STS
	URL string // the endpoint to give the SDK
}

// NewServer starts an STS on a loopback port and stops it when the test ends.
func NewServer(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s := New(cfg)
	srv := httptest.NewServer(s)
	tb.Cleanup(srv.Close)
	return &Server{STS: s, URL: srv.URL}
}

// RequireExternalID makes AssumeRole of roleARN refuse, with AccessDenied, a call without externalID.
func (s *STS) RequireExternalID(roleARN, externalID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.externalIDs[roleARN] = externalID
}

// FailNext answers the next n calls of action with err, before looking at them further.
func (s *STS) FailNext(action string, n int, err *Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[action] = fault{left: n, err: err}
}

// Calls returns the calls answered so far, oldest first.
func (s *STS) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

func (s *STS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		writeError(w, &Error{http.StatusBadRequest, "MalformedQueryString", err.Error()})
		return
	}
	call := callOf(form)
	call.AccessKeyID, _, _ = strings.Cut(authField(r.Header.Get("Authorization"), "Credential="), "/")
	result, stsErr := s.answer(r, body, form, call)
	if stsErr != nil {
		call.Code = stsErr.Code
	}
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
	if stsErr != nil {
		writeError(w, stsErr)
		return
	}
	id := requestID()
	writeXML(w, http.StatusOK, id, response{XMLName: xml.Name{Space: namespace, Local: call.Action + "Response"}, Result: result, RequestID: id})
}

func (s *STS) answer(r *http.Request, body []byte, form url.Values, call Call) (any, *Error) {
	if r.Method != http.MethodPost {
		return nil, &Error{http.StatusMethodNotAllowed, "InvalidAction", "only POST is served"}
	}
	if v := form.Get("Version"); v != "2011-06-15" || call.Action != AssumeRoleWithWebIdentity && call.Action != AssumeRole {
		return nil, &Error{http.StatusBadRequest, "InvalidAction", "Could not find operation " + call.Action + " for version " + v}
	}
	if err := s.injected(call.Action); err != nil {
		return nil, err
	}
	if call.Action == AssumeRole {
		return s.assumeRole(r, body, call)
	}
	return s.assumeRoleWithWebIdentity(form, call)
}

// injected takes one of the errors FailNext queued for action, if any are left.
func (s *STS) injected(action string) *Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults[action]
	if f.left <= 0 {
		return nil
	}
	f.left--
	s.faults[action] = f
	return f.err
}

func callOf(form url.Values) Call {
	c := Call{
		Action:      form.Get("Action"),
		RoleARN:     form.Get("RoleArn"),
		SessionName: form.Get("RoleSessionName"),
		ExternalID:  form.Get("ExternalId"),
		Policy:      form.Get("Policy"),
	}
	for i := 1; form.Has(fmt.Sprintf("PolicyArns.member.%d.arn", i)); i++ {
		c.PolicyARNs = append(c.PolicyARNs, form.Get(fmt.Sprintf("PolicyArns.member.%d.arn", i)))
	}
	if n, err := strconv.Atoi(form.Get("DurationSeconds")); err == nil {
		c.Duration = time.Duration(n) * time.Second
	}
	return c
}

func (s *STS) assumeRoleWithWebIdentity(form url.Values, call Call) (any, *Error) {
	if err := validate(call, false); err != nil {
		return nil, err
	}
	token := form.Get("WebIdentityToken")
	if token == "" {
		return nil, validationError("Value null at 'webIdentityToken' failed to satisfy constraint: Member must not be null")
	}
	id, err := s.cfg.VerifyToken(token)
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{http.StatusBadRequest, "InvalidIdentityToken", err.Error()}
		}
		return nil, e
	}
	res := webIdentityResult{SubjectFromWebIdentityToken: id.Subject, Audience: id.Audience, Provider: "ststest"}
	res.Credentials, res.AssumedRoleUser, res.PackedPolicySize = s.issue(call)
	return res, nil
}

func (s *STS) assumeRole(r *http.Request, body []byte, call Call) (any, *Error) {
	caller, err := s.authenticate(r, body)
	if err != nil {
		return nil, err
	}
	// Every session the stand-in issues is a role's, so every AssumeRole it serves is role chaining.
	if err := validate(call, true); err != nil {
		return nil, err
	}
	s.mu.Lock()
	want, required := s.externalIDs[call.RoleARN]
	s.mu.Unlock()
	if required && call.ExternalID != want {
		return nil, &Error{http.StatusForbidden, "AccessDenied",
			"User: " + caller.arn + " is not authorized to perform: sts:AssumeRole on resource: " + call.RoleARN}
	}
	var res assumeRoleResult
	res.Credentials, res.AssumedRoleUser, res.PackedPolicySize = s.issue(call)
	return res, nil
}

// validate checks what both actions share: the role, the session name, the duration and the session
// policies. Every role's MaxSessionDuration is STS's most, 12 hours; a chained session's is 1 hour.
func validate(c Call, chained bool) *Error {
	switch {
	case c.RoleARN == "":
		return validationError("Value null at 'roleArn' failed to satisfy constraint: Member must not be null")
	case len(c.SessionName) < 2 || len(c.SessionName) > 64:
		return validationError(fmt.Sprintf("Value '%s' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64", c.SessionName))
	case c.Duration != 0 && c.Duration < 15*time.Minute:
		return validationError(fmt.Sprintf("Value '%d' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900", int(c.Duration.Seconds())))
	case chained && c.Duration > time.Hour:
		return &Error{http.StatusBadRequest, "ValidationError", "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."}
	case c.Duration > 12*time.Hour:
		return &Error{http.StatusBadRequest, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."}
	case len(c.PolicyARNs) > 10:
		return validationError("Value at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to 10")
	case c.Policy != "" && !json.Valid([]byte(c.Policy)):
		return &Error{http.StatusBadRequest, "MalformedPolicyDocument", "The policy is not in the valid JSON format."}
	case len(c.Policy) > MaxPolicyLength:
		return &Error{http.StatusBadRequest, "PackedPolicyTooLarge",
			fmt.Sprintf("Packed policy consumes %d%% of allotted space, please use smaller policy.", packedSize(c.Policy))}
	}
	return nil
}

func validationError(detail string) *Error {
	return &Error{http.StatusBadRequest, "ValidationError", "1 validation error detected: " + detail}
}

// packedSize is a plausible PackedPolicySize: the inline policy's share of MaxPolicyLength, rounded up.
func packedSize(policy string) int32 {
	return int32((len(policy)*100 + MaxPolicyLength - 1) / MaxPolicyLength)
}

// issue mints a session for call and remembers it, so that AssumeRole can be signed with it.
func (s *STS) issue(call Call) (credentials, assumedRoleUser, *int32) {
	d := call.Duration
	if d == 0 {
		d = time.Hour
	}
	partition, account, roleName := "aws", "123456789012", call.RoleARN
	if parts := strings.SplitN(call.RoleARN, ":", 6); len(parts) == 6 {
		partition, account, roleName = parts[1], parts[4], strings.TrimPrefix(parts[5], "role/")
	}
	user := assumedRoleUser{
		Arn:           fmt.Sprintf("arn:%s:sts::%s:assumed-role/%s/%s", partition, account, roleName[strings.LastIndex(roleName, "/")+1:], call.SessionName),
		AssumedRoleID: "AROA" + strings.ToUpper(hex.EncodeToString(randomBytes(8))) + ":" + call.SessionName,
	}
	sess := session{
		secretAccessKey: random(30),
		sessionToken:    "IQoJb3JpZ2luX2VjE" + random(180),
		expiration:      s.cfg.Now().Add(d).UTC().Truncate(time.Second),
		arn:             user.Arn,
	}
	keyID := "ASIA" + strings.ToUpper(hex.EncodeToString(randomBytes(8)))
	s.mu.Lock()
	s.sessions[keyID] = sess
	s.mu.Unlock()

	var packed *int32
	if call.Policy != "" || len(call.PolicyARNs) > 0 {
		packed = aws.Int32(max(1, packedSize(call.Policy)))
	}
	creds := credentials{
		AccessKeyID:     keyID,
		SecretAccessKey: sess.secretAccessKey,
		SessionToken:    sess.sessionToken,
		Expiration:      sess.expiration.Format(time.RFC3339),
	}
	return creds, user, packed
}

// authenticate checks that r is signed with SigV4 by a live session the stand-in issued: it re-signs a
// copy of r, holding only the headers r says it signed, with that session's secret at r's X-Amz-Date,
// and compares the signatures.
func (s *STS) authenticate(r *http.Request, body []byte) (session, *Error) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return session{}, &Error{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"}
	}
	scope := strings.Split(authField(auth, "Credential="), "/") // AKID/DATE/REGION/SERVICE/aws4_request
	signedHeaders := authField(auth, "SignedHeaders=")
	if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 ") || len(scope) != 5 || scope[3] != "sts" || scope[4] != "aws4_request" || signedHeaders == "" {
		return session{}, &Error{http.StatusBadRequest, "IncompleteSignature", "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters for AWS4-HMAC-SHA256"}
	}
	s.mu.Lock()
	sess, ok := s.sessions[scope[0]]
	s.mu.Unlock()
	if !ok || r.Header.Get("X-Amz-Security-Token") != sess.sessionToken {
		return session{}, &Error{http.StatusForbidden, "InvalidClientTokenId", "The security token included in the request is invalid."}
	}
	if !s.cfg.Now().Before(sess.expiration) {
		return session{}, &Error{http.StatusBadRequest, "ExpiredToken", "The security token included in the request is expired"}
	}
	signedAt, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || signedAt.Format("20060102") != scope[1] {
		return session{}, &Error{http.StatusBadRequest, "IncompleteSignature", "Date must be in ISO-8601 'basic format' and match the credential scope"}
	}

	resigned, err := http.NewRequest(r.Method, r.URL.String(), nil)
	if err != nil {
		return session{}, &Error{http.StatusBadRequest, "SignatureDoesNotMatch", err.Error()}
	}
	resigned.Host = r.Host
	for _, h := range strings.Split(signedHeaders, ";") {
		switch h {
		case "host":
		case "content-length":
			resigned.ContentLength = r.ContentLength
		default:
			resigned.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	payload := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: scope[0], SecretAccessKey: sess.secretAccessKey, SessionToken: sess.sessionToken}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, resigned, hex.EncodeToString(payload[:]), "sts", scope[2], signedAt); err != nil {
		return session{}, &Error{http.StatusBadRequest, "SignatureDoesNotMatch", err.Error()}
	}
	want := resigned.Header.Get("Authorization")
	if authField(want, "SignedHeaders=") != signedHeaders ||
		!hmac.Equal([]byte(authField(want, "Signature=")), []byte(authField(auth, "Signature="))) {
		return session{}, &Error{http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."}
	}
	return sess, nil
}

// authField returns the value of one of an Authorization header's comma-separated fields, by prefix.
func authField(auth, prefix string) string {
	_, params, _ := strings.Cut(auth, " ")
	for _, f := range strings.Split(params, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(f), prefix); ok {
			return v
		}
	}
	return ""
}

// anyToken is the default VerifyToken: any non-empty token, its claims read without verification.
func anyToken(token string) (Identity, error) {
	var claims struct {
		Subject  string          `json:"sub"`
		Audience json.RawMessage `json:"aud"` // a string or a list of them
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return Identity{}, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil {
		return Identity{}, nil
	}
	id := Identity{Subject: claims.Subject}
	var auds []string
	if json.Unmarshal(claims.Audience, &id.Audience) != nil && json.Unmarshal(claims.Audience, &auds) == nil && len(auds) > 0 {
		id.Audience = auds[0]
	}
	return id, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read does not fail
	return b
}

// random returns an unguessable string of base64 characters from n random bytes.
func random(n int) string { return base64.StdEncoding.EncodeToString(randomBytes(n)) }

func requestID() string {
	b := hex.EncodeToString(randomBytes(16))
	return b[:8] + "-" + b[8:12] + "-" + b[12:16] + "-" + b[16:20] + "-" + b[20:]
}

// The response documents, in STS's awsquery shape.
const namespace = "https://sts.amazonaws.com/doc/2011-06-15/"

// response is ACTIONResponse, holding ACTIONResult.
type response struct {
	XMLName   xml.Name
	Result    any
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

type credentials struct {
	AccessKeyID     string `xml:"AccessKeyId"`
	SecretAccessKey string
	SessionToken    string
	Expiration      string
}

type assumedRoleUser struct {
	Arn           string
	AssumedRoleID string `xml:"AssumedRoleId"`
}

type webIdentityResult struct {
	XMLName                     xml.Name `xml:"AssumeRoleWithWebIdentityResult"`
	SubjectFromWebIdentityToken string
	Audience                    string
	AssumedRoleUser             assumedRoleUser
	Credentials                 credentials
	PackedPolicySize            *int32 `xml:",omitempty"`
	Provider                    string
}

type assumeRoleResult struct {
	XMLName          xml.Name `xml:"AssumeRoleResult"`
	AssumedRoleUser  assumedRoleUser
	Credentials      credentials
	PackedPolicySize *int32 `xml:",omitempty"`
}

type errorResponse struct {
	XMLName xml.Name `xml:"https://sts.amazonaws.com/doc/2011-06-15/ ErrorResponse"`
	Error   struct {
		Type    string
		Code    string
		Message string
	}
	RequestID string `xml:"RequestId"`
}

func writeError(w http.ResponseWriter, e *Error) {
	var doc errorResponse
	doc.Error.Type, doc.Error.Code, doc.Error.Message = "Sender", e.Code, e.Message
	if e.Status >= 500 {
		doc.Error.Type = "Receiver"
	}
	doc.RequestID = requestID()
	writeXML(w, e.Status, doc.RequestID, doc)
}

// writeXML writes doc; id is its request ID, which STS sends in a header as well as in the document.
func writeXML(w http.ResponseWriter, status int, id string, doc any) {
	b, err := xml.Marshal(doc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, xml.Header)
	_, _ = w.Write(b)
}
