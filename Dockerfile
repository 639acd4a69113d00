# syntax=docker/dockerfile:1
#
# One image with the services: `ingress` (the default command), `worker` and
# `admin`.
#   docker build -t clerk-events .
#   docker run --rm clerk-events worker --help

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The caches keep downloaded crates and compiled dependencies between builds;
# the binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ingress -p worker -p admin \
    && mkdir -p /out \
    && cp target/release/ingress target/release/worker target/release/admin /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
COPY --from=builder /out/ingress /out/worker /out/admin /usr/local/bin/
USER app:app
ENV INGRESS_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
# 8080: ingress webhook listener; 9091: ingress readiness and metrics (set
# INGRESS_OPS_ADDR=0.0.0.0:9091); 9090: worker health and metrics (set
# WORKER_OPS_ADDR=0.0.0.0:9090). Publish only 8080 to the internet.
EXPOSE 8080 9090 9091
CMD ["ingress"]
