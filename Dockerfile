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
# scripts/image-test builds this file for real and runs the image's binary.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Build the dependencies first, so that source changes do not rebuild them. Cargo reads every
# target the manifest declares (the [[bench]], the examples) even when building one binary, so
# the real bench and example files come along; only src/ is a stub in this step.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY benches benches
COPY examples examples
RUN --mount=type=secret,id=cargo_ca \
    if [ -s /run/secrets/cargo_ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/cargo_ca; fi \
    && mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin dds-gateway \
    && rm -rf src
COPY src src
# COPY keeps the files' times, which may be older than the stub build: touch them so Cargo
# rebuilds the crate. Everything is in Cargo.lock and fetched already: no network from here on.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --offline --bin dds-gateway \
    && strip target/release/dds-gateway

FROM debian:bookworm-slim
# CA certificates for HTTPS to Alibaba Cloud (rustls reads the system store; no OpenSSL), taken
# from the build image so that this stage needs no package download.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/dds-gateway /usr/local/bin/dds-gateway
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/dds-gateway"]
CMD ["serve"]
