# Multi-stage build: compile in the Rust image, run in a small Debian image
# as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
RUN cargo build --release --locked --bin statusd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/statusd --create-home statusd
COPY --from=build /src/target/release/statusd /usr/local/bin/statusd
COPY config /etc/statusd
USER statusd
WORKDIR /var/lib/statusd
ENV STATUSD_ENV=production
EXPOSE 8088
ENTRYPOINT ["/usr/local/bin/statusd", "--config-dir", "/etc/statusd"]
CMD ["run"]
