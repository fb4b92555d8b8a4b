#!/usr/bin/env bash
# The in-process stress tests (`tests/stress.rs`) and the library's unit tests under
# ThreadSanitizer, then under AddressSanitizer (with LeakSanitizer), on the nightly toolchain.
# Prints how long each part took; exits non-zero on any sanitizer report or failed test.
#
# What runs, and what does not:
# - `--test stress`: threads in one process, no child processes. Its `ring_*` and `wait_*`
#   tests share one mapping (or heap memory) between threads, which is where TSan sees the
#   ring's and the wait cell's accesses; its bus tests map a segment once per handle, which TSan
#   cannot relate across mappings (see the file's top comment).
# - `--lib`: the unit tests. Single-threaded, so they give TSan little, but ASan checks the
#   layout validation and the ring's index arithmetic; both pass cleanly.
# - Not the other integration tests: they re-execute the test binary as child processes, and
#   no sanitizer relates one process's accesses to another's. Not the doc tests (examples).
#
# How:
# - `-Zsanitizer=...` needs nightly. The machine has no rust-src, so std cannot be rebuilt with
#   the sanitizer (`-Zbuild-std`): `-Cunsafe-allow-abi-mismatch=sanitizer` lets the instrumented
#   crates link against the uninstrumented std, which rustc otherwise refuses. What that costs
#   TSan is in `.ci/tsan.supp`. ASan loses only the checks of std's own non-generic code.
# - `--target` spelled out: RUSTFLAGS then apply to the crates built for the target, never to
#   build scripts and proc macros, which run inside the (uninstrumented) compiler.
# - A target dir per sanitizer: the flags differ, and the normal build's cache is left alone.
# - TSan runs the tests one at a time (`--test-threads=1`). The harness runs every test on a
#   thread of its own anyway (hence the harness entries in `.ci/tsan.supp`), but one at a time
#   it joins each test's thread before it starts the next, an order TSan sees. Tests running
#   side by side are ordered only by std's uninstrumented locks: run that way, TSan reported
#   the `Mutex` counter of `tests/common`'s `unique_prefix` and the `OnceLock` of
#   `shmbus::segment::my_identity` when two tests made their first call at once (std's `Once`
#   publishes its value with a store TSan does not see). And the tests' threads spin and yield
#   on two cores.
# - SHMBUS_STRESS_SCALE scales the stress tests' message counts. Unless it is set: 4 under TSan
#   (more rounds for the race detector to watch; ~20 s on the 2-core CI machine), 1 under ASan
#   (as in the normal suite; ~4 s).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
tsan_scale="${SHMBUS_STRESS_SCALE:-4}"
asan_scale="${SHMBUS_STRESS_SCALE:-1}"
TARGET=x86_64-unknown-linux-gnu
TESTS=(--lib --test stress)
summary=()
start_all=$SECONDS

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "sanitizers: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi

part() {
  local name=$1
  shift
  echo
  echo "=== ${name}: $*"
  local start=$SECONDS
  "$@"
  local took=$((SECONDS - start))
  echo "=== ${name}: ok in ${took}s"
  summary+=("$(printf '%-12s %5ss' "$name" "$took")")
}

# Run a test command with its output kept in `log`; fail on a sanitizer report even if the
# command's status somehow hid it (a report is printed by the runtime, straight to stderr).
run_logged() {
  local log=$1
  shift
  "$@" 2>&1 | tee "$log"
  if grep -Eq 'WARNING: ThreadSanitizer|ERROR: (Address|Leak)Sanitizer' "$log"; then
    echo "sanitizers: a report in $log" >&2
    return 1
  fi
}

# ThreadSanitizer.
tsan_cargo() {
  env RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer" \
    cargo +nightly test --release --target "$TARGET" --target-dir target/tsan "${TESTS[@]}" "$@"
}
tsan_run() (
  # print_suppressions: which suppressions matched, and how often, listed at exit.
  export SHMBUS_STRESS_SCALE="$tsan_scale"
  export TSAN_OPTIONS="suppressions=$PWD/.ci/tsan.supp halt_on_error=1 second_deadlock_stack=1 print_suppressions=1"
  run_logged target/tsan/run.log tsan_cargo -- --test-threads=1
)
part tsan-build tsan_cargo --no-run
part tsan-run tsan_run

# AddressSanitizer, with LeakSanitizer (on by default on Linux; spelled out).
asan_cargo() {
  env RUSTFLAGS="-Zsanitizer=address -Cunsafe-allow-abi-mismatch=sanitizer" \
    cargo +nightly test --release --target "$TARGET" --target-dir target/asan "${TESTS[@]}" "$@"
}
asan_run() (
  export SHMBUS_STRESS_SCALE="$asan_scale"
  export ASAN_OPTIONS="detect_leaks=1"
  run_logged target/asan/run.log asan_cargo
)
part asan-build asan_cargo --no-run
part asan-run asan_run

echo
echo "=== sanitizer timings (SHMBUS_STRESS_SCALE: $tsan_scale under TSan, $asan_scale under ASan)"
printf '%s\n' "${summary[@]}"
printf '%-12s %5ss\n' total $((SECONDS - start_all))
