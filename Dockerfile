# The Veil gateway with the shipped policies.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
 && cargo build --profile dist --locked \
 && make rust-policies

FROM debian:bookworm-slim
# Veil runs as its own unprivileged user: a compromise of the process gets
# neither root nor write access to its binary, config or shipped policies
# (root-owned, read-only to it). It writes only under /var/lib/veil (spool,
# compiled-policy cache, approvals, policy state), which it owns; mount a
# volume there.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 veil \
 && useradd --system --uid 10001 --gid veil --home-dir /var/lib/veil --no-create-home --shell /usr/sbin/nologin veil \
 && install -d -o veil -g veil -m 0700 /var/lib/veil
COPY --from=build /src/target/dist/veil /usr/local/bin/veil
COPY --from=build /src/target/policies/*.wasm /etc/veil/policies/
USER 10001:10001
WORKDIR /var/lib/veil
# Unprivileged ports: no capability is needed to bind them.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/veil"]
CMD ["serve", "--config", "/etc/veil/veil.toml"]
