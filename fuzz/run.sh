#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer on the stable toolchain: builds the
# targets with the instrumentation flags `cargo fuzz` passes, then runs each
# for SECONDS over its committed seeds (fuzz/corpus/<target>, read only; new
# inputs go to a scratch corpus) and prints a table of executions, coverage
# and features. A crash or a leak of time/memory fails the run and leaves its
# input in fuzz/artifacts/<target>/.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]   (default 20 s, every target)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sigv4 token xml_codec json_codec selector spool config classify endpoint)
# Veil's own crates instrumented, dependencies reused from the release build.
RUSTC_WRAPPER="$PWD/rustc-instrument" cargo build --quiet --locked --release -p veil-fuzz $(printf -- '--bin fuzz-%s ' "${targets[@]}")
bin=../target/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
printf '%-11s %6s %12s %9s %7s %7s  %s\n' target secs execs execs/s cov ft result
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  result=ok
  "$bin/fuzz-$t" "$scratch/$t" "corpus/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || result=FAILED
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-11s %6s %12s %9s %7s %7s  %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
  if [ "$result" != ok ]; then
    status=1
    grep -v '^#\|^INFO\|^\s*$' "$log" | tail -40 >&2
  fi
done
exit $status
