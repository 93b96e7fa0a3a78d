# syntax=docker/dockerfile:1
# dds-gateway container image: a release build in a Rust image, run from a small Debian image as
# a non-root user (uid 10001). No credentials are baked in: pass them at run time (environment,
# mounted files, or the pod's RAM role through RRSA; see the README's "Deploying").
#
#   docker build -t dds-gateway .
#   docker run --rm -p 50051:50051 -e ALIBABA_CLOUD_ACCESS_KEY_ID -e ALIBABA_CLOUD_ACCESS_KEY_SECRET \
#     -v "$PWD/gateway.toml:/etc/dds-gateway/gateway.toml:ro" \
#     dds-gateway serve --config /etc/dds-gateway/gateway.toml --listen 0.0.0.0:50051
#
# Without [[callers]] the gateway refuses a non-loopback listener, so a container serving other
# hosts needs a config file that names its callers.
#
# Behind a TLS-intercepting proxy, hand Cargo the proxy's CA bundle as a build secret; it is only
# mounted while the build runs and never lands in a layer:
#   docker build --secret id=cargo_ca,src=/etc/ssl/certs/ca-certificates.crt -t dds-gateway .
#
# OCI labels (org.opencontainers.image.*) come from build arguments:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://github.com/<owner>/dds-gateway -t dds-gateway .
#
# Cargo's registry and target directory are BuildKit cache mounts (`RUN --mount=type=cache`):
# they survive between builds, so a source change recompiles only the crate, and a Cargo.lock
# change only the dependencies that changed. They never land in a layer.
#
# Base images are named by tag here. Pin them by digest where your build reaches a registry, so
# that a rebuild takes exactly the same bases (and a changed base is a reviewed change):
#   docker buildx imagetools inspect rust:1.95-slim-bookworm   # prints "Digest: sha256:..."
#   FROM rust:1.95-slim-bookworm@sha256:<digest> AS build
#   FROM debian:bookworm-slim@sha256:<digest>
# (or `crane digest`, `skopeo inspect`); a bot such as Renovate can keep the digests current.
# They are not pinned in this repository because no registry is reachable where it is built
# and tested: scripts/image-test bootstraps both bases locally, and they have no registry digest.
#
# scripts/image-test builds this file for real and runs the image's binary.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY benches benches
COPY examples examples
COPY src src
# The registry and target directory are cache mounts, so the binary is copied out of target/
# within the same step. --locked: exactly the versions in Cargo.lock.
RUN --mount=type=secret,id=cargo_ca \
    --mount=type=cache,id=dds-gateway-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=dds-gateway-target,target=/src/target,sharing=locked \
    if [ -s /run/secrets/cargo_ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/cargo_ca; fi \
    && cargo build --release --locked --bin dds-gateway \
    && install -D -m 0755 -s target/release/dds-gateway /out/dds-gateway

FROM debian:bookworm-slim
# CA certificates for HTTPS to Alibaba Cloud (rustls reads the system store; no OpenSSL), taken
# from the build image so that this stage needs no package download.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /out/dds-gateway /usr/local/bin/dds-gateway
# Last, so that a new revision changes only this layer's metadata.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="dds-gateway" \
      org.opencontainers.image.description="gRPC gateway that upgrades ApsaraDB for MongoDB engine versions through signed Alibaba Cloud API calls" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/dds-gateway"]
CMD ["serve"]
