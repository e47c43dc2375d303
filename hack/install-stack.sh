#!/usr/bin/env bash
# Installs the real components the end-to-end tests run on: Debian packages, then pinned builds of
# Kubernetes (apiserver and a real node's components), MinIO, the EC2 metadata mock and helm, and the real node's base
# images, cached by version outside the repo
# (IAMLET_STACK_DIR, default /var/cache/iamlet-stack) so a second run takes seconds.
set -euo pipefail

KUBE_VERSION=v1.36.3
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
AEMM_VERSION=v1.12.0
HELM_VERSION=v3.21.4

dir=${IAMLET_STACK_DIR:-/var/cache/iamlet-stack}
bin=$dir/bin
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$bin"

step() { printf '[install-stack %s] %s\n' "$(date +%T)" "$*"; }

# Debian packages: networking, etcd, kubectl, the non-Go clients, the real node's runtime.
pkgs=(iptables nftables iproute2 conntrack etcd-server awscli python3-boto3 ca-certificates openssl jq util-linux)
# The real node (issue 15): a container runtime, CNI plugins, and the tools that build images without a registry.
pkgs+=(containerd runc containernetworking-plugins buildah mmdebstrap)
# promtool for the alert rules' unit tests, and a real Prometheus to scrape the agent.
pkgs+=(prometheus)
missing=()
# Some images ship kubectl from another package that owns /usr/bin/kubectl; Debian's would clash with it.
command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
# The JavaScript SDK client needs Node.js >= 20 and npm; a machine that has them from elsewhere keeps its own.
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  dpkg --configure -a >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# build NAME VERSION OUT: builds in a throwaway module whose go.mod the caller has written to $work.
# Progress is the go command's own -x-less output plus a ticker, so a 5-minute build is visibly alive.
ticker() { while sleep 30; do step "  ... still building $1"; done; }
gobuild() {
  local name=$1 out=$2; shift 2
  local t; ticker "$name" & t=$!
  if ! (cd "$work" && "$@"); then kill $t 2>/dev/null; step "building $name failed"; return 1; fi
  kill $t 2>/dev/null; wait $t 2>/dev/null || true
  [ -x "$out" ] || { step "building $name produced no $out"; return 1; }
}

