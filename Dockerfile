# kakoi packaged as a container running the HTTP manager (`kakoi serve`).
#
#   stage 1 (build):   compiles kakoi in release (cargo build --release --locked), or, with
#                      --build-arg KAKOI_PREBUILT=PATH, copies a binary built elsewhere (a path
#                      inside the build context) instead of compiling
#   stage 2 (runtime): python3.11, CA certificates (environments download from PyPI), the
#                      kakoi binary, an unprivileged user `kakoi` (uid 10000); runs kakoi serve
#
# No registry is needed: both bases are build arguments. The defaults name public images for
# users elsewhere; on a machine without a registry, build the bases locally, e.g.
#
#   base=$(kakoi docker base-image)          # Debian bookworm + python3, debootstrapped
#   cargo build --release --locked
#   docker build --network host --build-arg BUILDER_IMAGE=$base --build-arg RUNTIME_IMAGE=$base \
#       --build-arg KAKOI_PREBUILT=target/release/kakoi -t kakoi:latest .
#
# (any BUILDER_IMAGE with sh does for KAKOI_PREBUILT; to compile in stage 1 it needs cargo,
# rustc >= 1.85 and a C compiler, like rust:1.95-bookworm). `--network host` lets cargo reach
# crates.io and apt reach the Debian mirror when the engine has no bridge.
#
# The container needs a few privileges to build its own sandboxes; docker-compose.yml has
# them, and README.md ("Packaging (Docker)") says why each is needed.

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
# Marks the build stage's image, which the classic builder keeps (untagged) after the build:
# `docker image prune --filter label=org.kakoi.stage=build` removes it.
LABEL org.kakoi.stage=build
ARG KAKOI_PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$KAKOI_PREBUILT" ]; then \
        install -m 0755 "$KAKOI_PREBUILT" /kakoi; \
    else \
        cargo build --release --locked --bin kakoi; \
        install -m 0755 target/release/kakoi /kakoi; \
    fi; \
    /kakoi --version

FROM ${RUNTIME_IMAGE} AS runtime
# python3 is python3.11 on bookworm: the toolchain kakoi's sandboxes and environments use.
# ca-certificates: uv and kakoi's bootstrap download from PyPI over TLS. util-linux: the
# `unshare` probe of `kakoi doctor`. Installed only when the base lacks them.
RUN set -eu; \
    missing=; \
    command -v python3.11 >/dev/null || missing="$missing python3"; \
    [ -e /etc/ssl/certs/ca-certificates.crt ] || missing="$missing ca-certificates"; \
    command -v unshare >/dev/null || missing="$missing util-linux"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10000 kakoi; \
    useradd --uid 10000 --gid 10000 --home-dir /var/lib/kakoi --no-create-home \
        --shell /usr/sbin/nologin kakoi; \
    mkdir -p /var/lib/kakoi; \
    chown kakoi:kakoi /var/lib/kakoi
COPY --from=build /kakoi /usr/local/bin/kakoi
# The runner is not root: it needs no capability at all (a user namespace maps the sandbox's
# uid 1000 to 10000), and a root runner would be able to write the host's sysctls once
# /proc is unmasked (see README).
USER 10000:10000
ENV KAKOI_DATA_DIR=/var/lib/kakoi \
    KAKOI_LISTEN=0.0.0.0:8080 \
    HOME=/var/lib/kakoi
WORKDIR /var/lib/kakoi
VOLUME /var/lib/kakoi
EXPOSE 8080
CMD ["kakoi", "serve"]
