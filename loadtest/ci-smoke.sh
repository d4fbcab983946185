#!/usr/bin/env bash
# CI smoke run of the load harness: a few hundred subscribers for a few
# seconds on every transport, against a real gateway on a private Redis
# (started on a free port by the harness). Fails unless no message was lost,
# duplicated or reordered and the report files were written. No timing is
# asserted. Prints "smoke: N passed, M failed" last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools
fi

# Debug builds by default: CI has built most of them already, and the smoke
# asserts nothing about speed. LOADTEST_SMOKE_PROFILE=release for release.
profile="${LOADTEST_SMOKE_PROFILE:-debug}"
if [[ "$profile" == release ]]; then
  cargo build --release -p gateway -p loadtest
else
  cargo build -p gateway -p loadtest
fi
out="${LOADTEST_SMOKE_OUT:-target/loadtest-smoke}"
rm -rf "$out"
"target/$profile/loadtest" smoke --gateway-bin "target/$profile/gateway" --out "$out"
