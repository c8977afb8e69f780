#!/usr/bin/env bash
# Everything that can only be shown on a GPU, on a bare GPU machine that has torch, triton, nvcc,
# CMake, pybind11 and pytest-benchmark (no network needed), in stages:
#   build     the modules in place (sm_90 + PTX; incremental: a second call on the same machine
#             rebuilds nothing) and info.txt (GPU, driver, nvcc, what was built);
#   test      the whole suite, GPU tests included (pytest-xdist when it is there);
#   sanitize  the CUDA backend's tests under compute-sanitizer (memcheck, racecheck);
#   bench     the benchmark suite (every round timed by CUDA events: conftest.gpu_clock) and its report.
# Usage: benchmarks/gpu_check.sh [STAGE ...]        (default: build test sanitize bench)
#   OUT=DIR  where the logs go (default benchmarks/results/gpu-<date>); BENCH_K=EXPR narrows the
#   benchmarks to pytest -k EXPR.  A stage after build needs the build (run them in one call, or on a machine
#   still warm from the call that built).
# The device tool gives a command 10 minutes and brings back at most 8 files of $OUT, so there:
#   OUT=$OUT benchmarks/gpu_check.sh build test        # 4 files: summary build.log info tests.log
#   OUT=$OUT benchmarks/gpu_check.sh build sanitize    # 4 files
#   OUT=$OUT benchmarks/gpu_check.sh build bench       # 7 files, bench.{json,md,png,log} among them
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y-%m-%d)}
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test sanitize bench)
for s in "${STAGES[@]}"; do
  case "$s" in build|test|sanitize|bench) ;; *) echo "gpu_check.sh: unknown stage '$s' (build, test, sanitize, bench)" >&2; exit 2;; esac
done
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
status=0
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# 16 cores there: spread the tests over TEST_WORKERS processes (default 8; 0 or 1: none) when
# pytest-xdist is installed, each with 2 threads as on CI (the GPU tests share the one GPU).
XDIST=()
if [ "${TEST_WORKERS:-8}" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${TEST_WORKERS:-8}"); fi

stage_build() {
  log "build $(date -u +%FT%TZ)"
  VAEKERNELS_CUDA=1 VAEKERNELS_CUDA_ARCHS=${VAEKERNELS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || { log "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -1;
    "$PY" -m vaekernels.info; } >"$OUT/info.txt" 2>&1
  cat "$OUT/info.txt"
}

stage_test() {
  log "tests (all, GPU tests included) $(date -u +%FT%TZ)"
  local threads=()
  [ ${#XDIST[@]} -gt 0 ] && threads=(env OMP_NUM_THREADS=2)
  "${threads[@]}" "$PY" -m pytest tests -q -p no:cacheprovider "${XDIST[@]}" >"$OUT/tests.log" 2>&1 || status=1
  tail -5 "$OUT/tests.log" | tee -a "$OUT/summary.txt"
}

stage_sanitize() {
  local san tool
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    log "compute-sanitizer --tool $tool (cuda backend tests) $(date -u +%FT%TZ)"
    "$san" --tool "$tool" --error-exitcode 99 --target-processes all \
      "$PY" -m pytest tests -q -p no:cacheprovider -k "cuda-cuda and not compile and not statistics" \
      >"$OUT/sanitizer-$tool.log" 2>&1 || status=1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -3 | tee -a "$OUT/summary.txt"
  done
}

stage_bench() {
  log "benchmarks $(date -u +%FT%TZ)"
  local select=()
  [ -n "${BENCH_K:-}" ] && select=(-k "$BENCH_K")
  "$PY" -m pytest benchmarks -p no:cacheprovider "${select[@]}" --benchmark-json="$OUT/bench.json" \
    >"$OUT/bench.log" 2>&1 || status=1
  tail -3 "$OUT/bench.log" | tee -a "$OUT/summary.txt"
  "$PY" benchmarks/report.py "$OUT/bench.json" --md "$OUT/bench.md" --png "$OUT/bench.png" >/dev/null 2>&1 || status=1
}

for s in "${STAGES[@]}"; do "stage_$s"; done
log "done ($*), status $status $(date -u +%FT%TZ)"
exit $status
