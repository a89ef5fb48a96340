# keepalive-lab's images from source: `--target server` (the origin), `--target proxy`, and
# `--target postgres` (a database for the origins' jobs). docker-compose.yml builds them; this file
# needs a registry for rust and debian images. Without one, scripts/build-images-offline builds the
# same runtime stages from binaries built on the host: it takes everything below the `runtime`
# marker, so keep the build output in /src/target/release, and copy nothing else from a stage.

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

# PostgreSQL for the origins' jobs when SERVER_DATABASE_URL names it (compose's `postgres` profile):
# Debian's own postgresql-15 on the same base rather than the postgres image, so that it needs no
# image the others do not (and none at all where scripts/build-images-offline made the base). Its
# apt-get runs in the build container, which needs a Debian mirror, as debootstrap does, and no
# registry: that is what keeps this one stage good for both builds.
FROM debian:bookworm-slim AS postgres
# The postgres user made first, with a fixed numeric id as above (the package keeps an existing
# one), and no cluster at install: the entrypoint makes it in the volume, on first start.
RUN groupadd --system --gid 10002 postgres \
    && useradd --system --uid 10002 --gid postgres --home-dir /var/lib/postgresql --no-create-home \
        --shell /usr/sbin/nologin postgres \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
    && sed -i 's/^#* *create_main_cluster .*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o 10002 -g 10002 -m 0700 /var/lib/postgresql/data \
    && install -d -o 10002 -g 10002 -m 2775 /run/postgresql
COPY docker/postgres-entrypoint /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER 10002:10002
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGTERM is postgres's smart shutdown, which waits for every client to leave: the origins' pooled
# connections never do, and Docker would SIGKILL it. SIGINT is the fast one: sessions are ended,
# a checkpoint is written, it exits.
STOPSIGNAL SIGINT
# pg_isready over TCP: the listener the origins use, not only the socket.
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=3 \
    CMD ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "keepalive", "-d", "keepalive"]
ENTRYPOINT ["postgres-entrypoint"]
