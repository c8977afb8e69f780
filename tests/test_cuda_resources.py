"""The CUDA kernels as built keep everything in registers and shared memory -- checked without a GPU.

``cuobjdump -res-usage`` on ``vaekernels/_C_cuda`` lists every kernel instantiation of every
architecture the module carries (VAEKERNELS_CUDA_ARCHS).  None may use local memory or a stack
frame above MAX_STACK bytes per thread: a spill, or an array ptxas could not keep in registers,
costs a trip through L1 / L2 per access.  The allowance: built for sm_80 / 86 / 89 (not sm_90),
16 of the 448 instantiations -- iwae_bound's forward and gaussian_log_prob's forward for float16 /
bfloat16 -- have an 8-byte frame, where ``nvcc -Xptxas -v`` reports 4 - 8 bytes of spill stores at
40 - 64 registers (ptxas's choice under no register cap; nvcc 13.0).  And the module must carry
SASS of every op for every architecture it was built for.  The Triton kernels get the same check
in tests/test_triton_aot.py.
"""
import glob
import importlib
import os
import re
import shutil
import subprocess

import pytest

import vaekernels
from vaekernels.info import OPS

MAX_STACK = 8  # bytes per thread (see above)


def _module():
    paths = glob.glob(os.path.join(os.path.dirname(vaekernels.__file__), "_C_cuda*.so"))
    return paths[0] if paths else None


def _cuobjdump():
    """The cuobjdump Triton's NVIDIA backend ships, else one on PATH."""
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("cuobjdump")


pytestmark = [
    pytest.mark.skipif(_module() is None, reason="_C_cuda is not built (no nvcc, or VAEKERNELS_CUDA=0)"),
    pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (triton's NVIDIA backend ships one)"),
]


def _run(*args):
    return subprocess.run([_cuobjdump(), *args, _module()], capture_output=True, text=True, check=True).stdout


def test_every_op_has_sass_for_every_built_architecture():
    # e.g. "80-real,86-real,89-real,90" (CMAKE_CUDA_ARCHITECTURES; the last one also has PTX)
    archs = re.findall(r"\d+", importlib.import_module("vaekernels._C_cuda").build_info()["archs"])
    assert archs
    elves = _run("--list-elf")
    for arch in archs:
        for op in OPS:
            assert f"{op}.sm_{arch}.cubin" in elves, (op, arch, elves)


def test_cuda_kernels_do_not_spill_beyond_a_register_or_two():
    kernels = re.findall(r"Function (\S+):\s+REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", _run("-res-usage"))
    for op in OPS:
        assert any(f"{op}_fwd" in name or f"{op}_rows" in name for name, *_ in kernels), op
    offenders = [(name, f"STACK {stack} LOCAL {local}") for name, _, stack, _, local in kernels
                 if int(stack) > MAX_STACK or int(local)]
    assert not offenders, offenders
