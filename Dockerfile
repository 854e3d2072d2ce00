# The Veil gateway with the shipped policies.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
 && cargo build --release --locked \
 && make rust-policies

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/veil /usr/local/bin/veil
COPY --from=build /src/target/policies/*.wasm /etc/veil/policies/
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/veil"]
CMD ["serve", "--config", "/etc/veil/veil.toml"]
