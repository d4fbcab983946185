#!/usr/bin/env bash
# Runs every cargo-fuzz target of the gateway for a bounded time (default 20 s
# each; FUZZ_SECONDS overrides), installing cargo-fuzz when it is missing.
# Only a stable toolchain is needed: the targets run without a sanitizer.
# A crash fails the run and leaves its input under gateway/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../gateway"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz missing, installing it" >&2
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "fuzz.sh: $target for ${seconds}s" >&2
    if ! cargo fuzz run --sanitizer none "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz.sh: $target failed (input saved under gateway/fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)" "$log" || true
done