# Kubernetes: the apiserver for every test, and what a real node runs (issue 15: kubelet, the controller manager
# that creates DaemonSet pods, the scheduler that binds them, kube-proxy for the `kubernetes` Service). One
# throwaway module builds them all, so they share the build cache. k8s.io/kubernetes needs a replace line for
# every staging module its own go.mod replaces.
kube_bins=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
kube_missing=()
for b in "${kube_bins[@]}"; do [ -x "$bin/$b-$KUBE_VERSION" ] || kube_missing+=("$b"); done
if [ ${#kube_missing[@]} -gt 0 ]; then
  step "building ${kube_missing[*]} $KUBE_VERSION (about 5 minutes each cold; they share the build cache)"
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging_ver=v0.${KUBE_VERSION#v1.}
  {
    echo "module kubebuild"
    echo "go 1.26"
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    sed -n '/^replace (/,/^)/p' "$modfile" | awk '/=> \.\/staging/ {print $1}' | grep -v sample-cli-plugin |
      while read -r m; do echo "replace $m => $m $staging_ver"; done
  } > "$work/go.mod"
  { echo "package tools"; echo; for b in "${kube_bins[@]}"; do echo "import _ \"k8s.io/kubernetes/cmd/$b\""; done; } > "$work/tools.go"
  (cd "$work" && go mod tidy >/dev/null 2>&1 || go mod tidy)
  v=k8s.io/component-base/version
  for b in "${kube_missing[@]}"; do
    step "  go build $b"
    gobuild "$b" "$work/$b" env CGO_ENABLED=0 go build -o "$work/$b" \
      -ldflags "-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=${staging_ver#v0.}" \
      "k8s.io/kubernetes/cmd/$b"
    mv "$work/$b" "$bin/$b-$KUBE_VERSION"
  done
  rm -rf "$work"; trap - EXIT
fi

# MinIO: installs cleanly with go install.
out=$bin/minio-$MINIO_VERSION
if [ ! -x "$out" ]; then
  step "building minio $MINIO_VERSION (about 3 minutes cold)"
  work=$(mktemp -d)
  gobuild minio "$work/minio" env GOBIN="$work" go install -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION"
  mv "$work/minio" "$out"; rm -rf "$work"
fi

# amazon-ec2-metadata-mock: go install fails on its version list, so a throwaway module.
out=$bin/ec2-metadata-mock-$AEMM_VERSION
if [ ! -x "$out" ]; then
  step "building amazon-ec2-metadata-mock $AEMM_VERSION"
  work=$(mktemp -d)
  printf 'module aemmbuild\ngo 1.26\nrequire github.com/aws/amazon-ec2-metadata-mock %s\n' "$AEMM_VERSION" > "$work/go.mod"
  printf 'package tools\n\nimport _ "github.com/aws/amazon-ec2-metadata-mock/cmd"\n' > "$work/tools.go"
  (cd "$work" && go mod tidy >/dev/null)
  gobuild ec2-metadata-mock "$work/ec2-metadata-mock" go build -o "$work/ec2-metadata-mock" github.com/aws/amazon-ec2-metadata-mock/cmd
  mv "$work/ec2-metadata-mock" "$out"; rm -rf "$work"
fi

# The JavaScript SDK client's packages (e2e/clients/js), installed outside the repo in a directory keyed
# by its lockfile's hash (e2e/stack.NPMDir computes the same name); built aside, then renamed into place.
lock=$repo/e2e/clients/js/package-lock.json
npmdir=$dir/npm-$(sha256sum "$lock" | cut -c1-16)
if [ ! -d "$npmdir/node_modules" ]; then
  step "npm ci for the JavaScript SDK client"
  tmp=$npmdir.tmp.$$; rm -rf "$tmp"; mkdir -p "$tmp"
  cp "$repo/e2e/clients/js/package.json" "$lock" "$tmp/"
  npm ci --prefix "$tmp" --no-audit --no-fund --loglevel=error
  rm -rf "$npmdir"; mv "$tmp" "$npmdir"
fi

# helm (the chart's lint and template tests): go install works. The ldflags are helm's own Makefile's: without
# them helm reports no version and assumes Kubernetes 1.20, refusing the chart's kubeVersion.
out=$bin/helm-$HELM_VERSION
if [ ! -x "$out" ]; then
  step "building helm $HELM_VERSION (about 10 minutes cold)"
  work=$(mktemp -d)
  h=helm.sh/helm/v3 kube_minor=${KUBE_VERSION#v1.}; kube_minor=${kube_minor%%.*}
  gobuild helm "$work/helm" env GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
    -X $h/internal/version.version=$HELM_VERSION \
    -X $h/pkg/chartutil.k8sVersionMajor=1 -X $h/pkg/chartutil.k8sVersionMinor=$kube_minor \
    -X $h/pkg/lint/rules.k8sVersionMajor=1 -X $h/pkg/lint/rules.k8sVersionMinor=$kube_minor" "$h/cmd/helm@$HELM_VERSION"
  mv "$work/helm" "$out"; rm -rf "$work"
fi

# Images for the real node (issue 15), built without a registry into buildah storage of the stack's own. The base
# images the Dockerfile names are made here under those names: Debian by mmdebstrap from the machine's own apt
# sources, the Go image as that Debian with this machine's Go toolchain. Then the Dockerfile is built once, so its
# apt-get layer is cached and the tests' builds need no network; and a Debian client base with the AWS CLI and boto3.
B=(buildah --root "$dir/buildah/root" --runroot "$dir/buildah/run" --storage-driver overlay)
has_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }
apt_sources() {
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then cat /etc/apt/sources.list.d/*.sources
  else grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; fi
}
# rootfs_image NAME SUITE [PACKAGES]: a minbase Debian SUITE with PACKAGES (comma-separated) as image NAME.
rootfs_image() {
  local name=$1 suite=$2 include=${3:-} tar c
  has_image "$name" && return 0
  step "mmdebstrap $suite${include:+ with $include} as $name"
  tar=$(mktemp --suffix=.tar)
  apt_sources | mmdebstrap --quiet --variant=minbase ${include:+--include="$include"} "$suite" "$tar" -
  c=$("${B[@]}" from scratch)
  "${B[@]}" add "$c" "$tar" / >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$c"
  "${B[@]}" commit --quiet "$c" "$name" >/dev/null
  "${B[@]}" rm "$c" >/dev/null; rm -f "$tar"
}
for ref in $(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' "$repo/Dockerfile"); do
  case $ref in
    debian:*) tag=${ref#debian:}; rootfs_image "docker.io/library/$ref" "${tag%-slim}" ;;
    golang:*-*)
      name=docker.io/library/$ref; suite=${ref##*-}; want=${ref#golang:}; want=go${want%-*}
      has_image "$name" && continue
      goroot=$(go env GOROOT); have=$(go env GOVERSION)
      case $have in "$want"|"$want".*) ;; *) step "the Dockerfile wants $ref but this machine's Go is $have"; exit 1 ;; esac
      # As the official image: Debian with ca-certificates, and Go.
      rootfs_image "localhost/iamlet-go-base:$suite" "$suite" ca-certificates
      step "$name from Debian $suite and this machine's $have"
      c=$("${B[@]}" from --pull=never "localhost/iamlet-go-base:$suite")
      "${B[@]}" copy "$c" "$goroot" /usr/local/go >/dev/null
      "${B[@]}" config --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env GOPATH=/go --env GOTOOLCHAIN=local --workingdir /go "$c"
      "${B[@]}" commit --quiet "$c" "$name" >/dev/null; "${B[@]}" rm "$c" >/dev/null ;;
    *) step "no local recipe for the Dockerfile's base image $ref"; exit 1 ;;
  esac
done
rootfs_image localhost/iamlet-client-base:bookworm bookworm awscli,python3-boto3,ca-certificates
stamp=$dir/buildah/dockerfile-$(sha256sum "$repo/Dockerfile" | cut -c1-16)
# The Dockerfile's `go mod download` finds every module in the machine's module cache, mounted into the build: the
# tests' builds run where there is no network.
step "go mod download (the project's modules, for the image builds)"
(cd "$repo" && go mod download)
if [ ! -f "$stamp" ]; then
  step "building the Dockerfile once, to cache its package layer"
  "${B[@]}" bud --pull=never --layers --isolation=chroot --quiet -v "$(go env GOMODCACHE):/go/pkg/mod" \
    -v "$(go env GOCACHE):/root/.cache/go-build" -f "$repo/Dockerfile" -t localhost/iamlet:install-stack "$repo" >/dev/null
  touch "$stamp"
fi

# Stable names the harness uses.
for b in "${kube_bins[@]}"; do ln -sf "$b-$KUBE_VERSION" "$bin/$b"; done
ln -sf "minio-$MINIO_VERSION" "$bin/minio"
ln -sf "ec2-metadata-mock-$AEMM_VERSION" "$bin/ec2-metadata-mock"
ln -sf "helm-$HELM_VERSION" "$bin/helm"
step "stack binaries ready in $bin"
