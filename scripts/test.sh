#!/usr/bin/env bash
# Runs every test of the workspace: installs what the tests need when it is
# missing (redis-server, cargo-nextest), builds the release binaries the
# end-to-end tests start (they never build them themselves), then runs all
# tests with nextest on the same release profile so dependencies are shared.
# Extra arguments go to `cargo nextest run` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: redis-server missing, installing it" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo-nextest missing, installing it" >&2
    cargo install cargo-nextest --locked
fi

# Browser conformance (tests/tests/browser_eventsource.rs): Debian's chromium and the pinned npm packages.
tests/browser/install.sh

cargo build --release -p gateway -p clients -p loadtest

# The load harness's smoke run: every transport against a real gateway on a
# private Redis; fails on any lost, duplicated or reordered message.
LOADTEST_SMOKE_PROFILE=release loadtest/ci-smoke.sh

cargo nextest run --workspace --release "$@"
