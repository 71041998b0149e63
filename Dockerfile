# The gateway image: a release build in the Rust image, the binary alone on distroless.
#   docker build -t inference-gateway:0.1.0 .
# Pingora's build needs cmake (zlib-ng); the runtime needs only glibc, libgcc and CA roots.

FROM rust:1.92-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p inference-gateway --bin inference-gateway \
 && cp target/release/inference-gateway /inference-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /inference-gateway /inference-gateway
# The admin listener (probes, metrics) and the seed's listener ports; the Gateway objects decide
# which listener ports are actually bound.
EXPOSE 8080 8081 9090
USER 65532:65532
ENTRYPOINT ["/inference-gateway"]
