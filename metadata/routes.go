package metadata

import "strings"

// The allow-list. Every path the face answers is one of these shapes; everything else is refused as a node path.
// Upstream requests are built only from fact.canonicalPath, never from what the client sent.
const (
	pathToken          = "/latest/api/token"
	pathMetaData       = "/latest/meta-data"
	pathIAM            = "/latest/meta-data/iam"
	pathPlacement      = "/latest/meta-data/placement"
	pathCreds          = "/latest/meta-data/iam/security-credentials"
	pathCredsExtended  = "/latest/meta-data/iam/security-credentials-extended"
	pathInstanceID     = "/latest/meta-data/instance-id"
	pathInstanceType   = "/latest/meta-data/instance-type"
	pathAMIID          = "/latest/meta-data/ami-id"
	pathLocalIPv4      = "/latest/meta-data/local-ipv4"
	pathRegion         = "/latest/meta-data/placement/region"
	pathAZ             = "/latest/meta-data/placement/availability-zone"
	pathAZID           = "/latest/meta-data/placement/availability-zone-id"
	pathIdentityDoc    = "/latest/dynamic/instance-identity/document"
	listingMetaData    = "ami-id\niam/\ninstance-id\ninstance-type\nlocal-ipv4\nplacement/"
	listingIAM         = "security-credentials/"
	listingPlacement   = "availability-zone\navailability-zone-id\nregion"
	identityDocVersion = "2017-09-30"
)

// Deliberately absent, and why:
//   - user-data: node bootstrap secrets (kubelet credentials, join tokens).
//   - iam/security-credentials/<node role>, iam/info, identity-credentials/: the node's own role and instance profile.
//   - dynamic/instance-identity/signature, pkcs7, rsa2048: a signed identity document is proof of being this
//     instance. Vault's AWS auth (ec2 method), among others, logs a caller in AS THE NODE on the strength of it, so
//     handing it to a pod hands the pod the node's identity.
//   - API versions other than "latest": nothing needs them and each is another spelling to get wrong.

type routeKind uint8

const (
	routeNone routeKind = iota
	routeToken
	routeCredsList
	routeCredsDoc
	routeCredsExtList
	routeCredsExtDoc
	routeListing // a synthesised directory listing (fixed text)
	routeFact    // a node fact, from the node's IMDS or from Config.Node
)

type route struct {
	kind    routeKind
	fact    fact   // routeFact
	listing string // routeListing
	name    string // routeCredsDoc, routeCredsExtDoc: the role name as the client spelled it
}

func (r route) class() class {
	switch r.kind {
	case routeToken:
		return classToken
	case routeCredsList, routeCredsDoc:
		return classCredentials
	case routeCredsExtList, routeCredsExtDoc:
		return classCredentialsExtended
	case routeListing, routeFact:
		return classNodeFact
	}
	return classOther
}

// fact is one allow-listed node fact.
type fact uint8

const (
	factNone fact = iota
	factInstanceID
	factInstanceType
	factAMIID
	factLocalIPv4
	factRegion
	factAZ
	factAZID
	factIdentityDoc
	numFacts
)

// canonicalPath is the only path ever requested from the node's IMDS for f.
func (f fact) canonicalPath() string {
	switch f {
	case factInstanceID:
		return pathInstanceID
	case factInstanceType:
		return pathInstanceType
	case factAMIID:
		return pathAMIID
	case factLocalIPv4:
		return pathLocalIPv4
	case factRegion:
		return pathRegion
	case factAZ:
		return pathAZ
	case factAZID:
		return pathAZID
	case factIdentityDoc:
		return pathIdentityDoc
	}
	return ""
}

// match routes a normalised path. Trailing slashes are ignored: every allowed leaf is served with and without one
// (BC asks for "placement/availability-zone/").
func match(rp reqPath) route {
	p := rp.p
	switch {
	case equalFoldASCII(p, pathToken):
		return route{kind: routeToken}
	case equalFoldASCII(p, pathMetaData):
		return route{kind: routeListing, listing: listingMetaData}
	case equalFoldASCII(p, pathIAM):
		return route{kind: routeListing, listing: listingIAM}
	case equalFoldASCII(p, pathPlacement):
		return route{kind: routeListing, listing: listingPlacement}
	case equalFoldASCII(p, pathCreds):
		return route{kind: routeCredsList}
	case equalFoldASCII(p, pathCredsExtended):
		return route{kind: routeCredsExtList}
	}
	if name, ok := child(p, pathCreds); ok {
		return route{kind: routeCredsDoc, name: name}
	}
	if name, ok := child(p, pathCredsExtended); ok {
		return route{kind: routeCredsExtDoc, name: name}
	}
	for f := factNone + 1; f < numFacts; f++ {
		if equalFoldASCII(p, f.canonicalPath()) {
			return route{kind: routeFact, fact: f}
		}
	}
	return route{kind: routeNone}
}

// child returns the single segment below dir in p.
func child(p, dir string) (string, bool) {
	if len(p) <= len(dir)+1 || p[len(dir)] != '/' || !hasPrefixFoldASCII(p, dir) {
		return "", false
	}
	name := p[len(dir)+1:]
	if strings.IndexByte(name, '/') >= 0 {
		return "", false
	}
	return name, true
}
