# Custos: the two commands are `make demo` and `make test`. Everything else is for developers.
GO      ?= go
BIN     := $(CURDIR)/bin
PKGS    := ./...
# Brief fuzzing in `make test`; `make fuzz FUZZTIME=5m` for longer runs.
FUZZTIME ?= 5s

.PHONY: all build demo test deps vet lint unit alerts systemd fuzz fuzz-brief bench mutants proto clean package package-test network sessions soak

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

## network: N agents (daemons with libp2p plugins on loopback, one bootstrap address) for each N of NETWORK_N
## (default "10 25 50"): time until every ID resolves, lookup p50/p99, revocation at all N, RSS (issue 14,
## test/e2e/network_test.go, build tag network). Not part of `make test`; prints one RESULT line per N.
NETWORK_N ?= 10 25 50
network:
	@for n in $(NETWORK_N); do \
		CUSTOS_NETWORK_N=$$n $(GO) test -tags network -count=1 -v -timeout 30m -run '^TestNetwork$$' ./test/e2e > $${TMPDIR:-/tmp}/custos-network-$$n.log 2>&1; rc=$$?; \
		grep -E 'RESULT|^(--- |ok|FAIL)' $${TMPDIR:-/tmp}/custos-network-$$n.log; [ $$rc -eq 0 ] || { echo "see $${TMPDIR:-/tmp}/custos-network-$$n.log"; exit $$rc; }; done

## sessions: one agent (agent core and a sandboxed TCP plugin, in a child process) holding N sessions from
## lightweight in-process initiators, each with its own identity, for each N of SESSIONS_N (cumulative): connect
## rate, RSS of the agent and of its plugin per session, CPU at idle (issue 19, test/bench/sessions_test.go, build
## tag sessions). Not part of `make test` nor `make bench`.
SESSIONS_N ?= 100 1000 5000
sessions:
	CUSTOS_SESSIONS_N="$(SESSIONS_N)" $(GO) test -tags sessions -count=1 -run '^$$' -bench '^BenchmarkSessions$$' -benchtime 1x -timeout 30m ./test/bench

## soak: SOAK_AGENTS agents (daemons with TCP plugins, granted to submit to and run for one another, per-peer rate
## limits on) exchange tasks at SOAK_RATE a second each for SOAK_DURATION while plugins and two daemons are killed
## (SIGKILL) at random: no accepted task lost, every audit log verifies, every daemon and plugin under its RSS bound
## (issue 19, test/e2e/soak_test.go, build tag soak). Not part of `make test`; prints one RESULT line.
SOAK_AGENTS ?= 10
SOAK_DURATION ?= 10m
SOAK_RATE ?= 2
soak:
	@CUSTOS_SOAK_AGENTS=$(SOAK_AGENTS) CUSTOS_SOAK_DURATION=$(SOAK_DURATION) CUSTOS_SOAK_RATE=$(SOAK_RATE) \
		$(GO) test -tags soak -count=1 -v -timeout 60m -run '^TestSoak$$' ./test/e2e > $${TMPDIR:-/tmp}/custos-soak.log 2>&1; rc=$$?; \
		grep -E 'RESULT|soak_test.go|^(--- |ok|FAIL)' $${TMPDIR:-/tmp}/custos-soak.log | head -100; [ $$rc -eq 0 ] || { echo "see $${TMPDIR:-/tmp}/custos-soak.log"; exit $$rc; }

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
