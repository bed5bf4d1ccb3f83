#!/usr/bin/env bash
# Fuzz format detection, decoding and row parsing with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh                 every target for FUZZ_SECS seconds each (default 600)
#   scripts/fuzz.sh rows            one target
# Works on the stable toolchain: cargo-fuzz needs nightly-only sanitizer flags, which
# RUSTC_BOOTSTRAP=1 unlocks. Crashes land in fuzz/artifacts/<target>/; turn each into a
# regression test in shared/src/ingest/hostile_tests.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-600}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode text rows workbook results bundle)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1

# Seeds: every fixture (good and bad) and the demo roster, so the fuzzer starts from real files.
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n tests/fixtures/*.* tests/fixtures/bad/* tests/fixtures/real/* tests/fixtures/odd/* samples/*.xlsx "fuzz/corpus/$t/" 2>/dev/null || true
done

for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  # -malloc_limit_mb: one allocation past 512 MB is a finding (an allocation bomb aborts the
  # process before any RSS limit sees it); -rss_limit_mb: memory that balloons in small steps.
  cargo fuzz run --release "$t" -- -max_total_time="$secs" -malloc_limit_mb="${FUZZ_MALLOC_MB:-512}" -rss_limit_mb=1536 \
    -max_len=1048576 -print_final_stats=1 2>&1 \
    | tee "fuzz/$t.log" | grep -E '^(stat::|==|#[0-9]+ +DONE|SUMMARY|artifact_prefix|Test unit written)' || true
done
