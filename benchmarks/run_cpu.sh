#!/usr/bin/env bash
# The CPU benchmark suite in both allocator modes: the default glibc allocator (what a user gets)
# and steady state (freed pages stay mapped, the effect of a jemalloc/tcmalloc set-up), then the
# markdown tables and the plot.  Usage: benchmarks/run_cpu.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
tag=cpu-$(date +%Y-%m-%d)
args=(benchmarks -p no:cacheprovider)
[ $# -gt 0 ] && args+=(-k "$1")
# The default allocator differs from steady state only for tensors of 32 MiB or more (glibc's
# largest mmap threshold), which only the large size allocates: that pass runs the large cases.
large=(-k large)
[ $# -gt 0 ] && large=(-k "large and ($1)")
VAEKERNELS_BENCH_ALLOC=default PYTHONPATH=. "$PY" -m pytest benchmarks -p no:cacheprovider "${large[@]}" \
  --benchmark-json="$OUT/$tag-default.json"
VAEKERNELS_BENCH_ALLOC=steady MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 \
  MALLOC_TOP_PAD_=268435456 PYTHONPATH=. "$PY" -m pytest "${args[@]}" --benchmark-json="$OUT/$tag-steady.json"
PYTHONPATH=. "$PY" benchmarks/report.py "$OUT/$tag-default.json" "$OUT/$tag-steady.json" \
  --md "$OUT/$tag.md" --png "$OUT/$tag.png"
