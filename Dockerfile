# keepalive-lab's two images from source: `--target server` (the origin) and `--target proxy`.
# docker-compose.yml builds both; this file needs a registry for rust and debian images. Without
# one, scripts/build-images-offline builds the same runtime stages from binaries built on the host:
# it takes everything below the `runtime` marker, so keep the build output in /src/target/release.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keepalive-server -p keepalive-proxy

# --- runtime: shared with scripts/build-images-offline from here on ---
FROM debian:bookworm-slim AS runtime
# A fixed numeric id, so that orchestrators can check runAsNonRoot without reading /etc/passwd.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin keepalive \
    && install -d -o 10001 -g 10001 /var/lib/keepalive
USER 10001:10001

FROM runtime AS server
COPY --from=build /src/target/release/keepalive-server /usr/local/bin/keepalive-server
# Durable jobs live in an SQLite database here; a volume keeps them across container restarts.
ENV SERVER_ADDR=0.0.0.0:8000 SERVER_DATA_DIR=/var/lib/keepalive
VOLUME /var/lib/keepalive
EXPOSE 8000
# The binary asks its own SERVER_ADDR for /healthz: slim images carry no curl.
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 CMD ["keepalive-server", "--healthcheck"]
ENTRYPOINT ["keepalive-server"]

FROM runtime AS proxy
COPY --from=build /src/target/release/keepalive-proxy /usr/local/bin/keepalive-proxy
# The admin listener must leave the container's loopback to be published.
ENV PROXY_ADDR=0.0.0.0:8080 PROXY_ADMIN_ADDR=0.0.0.0:9090
EXPOSE 8080 9090
HEALTHCHECK --interval=5s --timeout=4s --start-period=5s --retries=3 CMD ["keepalive-proxy", "--healthcheck"]
ENTRYPOINT ["keepalive-proxy"]
