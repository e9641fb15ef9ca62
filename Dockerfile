# syntax=docker/dockerfile:1
# The winflow operator image: built on Debian bookworm, run on distroless (glibc and CA
# certificates only: no shell, no package manager) as the nonroot user.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://<where the repository lives> -t winflow:0.1.0 .
#
# tests/image.rs lints this file with hadolint (hack/hadolint.sh); it is not built in CI.

# The toolchain the project is tested with; bookworm's glibc matches the runtime image's.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ only because Cargo.toml declares a [[bench]] target, test-support/ because it is
# a member of the workspace (the tests' and benches' shared crate); crds/ holds a file that
# src/ embeds with include_str!.
COPY benches ./benches
COPY test-support ./test-support
COPY crds ./crds
COPY src ./src
# Dependencies are cached in BuildKit cache mounts (the registry and target/) rather than in
# a layer built from a dummy main: the crate is a library plus a binary with a declared bench,
# so a dummy would have to fake all three, and a cached target/ also keeps the dependencies'
# compiled artifacts across source changes. A cache mount is not part of the image, so the
# binary is copied out in the same step. --locked: exactly the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin winflow \
    && cp target/release/winflow /usr/local/bin/winflow

# cc: glibc and libgcc for the dynamically linked binary; TLS is rustls, so no OpenSSL.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/winflow /winflow
# The distroless nonroot user, by number so that runAsNonRoot can verify it.
USER 65532:65532
ENV WINFLOW_LOG_FORMAT=json
# 8080: admin server (/metrics, /livez, /readyz); 9443: admission webhook (HTTPS).
EXPOSE 8080 9443
ENTRYPOINT ["/winflow"]
CMD ["run"]

ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="winflow" \
      org.opencontainers.image.description="Kubernetes operator for running Apache Airflow work on Windows nodes with least-privileged Active Directory identities (gMSA)" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
