#!/usr/bin/env bash
# Runs a fuzzing campaign per target, one after the other, and appends what each did to
# runs/summary.tsv (the figures worker/fuzz/README.md records).
#
#   worker/fuzz/campaign.sh [TARGET...]     default: every target in fuzz_targets/
#   FUZZ_RUNS=10000000 FUZZ_SECONDS=900     stop at whichever comes first
#   FUZZ_TARGET_DIR=...                     where the instrumented build goes (default: target/)
#   FUZZ_KEEP_BYTES=65536                   inputs a campaign adds to corpus/<target>, at most
#
# Needs cargo-fuzz (installed here when missing). It works on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets stable rustc take the nightly-only flags cargo-fuzz passes.
# No sanitizer is used: the code is safe Rust, and what is looked for is panics, hangs
# and answers past their caps. New inputs go to runs/<target>/corpus (the committed
# seeds in corpus/<target> stay as they are); crashes go to runs/<target>/artifacts.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
runs=${FUZZ_RUNS:-10000000}
seconds=${FUZZ_SECONDS:-900}
target_dir=${FUZZ_TARGET_DIR:-target}
keep_bytes=${FUZZ_KEEP_BYTES:-65536}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for file in fuzz_targets/*.rs; do targets+=("$(basename "$file" .rs)"); done
fi

cargo fuzz build --sanitizer none --debug-assertions --target-dir "$target_dir"

mkdir -p runs
[ -f runs/summary.tsv ] || printf 'target\texecutions\tseconds\tcov\tft\tcorpus\tnew_units\tcrashes\n' >runs/summary.tsv
for target in "${targets[@]}"; do
  mkdir -p "runs/$target/corpus" "runs/$target/artifacts"
  log="runs/$target/fuzz.log"
  started=$(date +%s)
  status=0
  cargo fuzz run --sanitizer none --debug-assertions --target-dir "$target_dir" "$target" \
    "runs/$target/corpus" "corpus/$target" -- \
    -runs="$runs" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="runs/$target/artifacts/" \
    >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - started ))
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  new_units=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corpus=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  crashes=$(find "runs/$target/artifacts" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "${executions:-?}" "$elapsed" \
    "${cov:-?}" "${ft:-?}" "${corpus:-?}" "${new_units:-?}" "$crashes" >>runs/summary.tsv
  echo "$target: exit $status, ${executions:-?} executions in ${elapsed}s, cov ${cov:-?}, ft ${ft:-?}, $crashes crashes" >&2
  # What the campaign found beyond the committed corpus, minimised by libFuzzer; kept
  # (and then replayed by the tests) when it is small enough to commit.
  rm -rf "runs/$target/merged" && cp -r "corpus/$target" "runs/$target/merged"
  before=$(du -sb "runs/$target/merged" | cut -f1)
  cargo fuzz run --sanitizer none --debug-assertions --target-dir "$target_dir" "$target" \
    "runs/$target/merged" "runs/$target/corpus" -- -merge=1 >"runs/$target/merge.log" 2>&1 || true
  added=$(( $(du -sb "runs/$target/merged" | cut -f1) - before ))
  if [ "$added" -le "$keep_bytes" ]; then
    cp -n "runs/$target/merged"/* "corpus/$target/"
    echo "$target: $added bytes of new inputs added to corpus/$target" >&2
  else
    echo "$target: the minimised new inputs take $added bytes, more than $keep_bytes: not kept" >&2
  fi
done
