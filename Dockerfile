# One build for the three chatsys images; pick one with --target:
#   docker build --target api      --build-arg VERSION=0.1.0 -t chatsys/chatsys-api:0.1.0 .
#   docker build --target worker   --build-arg VERSION=0.1.0 -t chatsys/chatsys-worker:0.1.0 .
#   docker build --target operator --build-arg VERSION=0.1.0 -t chatsys/chatsys-operator:0.1.0 .
# The three targets share every build stage, so building the second and third costs only their
# runtime layer. Dependencies are compiled in a layer of their own (cargo-chef), rebuilt only when a
# Cargo.toml or Cargo.lock changes, not when the sources do.

ARG RUST_VERSION=1.95
# The runtime's glibc must be at least the builder's: both are Debian 12 (bookworm).
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The recipe lists the workspace's manifests and lock file only, so it changes when they do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VERSION=0.1.0
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
      -p chatsys-api -p chatsys-worker -p chatsys-operator
COPY . .
# The binaries take their version from the workspace; refuse an image tag that would say otherwise.
RUN workspace_version=$(cargo pkgid -p chatsys-api | sed 's/.*[@#]//') \
    && if [ "$workspace_version" != "$VERSION" ]; then \
         echo "VERSION=$VERSION but the workspace version is $workspace_version" >&2; exit 1; \
       fi
RUN cargo build --release --locked -p chatsys-api -p chatsys-worker -p chatsys-operator \
    && mkdir -p /out/bin /out/data \
    && cp target/release/chatsys-api target/release/chatsys-worker target/release/chatsys-operator /out/bin/

# Distroless "nonroot": no shell, no package manager, user and group 65532, CA certificates for TLS.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.vendor="chatsys" \
      org.opencontainers.image.licenses="Apache-2.0"
# The default data directory (./chatsys-data) resolves here, owned by the runtime user.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/chatsys
WORKDIR /var/lib/chatsys
USER 65532:65532

FROM runtime AS api
LABEL org.opencontainers.image.title="chatsys-api" \
      org.opencontainers.image.description="chatsys HTTP API (serve, migrate, standalone, openapi)"
COPY --from=builder /out/bin/chatsys-api /usr/local/bin/chatsys-api
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chatsys-api"]

FROM runtime AS worker
LABEL org.opencontainers.image.title="chatsys-worker" \
      org.opencontainers.image.description="chatsys queue consumer: writes to MySQL and the search index"
COPY --from=builder /out/bin/chatsys-worker /usr/local/bin/chatsys-worker
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/chatsys-worker"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="chatsys-operator" \
      org.opencontainers.image.description="chatsys Kubernetes operator: reconciles ChatSystem resources"
COPY --from=builder /out/bin/chatsys-operator /usr/local/bin/chatsys-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chatsys-operator"]
