// Package deploy holds the install manifests: a kustomize base with an overlay per CNI
// (kustomize/), the Helm chart that renders the same objects (helm/iamlet), and the tests that keep
// them, the Dockerfile and cmd/iamlet's flags in step. The e2e package applies them to a real apiserver.
package deploy
