#!/usr/bin/env bash
# Fuzz Ladder's parsers with libFuzzer (cargo-fuzz) for a bounded time per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s each, every target)
#
# Targets (bodies in fuzz/common.rs): chat_request, hints, sse, anthropic_response,
# stream_translation, gemini_response, gemini_stream. Needs cargo-fuzz (`cargo install
# cargo-fuzz`) and a C++ compiler. Works on stable Rust: RUSTC_BOOTSTRAP=1 lets stable rustc
# take the -Z flags cargo-fuzz passes. The
# sanitizer is `none` by default (AddressSanitizer needs a nightly standard library); on nightly,
# FUZZ_SANITIZER=address turns it on.
#
# Each target starts from fuzz/seeds/<target>/ and keeps its corpus in fuzz/corpus/<target>/.
# A crash is saved under fuzz/artifacts/<target>/ and the script exits non-zero; copy the input
# to fuzz/regressions/<target>/ so that tests/randomized.rs replays it in every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(chat_request hints sse anthropic_response stream_translation gemini_response gemini_stream)
san=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
cargo fuzz build --sanitizer "$san"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    [ -d "regressions/$t" ] && cp -n "regressions/$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${secs}s"
    if ! cargo fuzz run --sanitizer "$san" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; then
        failed+=("$t")
        echo "!! $t: crash saved under fuzz/artifacts/$t/" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "no crashes (${targets[*]}, ${secs}s each)"
