#!/usr/bin/env bash
# The CPU benchmark suite, twice: with the default glibc allocator (what a user gets) and in
# steady state (freed pages stay mapped, the effect of a jemalloc/tcmalloc set-up), then the
# markdown tables and the plot.  Usage: benchmarks/run_cpu.sh [pytest -k expression]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
tag=cpu-$(date +%Y-%m-%d)
args=(benchmarks -p no:cacheprovider)
[ $# -gt 0 ] && args+=(-k "$1")
VAEKERNELS_BENCH_ALLOC=default PYTHONPATH=. "$PY" -m pytest "${args[@]}" --benchmark-json="$OUT/$tag-default.json"
VAEKERNELS_BENCH_ALLOC=steady MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 \
  MALLOC_TOP_PAD_=268435456 PYTHONPATH=. "$PY" -m pytest "${args[@]}" --benchmark-json="$OUT/$tag-steady.json"
PYTHONPATH=. "$PY" benchmarks/report.py "$OUT/$tag-default.json" "$OUT/$tag-steady.json" \
  --md "$OUT/$tag.md" --png "$OUT/$tag.png"
