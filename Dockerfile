# Raven in a container: a build stage with the Rust toolchain, and a slim runtime stage
# that runs as an unprivileged user with its data in a volume.
#
#   docker build -t raven .
#   docker run -d --name raven -p 50051:50051 -p 50052:50052 -v raven-data:/var/lib/raven raven
#
# The configuration is deploy/docker/raven.toml (mount another over /etc/raven/raven.toml).
# `docker stop` sends SIGTERM: the server drains (5 s) and exits on its own within 9 s,
# before Docker's 10 s default turns to SIGKILL.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p raven

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/raven --create-home raven
COPY --from=build /src/target/release/raven /usr/local/bin/raven
COPY deploy/docker/raven.toml /etc/raven/raven.toml
USER raven
WORKDIR /var/lib/raven
VOLUME ["/var/lib/raven"]
EXPOSE 50051 50052
ENV RAVEN_LOG=info
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["raven", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["raven", "serve", "--config", "/etc/raven/raven.toml"]
