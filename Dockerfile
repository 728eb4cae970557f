# syntax=docker/dockerfile:1
#
# keygate container image: build with the Rust toolchain, run on distroless.
#
#   docker build -t keygate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 8082:8082 -e KEYGATE_ADMIN_TOKEN=... keygate:0.1.0
#
# The `syntax` line above enables BuildKit features (cache mounts) on any recent Docker.

# --- build stage ------------------------------------------------------------------------
# Pinned to a Rust version (the one the project is developed and tested with) and to
# Debian bookworm, the same Debian release the runtime image is built from: the binary is
# linked against bookworm's glibc, so it runs on a runtime that has that glibc or newer.
FROM rust:1.95-bookworm AS builder

WORKDIR /src

# What the profile-guided build trains with (scripts/build-pgo): wrk sends requests to an
# instrumented keygate in front of `keygate echo`, with the embedded store and with Redis;
# python3 creates the training keys through the admin API. Build stage only: none of it
# reaches the runtime image. Versions are bookworm's, like the base image's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wrk redis-server python3 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup component add llvm-tools

# The whole source tree (see .dockerignore): Cargo reads every target declared in
# Cargo.toml (benches included) even for a plain `cargo build`.
COPY . .

# scripts/build-pgo: an instrumented build, a minute of training traffic on the build
# container's loopback, then the release build optimized with that profile (about 15%
# less CPU per proxied request than a plain `cargo build --release`; BENCHMARKS.md). Both
# builds use --locked: exactly the dependency versions in Cargo.lock. The cache mounts
# keep the crate registry and the target dirs between builds, so a source change does
# not re-download or rebuild every dependency; because a cache mount is not part of the
# image, the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-pgo \
    && install -D -m 0755 target/pgo/keygate /out/keygate

# The working directory of the runtime image, where the embedded store keeps its file
# (store.embedded.path defaults to data/keygate.db, relative to the working directory).
# Created here because the runtime image has no shell to run mkdir with; owned by the
# distroless `nonroot` user (uid/gid 65532).
RUN mkdir -p /out/var/lib/keygate/data

# --- runtime stage ----------------------------------------------------------------------
# distroless/cc: glibc, libgcc_s and CA certificates, nothing else — no shell, no package
# manager, so there is little to patch and little for an intruder to use. `cc` rather than
# `static` because the binary links glibc dynamically (ldd: libc, libm, libgcc_s); TLS is
# rustls, so no OpenSSL is needed. The `:nonroot` tag defaults to uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=builder /out/keygate /usr/local/bin/keygate
COPY --from=builder --chown=65532:65532 /out/var/lib/keygate /var/lib/keygate
# A default config (every option at its default) so the image starts on its own; in
# Kubernetes a ConfigMap is mounted over /etc/keygate (deploy/kubernetes/).
COPY config/keygate.yaml /etc/keygate/keygate.yaml

# Relative paths in the config (the embedded store's data/keygate.db) resolve here. Mount
# a volume on /var/lib/keygate/data to keep an embedded store across restarts; with the
# Redis store nothing is written, and the root filesystem can be mounted read-only.
WORKDIR /var/lib/keygate

# Explicit, although the :nonroot tag already sets it: the image must never run as root,
# and Kubernetes' runAsNonRoot check needs a numeric user to verify that.
USER 65532:65532

# proxy, admin (bound to 127.0.0.1 by default: reach it with `kubectl port-forward`), status.
EXPOSE 8080 8081 8082

# Exec form: keygate is PID 1 and receives SIGTERM directly, so the drain on shutdown
# (shutdown.delay, then shutdown.grace) runs. No shell wrapper would forward it.
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve", "--config", "/etc/keygate/keygate.yaml"]
