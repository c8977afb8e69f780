"""The Triton kernels compile for an H100 (sm_90) -- checked without a GPU.

The rest of the suite runs the Triton kernels under the interpreter, which never lowers them.
benchmarks/triton_aot.py compiles every specialization the ops' launches ask for (dtypes,
constexprs, block sizes, bfloat16 included) with the NVIDIA backend and Triton's ptxas, and
fails on a kernel that does not compile, spills registers or is launched without pinning fp
fusion.  It runs in its own process (the
kernels must be jitted, and this process has TRITON_INTERPRET=1) with a fresh Triton cache, so
every kernel is really compiled.  A second test shows the check can fail: a kernel whose PTX
ptxas rejects, and one that spills, are both reported.
"""
import os
import re
import subprocess
import sys

import pytest

from vaekernels.info import OPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "triton_aot.py")


def _can_check() -> bool:
    """Triton with its NVIDIA backend (and ptxas) and the knob triton_aot.py hooks into."""
    try:
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        return False
    return hasattr(knobs.runtime, "jit_cache_hook")


pytestmark = [
    pytest.mark.skipif(not _can_check(),
                       reason="needs a triton with its NVIDIA backend (ptxas) and knobs.runtime.jit_cache_hook"),
    pytest.mark.slow,
]


def _run(args, tmp_path, timeout=1200):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # (TRITON_DEFAULT_FP_FUSION: only for the test kernels below; the ops pass enable_fp_fusion.)
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), TRITON_DEFAULT_FP_FUSION="1",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def test_every_triton_launch_compiles_for_sm90(tmp_path):
    md = tmp_path / "aot.md"
    done = _run([SCRIPT, "--arch", "90", "--md", str(md)], tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    header = md.read_text().splitlines()[0]
    m = re.search(r"(\d+) specializations compiled, (\d+) failed", header)
    assert m, header
    compiled, failed = int(m.group(1)), int(m.group(2))
    # Every op, forward and backward, in 3 dtypes with every constexpr branch: a few hundred.
    assert failed == 0 and compiled >= 200, header
    kernels = set(re.findall(r"^\| (_\w+) \|", md.read_text(), re.M))
    for op in OPS:
        assert {f"_{op}_fwd_kernel", f"_{op}_bwd_kernel"} <= kernels, (op, sorted(kernels))


NEGATIVE = '''
import sys, tempfile
sys.path.insert(0, {bench!r})
import triton_aot as aot  # clears TRITON_INTERPRET before triton is imported
import torch, triton, triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

@triton.jit
def bad_ptx(x_ptr, B: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, B))
    y = tl.inline_asm_elementwise("no.such.instruction $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    tl.store(x_ptr + tl.arange(0, B), y)

@triton.jit
def spilling(x_ptr, B: tl.constexpr):  # 512 floats per thread live across two reductions
    i = tl.arange(0, B)
    x = tl.load(x_ptr + i)
    e = tl.exp(x - tl.max(x, 0))
    tl.store(x_ptr + i, e / tl.sum(e, 0))

target = GPUTarget("cuda", 90, 32)
driver.set_active(aot._NoGPU(target))
with tempfile.TemporaryDirectory() as workdir:
    compiler = aot.Compiler(target, workdir)
    knobs.runtime.jit_cache_hook = compiler
    x = torch.zeros(16384)
    bad_ptx[(1,)](x, B=128)
    spilling[(1,)](x, B=16384, num_warps=1)
print("FAILED", [row["kernel"] for row, _ in compiler.failures])
print("SPILL", {{row["kernel"]: row["spill"] for row in compiler.rows}})
'''


def test_the_check_reports_a_kernel_that_does_not_compile_and_one_that_spills(tmp_path):
    script = tmp_path / "negative.py"
    script.write_text(NEGATIVE.format(bench=os.path.dirname(SCRIPT)))
    done = _run([str(script)], tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "FAILED ['bad_ptx']" in done.stdout, done.stdout
    spill = int(re.search(r"'spilling': (\d+)", done.stdout).group(1))
    assert spill > 8, done.stdout  # above triton_aot.py's default --max-spill
