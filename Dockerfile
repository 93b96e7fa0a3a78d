# dds-gateway container image: a release build in a Rust image, run from a small Debian image as
# a non-root user. No credentials are baked in: pass them at run time (environment, mounted
# files, or the instance's RAM role).
#
#   docker build -t dds-gateway .
#   docker run --rm -p 50051:50051 -e ALIBABA_CLOUD_ACCESS_KEY_ID -e ALIBABA_CLOUD_ACCESS_KEY_SECRET \
#     -v "$PWD/gateway.toml:/etc/dds-gateway/gateway.toml:ro" \
#     dds-gateway serve --config /etc/dds-gateway/gateway.toml --listen 0.0.0.0:50051
#
# Without [[callers]] the gateway refuses a non-loopback listener, so a container serving other
# hosts needs a config file that names its callers.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Build the dependencies first, so source changes do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/signer.rs \
    && echo 'fn main() {}' > examples/sign.rs \
    && cargo build --release --locked --bin dds-gateway \
    && rm -rf src benches examples
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin dds-gateway \
    && strip target/release/dds-gateway

FROM debian:bookworm-slim
# CA certificates for HTTPS to Alibaba Cloud; nothing else is needed (rustls, no OpenSSL).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/dds-gateway /usr/local/bin/dds-gateway
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/dds-gateway"]
CMD ["serve"]
