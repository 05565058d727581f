# One image with the three functions (watcher, backup, rollout) and crdgen.
#   docker build -t registry.local/image-backup:0.1.0 .
# The deploy/ manifests pick the binary with `command`.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p image-backup-watcher -p image-backup-backup -p image-backup-rollout -p crdgen

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/watcher /src/target/release/backup /src/target/release/rollout /src/target/release/crdgen /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/watcher"]
