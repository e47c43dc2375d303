// Package metadata is iamlet's face towards pods: it speaks the EC2 instance metadata (IMDS) protocol and the
// container credentials protocol so that unmodified AWS SDKs get their own pod's role credentials, and it refuses every
// path that would expose the node's own secrets (user-data, the node role, signed identity documents).
//
// Who is calling, which role they get and where the credentials come from is not decided here: a CredentialProvider
// (implemented by the agent) answers that, keyed by the caller's source IP.
//
// In this package a token is an IMDSv2 session token (PUT /latest/api/token), which the agent signs and checks
// itself; the ServiceAccount tokens traded with STS are agent/satoken's, and the credentials' SessionToken is AWS's.
package metadata
