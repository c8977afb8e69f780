"""Shared benchmark harness: providers, honest timing, and the numbers each case records.

Every case records in ``extra_info``: the op's byte floor (each input read once, each output
written once, noise generated in registers), GB/s over that floor, % of the copy bandwidth
measured in this same run, bytes kept for backward, device, torch/triton versions and the
allocator mode (``VAEKERNELS_BENCH_ALLOC``: default | steady, set by benchmarks/run_cpu.sh).

Timing: on CPU pytest-benchmark's pedantic mode, enough rounds for a stable median; on a GPU
the same with CUDA events around each round (gpu_clock), after a warm-up, and every round starts
with the L2 flushed (flush_l2) besides the rotating input sets.  torch.compile is warmed up
(compiled) before timing; its compile time is reported on its own.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import pytest
import torch

import vaekernels as vk

DEVICE = os.environ.get("VAEKERNELS_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
ALLOC = os.environ.get("VAEKERNELS_BENCH_ALLOC", "default")
# Sizes (B, D, K): small, typical, large; plus one >= 2^26-element case on a GPU.
SIZES = {"small": (128, 32, 1), "typical": (1024, 64, 8), "large": (4096, 256, 64)}
if DEVICE == "cuda":
    SIZES["huge"] = (16384, 512, 16)  # K*B*D = 2^27
MODES = ("fwd", "bwd", "fwd+bwd")


def _versions() -> Dict[str, str]:
    info = {"torch": torch.__version__, "vaekernels": vk.__version__, "alloc": ALLOC, "threads": torch.get_num_threads()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["device_name"] = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.processor() or platform.machine()
    return info


_BANDWIDTH: Optional[float] = None


def copy_bandwidth() -> float:
    """GB/s of a large device copy (bytes read + bytes written), measured once per run."""
    global _BANDWIDTH
    if _BANDWIDTH is None:
        n = (512 if DEVICE == "cuda" else 128) * 2**20 // 4
        src = torch.ones(n, device=DEVICE)
        dst = torch.empty_like(src)
        times = [time_call(lambda: dst.copy_(src)) for _ in range(10 if DEVICE == "cuda" else 7)]
        _BANDWIDTH = 2 * src.numel() * 4 / statistics.median(times) / 1e9
    return _BANDWIDTH


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object]) -> float:
    """Seconds of one call, synchronized."""
    if DEVICE == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


_GPU_LAST = None  # the event of gpu_clock's previous call
_GPU_TOTAL = 0.0


def gpu_clock() -> float:
    """Seconds on the GPU's own clock, pytest-benchmark's timer for CUDA cases (set on every item by
    pytest_collection_modifyitems): records a CUDA event on the current stream, waits for it, and
    returns the running total of the times between consecutive events.  A round then measures from
    an event recorded before the call to one recorded after it -- CUDA-event timing, not the host's
    clock.  Each difference is taken between two adjacent events (cudaEventElapsedTime is float32
    milliseconds: a difference against one fixed first event would lose precision as the run goes
    on) and summed in float64."""
    global _GPU_LAST, _GPU_TOTAL
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    ev.synchronize()
    if _GPU_LAST is not None:
        _GPU_TOTAL += _GPU_LAST.elapsed_time(ev) / 1e3
    _GPU_LAST = ev
    return _GPU_TOTAL


_L2_FLUSH: Optional[torch.Tensor] = None


def flush_l2() -> None:
    """Overwrites 256 MB on the GPU, more than any L2 it may have (H100 50 MB, H200 60 MB), as
    triton.testing.do_bench does before each repetition: a round then finds none of its inputs in
    L2 whatever its size (three rotating input sets of a small case would all fit).  Called in
    each round's untimed set-up; the stream runs it before the round's first event."""
    global _L2_FLUSH
    if _L2_FLUSH is None:
        _L2_FLUSH = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=DEVICE)
    _L2_FLUSH.zero_()


def rounds_for(seconds_per_call: float) -> int:
    """Rounds for a stable median in about 0.5 s per case: at least 9 (the median of 9 ignores four
    outliers on either side: with 5, the large eager and compile baselines moved by up to 20% from
    run to run on this shared 2-core machine), at most 200."""
    return int(min(200, max(9, 0.5 / max(seconds_per_call, 1e-6))))


def run(benchmark, fn: Callable, setup: Callable[[], tuple], *, floor_bytes: int, kept_bytes: int,
        compile_s: Optional[float] = None, **info) -> None:
    """Time ``fn(*setup())`` (setup excluded) and record the byte-floor figures.

    ``setup`` is called before every round; it returns the arguments (e.g. fresh leaves, or a
    forward result to backpropagate).  Several input sets rotate, and on a GPU each round starts
    with the L2 flushed (flush_l2).
    """
    def target(*args):
        out = fn(*args)
        sync()
        return out

    args = setup()
    t0 = time.perf_counter()
    target(*args)  # warm-up (first-call costs, allocator)
    target(*setup())
    per_call = time.perf_counter() - t0

    def round_setup():
        args = setup()
        if DEVICE == "cuda":
            flush_l2()
        return args, {}

    benchmark.pedantic(target, setup=round_setup, rounds=rounds_for(per_call / 2), warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: each case ran once, as a smoke test
        return
    median = benchmark.stats.stats.median
    bw = copy_bandwidth()
    gbps = floor_bytes / median / 1e9
    benchmark.extra_info.update(
        _versions(),
        device=DEVICE,
        floor_bytes=floor_bytes,
        floor_ms=1e3 * floor_bytes / (bw * 1e9),
        gbps=round(gbps, 2),
        copy_gbps=round(bw, 2),
        pct_of_copy=round(100 * gbps / bw, 1),
        kept_bytes=kept_bytes,
        compile_s=compile_s,
        **info,
    )


def compiled(fn: Callable, warm_args: Callable[[], tuple], backward: bool) -> tuple:
    """torch.compile(fn) warmed up on ``warm_args`` (and its backward); returns (fn, compile seconds)."""
    torch._dynamo.reset()
    cfn = torch.compile(fn)
    t0 = time.perf_counter()
    out = cfn(*warm_args())
    if backward:
        out.backward(torch.ones_like(out))
    sync()
    return cfn, time.perf_counter() - t0


def provider_fn(provider: str, naive: Callable, distributions: Optional[Callable], vk_fn: Callable[[str], Callable],
                leaves: Callable[[], tuple], mode: str) -> tuple:
    """(the function ``provider`` times, torch.compile's compile seconds or None).
    ``vk_fn(backend)`` builds the vaekernels call for ``vk_<backend>``."""
    if provider == "eager":
        return naive, None
    if provider == "distributions":
        return distributions, None
    if provider == "compile":
        return compiled(naive, leaves, backward=mode != "fwd")
    return vk_fn(provider[3:]), None


def mode_fn(f: Callable, leaves: Callable[[], tuple], mode: str, grad=None) -> tuple:
    """(timed function, per-round setup) for a mode: fwd times ``f(*leaves())``; bwd times
    ``out.backward(grad)`` after an untimed forward; fwd+bwd times both."""
    if mode == "fwd":
        return f, leaves
    if mode == "bwd":
        return (lambda out: out.backward(grad)), (lambda: (f(*leaves()),))
    return (lambda *a: f(*a).backward(grad)), leaves


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for backward while running ``fn`` (sum over saved tensors, views
    counted at their own size)."""
    total: List[int] = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def providers(device: str) -> List[str]:
    names = ["eager", "distributions", "compile"]
    names += [f"vk_{b}" for b in vk.available_backends(device) if b != "reference"]
    return names


# The large sizes run forward + backward only (fwd and bwd alone are measured at small and
# typical): that keeps `make bench` -- both allocator passes -- under 10 minutes on 2 cores.
# VAEKERNELS_BENCH_ALL_MODES=1 runs every mode at every size.
ALL_MODES = os.environ.get("VAEKERNELS_BENCH_ALL_MODES", "0") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if DEVICE == "cuda":  # time rounds by CUDA events (gpu_clock), unless a test sets its own timer
        for item in items:
            if item.get_closest_marker("benchmark") is None:
                item.add_marker(pytest.mark.benchmark(timer=gpu_clock))
    if ALL_MODES:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        big = params.get("size") in ("large", "huge")
        (drop if big and params.get("mode", "fwd+bwd") != "fwd+bwd" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def device() -> str:
    return DEVICE
