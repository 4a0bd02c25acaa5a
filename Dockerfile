# syntax=docker/dockerfile:1
# flowlog agent image, x86-64 and arm64 (Graviton): the binaries of the .deb
# and .rpm packages, built by
#
#   cargo xtask package     # target/packages/{x86_64,aarch64}/flowlog-agent (glibc >= 2.28)
#   docker build -t flowlog:dev .                                    # this machine's architecture
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO/flowlog:TAG --push .
#   docker run --rm --network host \
#     --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON \
#     -v /sys/fs/bpf:/sys/fs/bpf -v /etc/machine-id:/etc/machine-id:ro flowlog:dev
#
# The image holds the same binary as the packages (tested by
# flowlog-agent/tests/package.rs); it needs glibc 2.28 or later, which any
# glibc base image has. See README "Building" and "Install on arm64".

ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12
# Set by the builder (BuildKit, buildah) for each platform built: amd64 or
# arm64. The stage of that platform gives the binary; nothing runs in
# them, so no emulation is needed to build the other architecture's image.
ARG TARGETARCH
FROM scratch AS agent-amd64
COPY target/packages/x86_64/flowlog-agent /flowlog-agent
FROM scratch AS agent-arm64
COPY target/packages/aarch64/flowlog-agent /flowlog-agent
FROM agent-${TARGETARCH} AS agent

FROM ${RUNTIME_IMAGE}
COPY --from=agent /flowlog-agent /usr/local/bin/flowlog-agent
# Defaults only (every key at its default, as the packages install it);
# Kubernetes mounts its ConfigMap over /etc/flowlog. Check a config:
# `docker run --rm IMAGE check-config`.
COPY flowlog.example.toml /etc/flowlog/flowlog.toml
ENV FLOWLOG_CONFIG=/etc/flowlog/flowlog.toml
# uid 0 with only the capabilities the runtime grants (BPF, NET_ADMIN,
# PERFMON): the kernel checks capabilities, not the uid.
USER 0:0
# Prometheus /metrics, /healthz, /readyz (metrics-listen; loopback unless
# configured, e.g. "0.0.0.0:9750" with host networking).
EXPOSE 9750/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/flowlog-agent"]
