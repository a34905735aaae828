#!/bin/sh
# packaging/build.sh: build the Custos .deb with nfpm (make package; ADR 0088).
#   OUT=DIR           where the .deb goes (default build/package)
#   PKG_VERSION=V     Debian version (default 0.0.0+git<commit>)
#   GO=go             the go command
# It stages the binaries (built with -trimpath and VCS stamping: agentctl version names the commit), the
# example configuration written by `agentctl config init` for exactly these plugins, the man page and the
# bash completion, then runs nfpm (a Go module, fetched through the module proxy at NFPM_VERSION).
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
NFPM_VERSION=${NFPM_VERSION:-v2.48.0}
OUT=${OUT:-build/package}
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
PKG_VERSION=${PKG_VERSION:-0.0.0+git$commit}
PKG_ARCH=${PKG_ARCH:-$($GO env GOARCH)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/custos-pkg.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT INT TERM

# -s -w: no symbol table or DWARF (a third of the size); the build information agentctl version prints stays.
# -buildvcs=auto: stamp the commit when this is a git checkout (the environment may say -buildvcs=false).
GOFLAGS= $GO build -trimpath -buildvcs=auto -ldflags="-s -w" -o "$STAGE/bin/" \
	./cmd/agentctl ./cmd/custosd ./cmd/transport-tcp ./cmd/transport-ws ./cmd/transport-libp2p
chmod 0755 "$STAGE"/bin/*
# The one checksum filler: agentctl config init, reading the staged plugins, naming their installed paths.
"$STAGE/bin/agentctl" config init --no-identity --plugin-dir "$STAGE/bin" --install-dir /usr/lib/custos \
	--out "$STAGE/agent.example.yaml" 2>/dev/null
"$STAGE/bin/agentctl" completion bash >"$STAGE/agentctl.bash"
gzip -9n <docs/agentctl.1 >"$STAGE/agentctl.1.gz"

export STAGE PKG_VERSION PKG_ARCH
GOFLAGS= $GO run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" package \
	--config packaging/nfpm.yaml --packager deb --target "$OUT/" >&2
ls "$OUT"/custos_*"$PKG_VERSION"*.deb 2>/dev/null | head -1 || ls -t "$OUT"/*.deb | head -1
