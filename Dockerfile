# syntax=docker/dockerfile:1
# flowlog agent image.
#
#   docker build -t flowlog:dev .
#   docker run --rm --network host \
#     --cap-drop ALL --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON \
#     -v /sys/fs/bpf:/sys/fs/bpf -v /etc/machine-id:/etc/machine-id:ro flowlog:dev
#
# The eBPF programs are built by flowlog-agent/build.rs with Debian's
# rustc-web/rust-web-src (RUSTC_BOOTSTRAP=1) and bpf-linker 0.13 linked
# against Debian's LLVM 22; the host crates with rustup's stable toolchain of
# the base image. See README "Building".

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12

FROM ${RUST_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      rustc-web cargo-web rust-web-src llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
# bpf-linker against LLVM 22, the LLVM of rustc-web: llvm-config of 22 first on PATH.
RUN PATH="/usr/lib/llvm-22/bin:$PATH" \
    cargo install --locked bpf-linker@0.13.0 --no-default-features --features llvm-22
# Never try rustup's nightly (it is not in the image, and must not be downloaded).
ENV FLOWLOG_EBPF_TOOLCHAIN=debian
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flowlog-agent \
 && install -D -m 0755 target/release/flowlog-agent /out/flowlog-agent

FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/flowlog-agent /usr/local/bin/flowlog-agent
# Defaults only (every key at its default); Kubernetes mounts its ConfigMap
# over /etc/flowlog. Check a config: `docker run --rm IMAGE check-config`.
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
