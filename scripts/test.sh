#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, then every unit and integration test
# (gateway processes on loopback, classifier parity, the official openai SDK as a client).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release -j 2 --all-targets -- -D warnings
cargo test --release -j 2 -- --test-threads 2
