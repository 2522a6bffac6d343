# The pgswarm image: Debian trixie with Debian's PostgreSQL 17, Patroni, etcd, HAProxy and
# PgBouncer, Debian's Prometheus exporters for PostgreSQL and PgBouncer, pgBackRest (backups and
# WAL archiving), plus `pgswarm-sidecar` (the entrypoint of every service of a pgswarm stack) and
# `swarmctl`.
#
# Build: the two binaries are built with cargo first, on a system whose glibc is not newer
# than trixie's 2.41 (Debian bookworm, glibc 2.36, is fine), then copied from target/release
# (.dockerignore lets only these two files of target/ into the build context):
#   cargo build --release -p swarmctl -p pgswarm-sidecar
#   DOCKER_BUILDKIT=0 docker build -t pgswarm:dev .
# scripts/build-image.sh does both, and first builds the base image from Debian packages when
# no registry can provide debian:trixie-slim. (Building the binaries inside the image with
# Debian trixie's Rust is not offered: trixie ships rustc 1.85, and the locked dependencies
# need a newer one.)
#
# Build arguments:
#   BASE_IMAGE        base image (default debian:trixie-slim)
#   CITUS_VERSION     e.g. `13.2` (major.minor): adds the Citus extension, package
#                     postgresql-17-citus-13.2, from the Citus project's Debian repository
#                     (https://repos.citusdata.com/community/debian/). Empty by default: the
#                     default build uses Debian's archive only.
#   CITUS_DIST        the suites of the Citus repository to try, in order (default
#                     "trixie bookworm": the repository serves trixie only from Citus 14 on;
#                     13.x for PostgreSQL 17 comes from bookworm, whose package installs on trixie)

ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
ARG CITUS_VERSION=
ARG CITUS_DIST="trixie bookworm"

# Packaged services must not start during the build; python3-etcd is listed explicitly
# because without Recommends Debian's patroni would otherwise pull python3-consul only and
# could not use etcd.
RUN set -eu; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
    chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        postgresql-17 \
        postgresql-contrib \
        patroni \
        python3-etcd \
        python3-psycopg2 \
        etcd-server \
        haproxy \
        pgbouncer \
        prometheus-postgres-exporter \
        prometheus-pgbouncer-exporter \
        pgbackrest; \
    if [ -n "$CITUS_VERSION" ]; then \
        if ! echo "$CITUS_VERSION" | grep -Eq '^[0-9]+[.][0-9]+$'; then \
            echo "CITUS_VERSION must be a Citus major.minor such as 13.2 (the package is" \
                 "postgresql-17-citus-<major.minor>), got '$CITUS_VERSION'" >&2; \
            exit 1; \
        fi; \
        citus_pkg="postgresql-17-citus-$CITUS_VERSION"; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl gnupg; \
        curl -fsSL https://repos.citusdata.com/community/gpgkey \
            | gpg --dearmor -o /usr/share/keyrings/citusdata-community.gpg; \
        citus_suite=; \
        for dist in $CITUS_DIST; do \
            echo "deb [signed-by=/usr/share/keyrings/citusdata-community.gpg] https://repos.citusdata.com/community/debian/ $dist main" \
                > /etc/apt/sources.list.d/citusdata-community.list; \
            if apt-get update && apt-cache show "$citus_pkg" >/dev/null 2>&1; then \
                citus_suite="$dist"; \
                break; \
            fi; \
            echo "$citus_pkg is not in the Citus repository's $dist suite; trying the next" >&2; \
        done; \
        if [ -z "$citus_suite" ]; then \
            echo "$citus_pkg is in none of the Citus repository's suites ($CITUS_DIST): check" \
                 "CITUS_VERSION against the Citus releases, or name another suite in CITUS_DIST" >&2; \
            exit 1; \
        fi; \
        echo "installing $citus_pkg from the Citus repository's $citus_suite suite"; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$citus_pkg"; \
        ls /usr/share/postgresql/17/extension/citus.control; \
        apt-get purge -y --auto-remove curl gnupg; \
    fi; \
    rm -f /usr/sbin/policy-rc.d; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*; \
    install -d -o postgres -g postgres -m 0700 /var/lib/pgswarm; \
    install -d -o postgres -g postgres -m 0700 /run/pgswarm; \
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql

COPY target/release/swarmctl target/release/pgswarm-sidecar /usr/local/bin/

# Each member's named volume is mounted at /var/lib/pgswarm: a fresh named volume takes the
# ownership of the image's directory, so PostgreSQL and etcd can write to it as postgres.
# (No VOLUME instruction: services without data, such as the router, get no anonymous volume.)
USER postgres
WORKDIR /var/lib/pgswarm
ENV PATH=/usr/lib/postgresql/17/bin:$PATH

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["pgswarm-sidecar", "health"]
ENTRYPOINT ["pgswarm-sidecar"]
CMD ["run"]
