#!/usr/bin/env bash
# Runs every cargo-fuzz target of the workspace for SECONDS each (default 60) and prints each
# target's "Done N runs" line. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets it pass the sanitizer flags. Stops at the first crash
# (the input is saved under crates/<crate>/fuzz/artifacts/<target>/). See docs/devices.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
for fuzz in crates/*/fuzz; do
    for target in $(cd "$fuzz" && cargo fuzz list); do
        log=$(mktemp)
        if ! (cd "$fuzz" && cargo fuzz run -O "$target" -- -max_total_time="$seconds") >"$log" 2>&1; then
            tail -n 40 "$log"
            echo "$fuzz $target: FAILED (log: $log)"
            exit 1
        fi
        echo "$fuzz $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
        rm -f "$log"
    done
done
