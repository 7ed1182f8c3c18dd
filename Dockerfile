# ohlcv-server image: a release build on Debian, run as an unprivileged user with the data dir
# as a volume. The default command is the demo server on all interfaces without users, hence
# --insecure: publish the port only where that is acceptable, or mount a config file with
# [auth.users.*] (and TLS) and drop --insecure.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY clients ./clients
RUN cargo build --release --locked --bin ohlcv-server

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/ohlcv ohlcv && mkdir -p /var/lib/ohlcv/data \
    && chown -R ohlcv /var/lib/ohlcv
COPY --from=build /src/target/release/ohlcv-server /usr/local/bin/ohlcv-server
USER ohlcv
WORKDIR /var/lib/ohlcv
VOLUME /var/lib/ohlcv/data
ENV OHLCV_DATA_DIR=/var/lib/ohlcv/data
EXPOSE 50051
ENTRYPOINT ["ohlcv-server"]
CMD ["serve", "--demo", "--listen", "0.0.0.0:50051", "--insecure"]
