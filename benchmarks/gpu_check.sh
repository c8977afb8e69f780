#!/usr/bin/env bash
# Everything that can only be shown on a GPU, in one long command on a bare GPU machine that has
# torch, triton, nvcc, CMake, pybind11 and pytest-benchmark (no network needed):
#   build (sm_90 + PTX), the whole test suite including the GPU tests, the CUDA tests under
#   compute-sanitizer (memcheck, racecheck), the benchmarks, and a report.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]     (default benchmarks/results/gpu-<date>)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-${OUT:-benchmarks/results/gpu-$(date +%Y-%m-%d)}}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
status=0

log "build $(date -u +%FT%TZ)"
VAEKERNELS_CUDA=1 VAEKERNELS_CUDA_ARCHS=${VAEKERNELS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
  "$PY" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || { log "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1;
  PYTHONPATH=. "$PY" -m vaekernels.info; } >"$OUT/info.txt" 2>&1
cat "$OUT/info.txt"

log "tests (all, GPU tests included)"
PYTHONPATH=. "$PY" -m pytest tests -q -p no:cacheprovider -x --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1 || status=1
tail -5 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  log "compute-sanitizer --tool $tool (cuda backend tests)"
  PYTHONPATH=. "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all \
    "$PY" -m pytest tests -q -p no:cacheprovider -k "cuda-cuda and not compile and not statistics" \
    >"$OUT/sanitizer-$tool.log" 2>&1 || status=1
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -3 | tee -a "$OUT/summary.txt"
done

log "benchmarks"
PYTHONPATH=. "$PY" -m pytest benchmarks -p no:cacheprovider --benchmark-json="$OUT/bench.json" >"$OUT/bench.log" 2>&1 || status=1
tail -3 "$OUT/bench.log" | tee -a "$OUT/summary.txt"
PYTHONPATH=. "$PY" benchmarks/report.py "$OUT/bench.json" --md "$OUT/bench.md" --png "$OUT/bench.png" >/dev/null 2>&1 || status=1
log "done, status $status"
exit $status
