# iamlet. `make demo` and `make test` work on a fresh machine of this kind (Debian, Go, root): both
# install the real components first (hack/install-stack.sh; about 10 minutes once, cached after).
GO ?= go
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build vet demo test unit e2e realnode fuzz bench soak install-stack image clean

all: build

build:
	$(GO) build ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet ./...

install-stack:
	./hack/install-stack.sh

# The main job: the local real stack, iamlet, and the AWS CLI in two pods with two roles.
demo: install-stack
	$(GO) run ./e2e/demo

# Everything: unit tests, end-to-end tests on the real stack (root, network namespaces), the real node (a kubelet,
# containerd, the chart installed with helm), bounded fuzzing. The real node runs on its own, after the rest: the
# machine has two cores, and a kubelet beside the other end-to-end suite would measure the machine, not iamlet.
test: install-stack vet
	$(GO) test -race -count=1 -timeout 40m $$($(GO) list ./... | grep -v /e2e/realnode)
	$(GO) test -count=1 -timeout 20m -v ./e2e/realnode/
	$(MAKE) fuzz

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: install-stack
	$(GO) test -count=1 -timeout 40m -v $$($(GO) list ./e2e/... | grep -v /e2e/realnode)
	$(GO) test -count=1 -timeout 20m -v ./e2e/realnode/

# The real node alone: the image from the Dockerfile, the chart with helm, a kubelet and real pods (issue 15).
realnode: install-stack
	$(GO) test -count=1 -timeout 20m -v ./e2e/realnode/

# A count, not a duration: Go 1.26's fuzz coordinator can report "context deadline exceeded" as a failure when a
# duration runs out while a worker is mid-input on a loaded machine (golang/go#75804, fixed in 1.27). 10-30 s
# per target here when quiet; a busy machine takes longer instead of failing.
FUZZTIME ?= 200000x
# Packages that parse what a pod or a namespace's owner sends: requests to the IMDS face, session policies.
FUZZ_PKGS ?= ./metadata/ ./policy/
fuzz:
	@for p in $(FUZZ_PKGS); do for f in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
		echo "fuzz $$p $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
	done; done

# Not in CI: steady load over IPv4 and IPv6, pod churn with address reuse, agent restarts under load (the gap a
# rolling update leaves), pods started before the agent, STS and apiserver restarts (SOAK_DURATION, default 10m).
soak: install-stack
	$(GO) run ./e2e/soak

# Benchmarks (issues 8, 18; bench/README.md): the hot path's Go micro-benchmarks, then the real stack (root, network
# namespaces, taskset) with iamlet and a same-run baseline for every figure. Writes bench/results.md and bench/results.json.
BENCH_PKGS ?= ./metadata/ ./agent/ ./agent/creds/ ./agent/pods/
bench: install-stack
	$(GO) test -run '^$$' -bench . -benchmem -count 3 -benchtime 300ms $(BENCH_PKGS) > bench/micro.tmp || { cat bench/micro.tmp; exit 1; }
	@cat bench/micro.tmp
	$(GO) run ./bench/cmd/iamlet-bench -micro bench/micro.tmp -out bench

image:
	docker build -t iamlet:dev .

clean:
	rm -rf bin
