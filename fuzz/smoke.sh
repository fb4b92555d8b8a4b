#!/usr/bin/env bash
# Fuzz smoke test, as CI runs it: build every cargo-fuzz target, then run each for
# ${FUZZ_SECONDS:-30} seconds, printing how long each step took. Exits non-zero if a target
# crashes (a panic, an ASan report, or an input slower than ${FUZZ_UNIT_TIMEOUT:-10} s, i.e. an
# endless loop), after printing the crashing input's path and how to replay it.
#
# Needs a nightly toolchain (${FUZZ_TOOLCHAIN:-nightly}) and cargo-fuzz. The corpus grows in
# fuzz/corpus/<target> and crashing inputs land in fuzz/artifacts/<target>; both are ignored
# by git.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-30}
unit_timeout=${FUZZ_UNIT_TIMEOUT:-10}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

start=$SECONDS
cargo "+${toolchain}" fuzz build
echo "fuzz: built all targets in $((SECONDS - start))s"

mapfile -t targets < <(cargo "+${toolchain}" fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz: no targets found" >&2
  exit 1
fi

failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/${target}" "artifacts/${target}"
  start=$SECONDS
  # `fuzz run` rebuilds nothing after `fuzz build` (same flags); -max_total_time bounds the run.
  if cargo "+${toolchain}" fuzz run "${target}" "corpus/${target}" -- \
    -max_total_time="${seconds}" -timeout="${unit_timeout}" -print_final_stats=1 \
    >"artifacts/${target}.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "artifacts/${target}.log")
    echo "fuzz: ${target}: ok, ${runs:-?} runs in $((SECONDS - start))s"
  else
    echo "fuzz: ${target}: FAILED after $((SECONDS - start))s; its report:" >&2
    # The panic message or sanitizer report, then the failing input as cargo-fuzz prints it.
    first=$(grep -n -m1 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)|==[0-9]+==ERROR' \
      "artifacts/${target}.log" | cut -d: -f1 || true)
    if [ -n "${first}" ]; then
      sed -n "${first},$((first + 30))p" "artifacts/${target}.log" >&2
      echo "..." >&2
    fi
    grep -A 40 -m1 '^Failing input:' "artifacts/${target}.log" >&2 ||
      tail -n 60 "artifacts/${target}.log" >&2
    for input in "artifacts/${target}"/*; do
      [ -e "${input}" ] || continue
      echo "fuzz: crashing input: fuzz/${input}" >&2
      echo "fuzz: replay: (cd fuzz && cargo +${toolchain} fuzz run ${target} ${input})" >&2
    done
    failed+=("${target}")
  fi
done

if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
