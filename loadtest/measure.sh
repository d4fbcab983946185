#!/usr/bin/env bash
# The full measurement behind the README's Performance table: every scenario
# of loadtest/scenarios/ that compares targets, a subscriber sweep, and one
# combined report. Takes about 20 minutes on the 2-core machine; run it when
# nothing else is building (check `uptime`). Every run is bounded and stops
# by itself; the servers it starts are stopped when their runs end.
#
#   loadtest/measure.sh [OUT]      (default loadtest/out/perf-TIME)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="${1:-loadtest/out/perf-$(date +%s)}"
mkdir -p "$out"
cargo build --release -p loadtest
if ! cargo build --release -p gateway; then
  [[ -x target/release/gateway ]] || exit 1
  echo "gateway does not build right now; measuring the existing target/release/gateway" >&2
fi
ls -l --time-style=+%FT%T target/release/gateway
lt=target/release/loadtest

for s in idle-memory latency-200k broadcast-10k max-connections redis-path mix-churn; do
  "$lt" run -s "loadtest/scenarios/$s.toml" --out "$out/$s"
done
"$lt" sweep -s loadtest/scenarios/broadcast-10k.toml --rate 20 --duration 5 \
  --vary subscribers --values 1000,5000,10000,15000 --out "$out/sweep-subscribers"

"$lt" report "$out"/idle-memory "$out"/latency-200k "$out"/broadcast-10k \
  "$out"/max-connections "$out"/redis-path "$out"/mix-churn "$out"/sweep-subscribers --out "$out"
echo "report: $out/report.md"
