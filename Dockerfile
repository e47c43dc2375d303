# Multi-stage: a static Go binary on a small Debian base that carries both iptables backends (nft and
# legacy; the agent picks the one the node uses) and conntrack. Multi-arch through buildx:
#   docker buildx build --platform linux/amd64,linux/arm64 -t iamlet .
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
# The release's version, for `iamlet version` (docs/release.md: --build-arg VERSION=X.Y.Z).
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/iamlet ./cmd/iamlet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/iamlet /usr/local/bin/iamlet
# Runs as uid 0 with every capability dropped but NET_ADMIN (set in the DaemonSet), on a read-only root.
ENTRYPOINT ["/usr/local/bin/iamlet"]
