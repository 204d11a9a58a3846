#!/usr/bin/env bash
# Runs Herald's whole test suite. First scripts/setup.sh installs or starts what is missing
# (packages, PostgreSQL, Redis, NATS). Then every crate's unit and black-box tests, then the SDK
# compatibility tests (centrifuge-python and centrifuge-js against the real binary, over every
# transport and format), then the live map, the browser transports (centrifuge-js over SSE and
# HTTP streaming, EventSource on uni_sse) and the admin console in headless Chromium, then a smoke
# run of every benchmark scenario (bench/run.sh smoke: tiny numbers, seconds each, Herald, the
# Node.js peers and the floor; it checks the harness runs, not speed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace
HERALD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/herald" bash tests/sdk/run.sh
HERALD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/herald" bash tests/map/run.sh
HERALD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/herald" bash tests/browser/run.sh
HERALD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/herald" bash tests/admin/run.sh
PROFILE=debug bash bench/run.sh smoke
