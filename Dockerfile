# A small static image: the gateway built for musl, on an empty base.
#   docker build -t portcullis:0.1.0 .
#   docker run --rm -p 8080:8080 portcullis:0.1.0 demo --port 8080   # (the demo listens on 127.0.0.1 only)
#   docker run --rm -p 8080:8080 -v "$PWD/examples:/etc/portcullis:ro" portcullis:0.1.0 run -c /etc/portcullis/basic.yaml
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY link ./link
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
    && strip target/x86_64-unknown-linux-musl/release/portcullis

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/portcullis /portcullis
# No shell, no package manager; not root.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/portcullis"]
CMD ["run", "-c", "/etc/portcullis/portcullis.yaml"]
