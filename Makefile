# nitropod — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

OUT ?= $(CURDIR)/_output
GO ?= go
export NITROPOD_OUTPUT := $(OUT)
export PATH := $(OUT)/bin:$(OUT)/tools/bin:$(PATH)

# Test timeouts: the integration tier boots real VMs under TCG on 2 cores.
UNIT_TIMEOUT ?= 20m
INTEGRATION_TIMEOUT ?= 50m

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build every binary into _output/bin (static, CGO off).
	@mkdir -p $(OUT)/bin
	CGO_ENABLED=0 $(GO) build -trimpath -o $(OUT)/bin/ ./cmd/...

.PHONY: deps
deps: ## Install the Debian packages the tests use (containerd, runc, QEMU, busybox, cpio, CNI).
	hack/install-deps.sh

.PHONY: tools
tools: deps ## Build the pinned test tools (etcd, kube-apiserver, kubelet, registry, S3 server, crictl, helm, containerd 1.7 and 2.2).
	hack/build-tools.sh $(OUT)/tools/bin

.PHONY: emu-kernel
emu-kernel: deps ## Make the emulation blob set (kernel, cmdline, virtio modules) from Debian's kernel package.
	hack/emu-kernel.sh $(OUT)/blobs/emu

.PHONY: test
test: deps tools emu-kernel build lint test-unit test-integration test-matrix test-e2e ## Every test tier that fits in CI (and lint), installing what it needs.

.PHONY: test-unit
test-unit: ## Unit tier: go test -race -short.
	$(GO) test -race -short -count=1 -timeout $(UNIT_TIMEOUT) ./...

# -p 1: one package at a time. The tiers boot real VMs under TCG; packages
# that each start containerd and several enclaves at once starved each other
# on two cores (a containerd lookup timing out, a guest hanging in boot).
.PHONY: test-integration
test-integration: build ## Integration tier: real QEMU, containerd, kube-apiserver, registry, S3 server.
	$(GO) test -p 1 -count=1 -timeout $(INTEGRATION_TIMEOUT) ./...

# The containerd version matrix: the integration tier runs on Debian's
# containerd 1.6; these shim tests, one for each containerd API the shim
# meets (the task API through ctr with events, CRI, a containerd restart,
# start failures, OOM), run again on containerd 1.7 and 2.2
# (docs/TESTENV.md says why this subset).
MATRIX_TESTS ?= TestCtrRunEnclave|TestCRIPodWithEnclave|TestContainerdRestart$$|TestFaultsDuringStart|TestCRIEnclaveOOM
MATRIX_CONTAINERDS ?= containerd-1.7 containerd-2.2

.PHONY: test-matrix
test-matrix: build ## The shim's containerd-facing integration tests under containerd 1.7 and 2.2.
	@for c in $(MATRIX_CONTAINERDS); do \
	  echo "test-matrix: $$c"; \
	  NITROPOD_CONTAINERD=$$c $(GO) test -p 1 -count=1 -timeout $(INTEGRATION_TIMEOUT) -run '$(MATRIX_TESTS)' ./shim/ || exit 1; \
	done

.PHONY: test-e2e e2e
test-e2e: e2e
e2e: build ## End-to-end tier: a local cluster runs the document's Pods in emulated enclaves.
	hack/e2e.sh

.PHONY: conformance
conformance: build ## CRI validation suite (critest) with the runc and nitro handlers; not part of `make test` (results in docs/COMPATIBILITY.md).
	hack/build-tools.sh $(OUT)/tools/bin critest crictl
	test/conformance/run.sh -test.timeout=$${CONFORMANCE_TIMEOUT:-40m}

.PHONY: soak
soak: build ## Churn: 200 enclave Pod create/delete cycles on the e2e cluster; leak and RSS checks (results to BENCHMARKS.md).
	E2E_RUN='TestEnclaveLifecycle/churn' E2E_CHURN_CYCLES=$${SOAK_CYCLES:-200} E2E_TIMEOUT=$${E2E_TIMEOUT:-90m} hack/e2e.sh

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 60s) each.
	hack/fuzz.sh $${FUZZTIME:-60s}

.PHONY: lint
lint: ## golangci-lint (pinned in hack/tools/go.mod) and go vet.
	$(GO) vet ./...
	$(GO) tool -modfile=hack/tools/go.mod golangci-lint run ./...

.PHONY: bench bench-net bench-eif bench-agent bench-shim bench-deviceplugin bench-webhook bench-s3 bench-attestation bench-deliver bench-exec
bench: bench-eif bench-agent bench-net bench-deviceplugin bench-webhook bench-shim bench-s3 bench-deliver ## Every benchmark (results go to BENCHMARKS.md by hand).
bench-eif: ## EIF build from a synthetic 256 MiB / 1 GiB rootfs vs sha384sum of a tar.
	hack/bench-eif.sh
bench-agent: build ## Agent channel throughput and time to first output line under TCG.
	hack/bench-agent.sh
bench-net: ## Enclave network, host side alone: throughput vs a direct socket copy, connect p99, RSS with 100 connections.
	hack/bench-net.sh
bench-shim: build ## Shim + launcher RSS vs runc shim; Create→Start on a cache hit.
	hack/bench-shim.sh
bench-exec: build ## `ctr task exec … true` round trip, debug enclave vs runc; time inside the agent channel vs host side.
	hack/bench-exec.sh
bench-deviceplugin: ## ListAndWatch size for a 768 GiB / 192-CPU node; Allocate latency.
	hack/bench-deviceplugin.sh
bench-webhook: build ## Webhook latency/throughput over TLS vs a null handler.
	hack/bench-webhook.sh
bench-s3: build ## S3 EIF download throughput vs curl.
	hack/bench-s3.sh
bench-deliver: ## Host-side cost of delivering 1 MiB of configuration at container start vs the hostname alone.
	flock /tmp/nitropod-heavy.lock $(GO) test -count=1 -run '^$$' -bench BenchmarkDeliver -benchtime 50x ./shim/deliver/
bench-attestation: ## Verifier time per attestation document; GetAttestationDoc p50/p99 over 1,000 calls in an emulated enclave.
	$(GO) test -count=1 -run '^$$' -bench 'BenchmarkVerify|BenchmarkSign' -benchtime 2s ./attestation/
	flock /tmp/nitropod-heavy.lock env NITROPOD_BENCH_NSM_CALLS=1000 $(GO) test -count=1 -v -run TestEmulatedNSMLatency ./enclave/qemu/

.PHONY: demo
demo: deps tools emu-kernel build ## A local cluster to try workloads in emulated enclaves (FILE=x.yaml; default: the document's nginx Pod).
	hack/demo.sh $(if $(FILE),-f $(FILE))

.PHONY: clean
clean: ## Remove _output.
	rm -rf $(OUT)
