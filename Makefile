# kube-routerd: every entry point a person or CI uses. `make help` lists them.
SHELL := /bin/bash
VERSION ?= 0.1.0
GIT_SHA := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
ARCH ?= $(shell go env GOARCH)
TOOLS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kube-routerd-tools
NFPM_VERSION := v2.45.2
STATICCHECK_VERSION := v0.8.2
LDFLAGS := -s -w -X main.version=$(VERSION)+$(GIT_SHA)
# Where `make build` puts the binary and `make package` the packages; the node tier
# builds its two package versions elsewhere so it never races another run's bin/ or dist/.
BIN ?= bin/kube-routerd
DIST ?= dist

export GOTOOLCHAIN := local
# One set of compile flags for builds, tests and the VM's static test binaries, so
# they share one build cache (any difference recompiles client-go and friends).
export CGO_ENABLED := 0
export GOFLAGS := -trimpath

.PHONY: help build test demo bench package lint clean kube-bin

help:
	@echo "make build     build bin/kube-routerd (static; BIN=path elsewhere)"
	@echo "make test      every test tier: unit, host namespaces + real API server, VM (IPVS), node (the .deb under systemd)"
	@echo "make demo      a real control plane and a small simulated cluster, each controller working"
	@echo "make bench     speed and memory figures of each controller"
	@echo "make package   dist/kube-routerd_<version>_<arch>.deb and .rpm (VERSION=, DIST=dir)"
	@echo "make lint      gofmt, go vet, staticcheck"
	@echo "make kube-bin  build the cached kube-apiserver + etcd for tests; prints their dir"
	@echo "make clean     remove build outputs"

build:
	go build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/kube-routerd

test:
	bash hack/test.sh

demo: build
	bash hack/demo.sh

bench: build
	bash hack/bench.sh

kube-bin:
	@bash hack/kube-bin.sh

$(TOOLS)/nfpm-$(NFPM_VERSION):
	mkdir -p $(TOOLS)
	cd / && GOBIN=$(TOOLS) go install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	mv $(TOOLS)/nfpm $@

package: build $(TOOLS)/nfpm-$(NFPM_VERSION)
	mkdir -p $(DIST)
	BINARY=$(BIN) VERSION=$(VERSION) ARCH=$(ARCH) $(TOOLS)/nfpm-$(NFPM_VERSION) pkg --config nfpm.yaml --packager deb --target $(DIST)/
	BINARY=$(BIN) VERSION=$(VERSION) ARCH=$(ARCH) $(TOOLS)/nfpm-$(NFPM_VERSION) pkg --config nfpm.yaml --packager rpm --target $(DIST)/
	@ls -l $(DIST)/

$(TOOLS)/staticcheck-$(STATICCHECK_VERSION):
	mkdir -p $(TOOLS)
	cd / && GOBIN=$(TOOLS) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/staticcheck $@

lint: $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)
	@out=$$(gofmt -l cmd internal test hack 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go vet -tags integration ./...
	go vet -tags vm ./...
	go vet -tags node ./...
	go vet -tags bench ./...
	$(TOOLS)/staticcheck-$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin dist
