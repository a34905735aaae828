# Custos: the two commands are `make demo` and `make test`. Everything else is for developers.
GO      ?= go
BIN     := $(CURDIR)/bin
PKGS    := ./...
# Brief fuzzing in `make test`; `make fuzz FUZZTIME=5m` for longer runs.
FUZZTIME ?= 5s

.PHONY: all build demo test deps vet lint unit alerts systemd fuzz fuzz-brief bench mutants proto clean package package-test

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

## demo: build, then run the main job against a SoftHSM token (software fallback) in ./demo-state.
demo: build
	@test/install-deps.sh --optional
	@BIN=$(BIN) test/demo.sh

## test: install what the tests need, then vet, race-enabled tests, alert-rule tests, the systemd unit
## check and brief fuzzing.
test: deps vet lint unit alerts systemd fuzz-brief

deps:
	@test/install-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)

STATICCHECK_VERSION := v0.8.2
lint:
	@test -x $(BIN)/staticcheck || GOBIN=$(BIN) GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(BIN)/staticcheck $(PKGS)

unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

alerts:
	@if [ -f configs/alerts_test.yml ]; then promtool check rules configs/alerts.yml && promtool test rules configs/alerts_test.yml; fi

# configs/custos.service: systemd-analyze verify (against the built agentctl), its security exposure, and the
# sysusers entries (test/unit-check.sh).
systemd: build
	@BIN=$(BIN) test/unit-check.sh

# Every Fuzz target in the tree, FUZZTIME each.
fuzz-brief:
	@FUZZTIME=$(FUZZTIME) GO=$(GO) test/fuzz.sh

fuzz:
	@FUZZTIME=$(FUZZTIME) GO=$(GO) test/fuzz.sh

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s $(PKGS)

## mutants: turn off each listed security check (test/mutants/*.txt) in a scratch copy and run the tests named to
## kill it; prints the kill table. Not part of `make test` (it runs each mutant's tests once: minutes).
mutants:
	$(GO) run ./test/mutants $(if $(ONLY),-only '$(ONLY)')

proto:
	@test/proto.sh

## package: build/package/custos_<version>_<arch>.deb with nfpm (packaging/, ADR 0088). PKG_VERSION=1.2.3 names it.
package:
	@GO=$(GO) $(if $(PKG_VERSION),PKG_VERSION=$(PKG_VERSION)) packaging/build.sh

## package-test: build the .deb, unpack it into a throw-away root and run agentctl from there (test/pkgtest).
## Not part of `make test`: a cold build of the package takes minutes.
package-test:
	CUSTOS_PACKAGE_TEST=1 $(GO) test -count=1 -timeout 20m ./test/pkgtest/

clean:
	rm -rf $(BIN) demo-state build
