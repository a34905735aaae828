#!/usr/bin/env bash
# Regenerates the Go code of the transport plugin protocol (transports/proto/transport.proto).
# Installs what is missing: protoc (Debian package protobuf-compiler) and the pinned Go plugins
# protoc-gen-go and protoc-gen-go-grpc (go install into $(go env GOPATH)/bin).
# Usage: test/proto.sh          (run from anywhere; `make proto` calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

# Pinned so the generated code is reproducible; protoc-gen-go matches google.golang.org/protobuf in go.mod.
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

gobin="$($GO env GOBIN)"
[ -n "$gobin" ] || gobin="$($GO env GOPATH)/bin"
export PATH="$gobin:$PATH"

if ! command -v protoc >/dev/null 2>&1; then
  echo "proto.sh: installing protoc (protobuf-compiler)"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "proto.sh: protoc is missing and I cannot install it (not root, no passwordless sudo): apt-get install protobuf-compiler" >&2
      exit 1
    fi
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler >/tmp/custos-proto-apt.log 2>&1 ||
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler; } >>/tmp/custos-proto-apt.log 2>&1 ||
    { echo "proto.sh: apt-get install protobuf-compiler failed; see /tmp/custos-proto-apt.log" >&2; exit 1; }
fi

want_version() { # tool version: exit 0 when the installed tool reports the version
  "$1" --version 2>/dev/null | grep -q -- "${2#v}"
}
if ! want_version protoc-gen-go "$PROTOC_GEN_GO_VERSION"; then
  echo "proto.sh: installing protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  $GO install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if ! want_version protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"; then
  echo "proto.sh: installing protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  $GO install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

protoc --proto_path=transports/proto \
  --go_out=transports/proto --go_opt=paths=source_relative \
  --go-grpc_out=transports/proto --go-grpc_opt=paths=source_relative \
  transports/proto/transport.proto
echo "proto.sh: regenerated transports/proto/transport.pb.go and transport_grpc.pb.go ($(protoc --version))"
