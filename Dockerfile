# syntax=docker/dockerfile:1
# The Custos agent as a container image (ADR 0088): a build stage compiles the same binaries as the Debian
# package (make package), a Debian slim stage runs them as a non-root user. The README ("In a container")
# says how to give it /dev/tpmrm0 or a PKCS#11 module, and what the plugin sandbox needs.
#
#   docker build -t custos .
#   docker run --rm -v custos-home:/var/lib/custos custos init --software     # once (or --tpm, --pkcs11)
#   docker run -d --name custos -p 7400:7400 -v custos-home:/var/lib/custos \
#     -v "$PWD/agent.yaml:/etc/custos/agent.yaml:ro" --stop-timeout 40 custos
ARG GO_VERSION=1.26
ARG DEBIAN=bookworm

FROM golang:${GO_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# cgo stays on: PKCS#11 modules are loaded with dlopen. The example configuration is written by agentctl
# config init for exactly these plugins (their digests, their paths in the image), listening on all of the
# container's addresses; authorization.admins is empty until the operator lists an agent ID.
RUN go build -trimpath -ldflags="-s -w" -o /out/bin/ \
        ./cmd/agentctl ./cmd/custosd ./cmd/transport-tcp ./cmd/transport-ws ./cmd/transport-libp2p \
    && /out/bin/agentctl config init --no-identity --plugin-dir /out/bin --install-dir /usr/lib/custos \
        --listen 0.0.0.0:7400 --out /out/agent.yaml

FROM debian:${DEBIAN}-slim
# tini reaps what exec handlers leave behind (the daemon is not an init) and passes SIGTERM on to the
# daemon alone, which drains. Versions come from the Debian release the image is built from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# uid/gid 10001: not root, and not an account of the host's. The home is 0700 and the only writable path
# the daemon needs; /etc/custos is readable by the group only.
RUN groupadd --system --gid 10001 custos \
    && useradd --system --uid 10001 --gid custos --home-dir /var/lib/custos --shell /usr/sbin/nologin custos \
    && install -d -m 0700 -o custos -g custos /var/lib/custos \
    && install -d -m 0750 -o root -g custos /etc/custos
# Root-owned and not writable by others: the daemon refuses a plugin file anyone else could replace.
COPY --from=build /out/bin/agentctl /out/bin/custosd /usr/bin/
COPY --from=build /out/bin/transport-tcp /out/bin/transport-ws /out/bin/transport-libp2p /usr/lib/custos/
COPY --from=build --chown=root:custos --chmod=0640 /out/agent.yaml /etc/custos/agent.yaml
COPY configs/roles.yaml /usr/share/custos/roles.yaml
USER 10001:10001
ENV CUSTOS_HOME=/var/lib/custos
VOLUME ["/var/lib/custos"]
EXPOSE 7400
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s CMD ["/usr/bin/agentctl", "status"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/agentctl"]
CMD ["run", "--config", "/etc/custos/agent.yaml"]
