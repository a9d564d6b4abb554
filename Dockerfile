# Multi-stage build: compile in the Rust image, run in a small Debian image
# as a non-root user. Base images are pinned to exact versions (add
# `@sha256:…` digests where your registry access allows: `docker buildx
# imagetools inspect rust:1.95.0-slim-bookworm`). The Rust version must be at
# least Cargo.toml's rust-version (1.89).
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin statusd

FROM debian:12.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/statusd --create-home statusd
COPY --from=build /src/target/release/statusd /usr/local/bin/statusd
COPY config /etc/statusd
USER statusd
WORKDIR /var/lib/statusd
ENV STATUSD_ENV=production \
    STATUSD_CONFIG_DIR=/etc/statusd
EXPOSE 8088
# Secrets are best given as files (Docker secrets), never baked in:
#   STATUSD__DATABASE__URL_FILE=/run/secrets/statusd_database_url
#   STATUSD__ADMIN__TOKEN_FILE=/run/secrets/statusd_admin_token
#   STATUSD__INSTANCES__MAIN__ACCESS_TOKEN_FILE=/run/secrets/wawp_access_token
# The image has no curl: `statusd health` asks /healthz at admin.bind (an
# address bound to 0.0.0.0 is asked on 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/statusd", "health"]
ENTRYPOINT ["/usr/local/bin/statusd"]
CMD ["run"]
