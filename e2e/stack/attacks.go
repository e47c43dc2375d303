package stack

import "strings"

// AttackPaths aim at the node's role credentials, instance profile, user-data and signed identity.
var AttackPaths = []string{
	"/latest/user-data", "/latest/user-data/", "/latest//user-data", "//latest/user-data", "/latest/./user-data",
	"/latest/meta-data/../user-data", "/latest/meta-data/%2e%2e/user-data", "/latest/%2e%2e/latest/user-data",
	"/latest/%75ser-data", "/latest/user%2ddata", "/latest/user-data%2f", "/latest/user-data%00", "/latest/%252e%252e/user-data",
	"/LATEST/USER-DATA", "/Latest/User-Data", "/2009-04-04/user-data", "/1.0/user-data", "/latest/user-data?x=1",
	"/latest/user-data#frag", "/latest/user-data;x", "/latest/user-data\\",
	"/latest/meta-data/iam/security-credentials/" + NodeRoleName,
	"/latest/meta-data/iam/security-credentials/" + strings.ToUpper(NodeRoleName),
	"/latest/meta-data/iam/security-credentials//" + NodeRoleName,
	"/latest/meta-data/iam/security-credentials/./" + NodeRoleName,
	"/latest/meta-data/iam/security-credentials/" + NodeRoleName + "/",
	"/latest/meta-data/iam/security-credentials/%6eode-role",
	"/latest/meta-data/iam/security-credentials-extended/" + NodeRoleName,
	"/latest/meta-data/iam/info", "/latest/meta-data/iam/info/", "/latest/meta-data/IAM/INFO", "/latest/meta-data/iam/./info",
	"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
	"/latest/dynamic/instance-identity/pkcs7", "/latest/dynamic/instance-identity/signature", "/latest/dynamic/instance-identity/rsa2048",
	"/latest/meta-data/public-keys/0/openssh-key", "/latest/meta-data/network/interfaces/macs/",
	"PUT /latest/user-data", "POST /latest/meta-data/iam/security-credentials/" + NodeRoleName,
	"HEAD /latest/user-data", "DELETE /latest/meta-data/iam/info", "PATCH /latest/user-data",
	"http://169.254.169.254/latest/user-data",
}

// ProbeAnswer is one request's answer as the probe client printed it.
type ProbeAnswer struct {
	Request string
	Status  string
	Body    string
}

// ParseProbe splits the probe client's output (e2e/clients/probe) into its answers.
func ParseProbe(out string) []ProbeAnswer {
	var res []ProbeAnswer
	for _, block := range strings.Split(out, "=== ")[1:] {
		lines := strings.SplitN(block, "\n", 3)
		a := ProbeAnswer{Request: lines[0]}
		if len(lines) > 1 {
			a.Status = lines[1]
		}
		if len(lines) > 2 {
			a.Body = lines[2]
		}
		res = append(res, a)
	}
	return res
}

// AssertNoNodeSecrets fails t if any of the node's secrets (Markers) appears in out, what a client named what got.
func AssertNoNodeSecrets(t TB, what, out string) {
	t.Helper()
	for _, m := range Markers {
		if strings.Contains(out, m) {
			t.Errorf("%s returned the node's secret %s:\n%s", what, m, out)
		}
	}
}
