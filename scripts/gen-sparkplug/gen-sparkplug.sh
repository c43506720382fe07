#!/bin/sh
# Regenerates ingest-mqtt/src/sparkplug_b.rs from ingest-mqtt/proto/sparkplug_b.proto (needs protoc: apt-get install protobuf-compiler).
set -e; cd "$(dirname "$0")" && cargo run --quiet && rustfmt --edition 2024 ../../ingest-mqtt/src/sparkplug_b.rs
