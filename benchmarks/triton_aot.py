"""Compile every Triton kernel launch of vaekernels for a GPU that is not here (default sm_90).

The test suite runs the Triton kernels under the interpreter (TRITON_INTERPRET=1, numpy on CPU
tensors), which never lowers them: an op the NVIDIA backend cannot lower, a layout that does not
fit, register spills or bfloat16 (the interpreter refuses it) show only on a GPU.  This script
takes the compiler's side of that check without one: it drives every public op's forward and
backward on the ``triton`` backend over a catalog of dtypes, shapes and options, and a
``jit_cache_hook`` (triton.knobs) catches each distinct specialization the real launches ask for
-- argument dtypes, divisibility, constexprs, num_warps -- compiles it with ``triton.compile``
for the target, and skips the launch (no GPU is touched; the ops' outputs are garbage and unused).

For each specialization it prints what the compiled kernel needs (``ptxas -v``, with Triton's own
flags): registers per thread, stack frame and spill stores, shared memory, and the compile time.
Exit status 1 if any specialization fails to compile, spills more than ``--max-spill`` bytes per
thread, was launched without ``enable_fp_fusion=FP_FUSION`` (vaekernels/triton/__init__.py: the
check sets Triton's default to the opposite, so such a launch shows), or if the hook never fired
(nothing checked).  Why a few bytes are allowed: ``sqrt.rn``
(tl.sqrt_rn, the Box-Muller radius) has an out-of-line slow-path subroutine for tiny and huge
arguments, and ptxas saves one live register around that CALL (4 B per thread, an STL / LDL pair
per 4 normals, found in the SASS of _reparameterize_fwd_kernel); spills from register pressure
are tens to thousands of bytes.

Usage:  python benchmarks/triton_aot.py [--arch 90] [--full] [--max-spill 8] [--md FILE]
(its own process: the kernels must be jitted, not interpreted, so TRITON_INTERPRET is cleared
before triton is imported).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: jit, not the interpreter
# Every launch must pin fp fusion (vaekernels.triton.FP_FUSION): Triton's default is made the
# opposite here, so a launch that leaves it to the default compiles otherwise and is reported.
from vaekernels.triton import FP_FUSION  # noqa: E402  (the package file imports nothing)

os.environ["TRITON_DEFAULT_FP_FUSION"] = "0" if FP_FUSION else "1"

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

import vaekernels as vk  # noqa: E402
from vaekernels import backends  # noqa: E402


class _NoGPU:
    """What the jit asks the driver before a launch: the target, a device and a stream."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _ptxas(arch: int) -> str:
    """The ptxas that Triton itself runs for ``arch`` (it ships two: one per PTX ISA generation)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except ImportError:  # older Triton: one ptxas
        return knobs.nvidia.ptxas.path


class Compiler:
    """The jit_cache_hook: compiles each new specialization for ``target`` and skips the launch."""

    def __init__(self, target: GPUTarget, workdir: str):
        self.target, self.workdir = target, workdir
        self.rows, self.failures, self.seen = [], [], set()
        self.context = ""

    def __call__(self, **hook_args):  # key, repr, fn, compile, ... (keywords only; more in newer Triton)
        jit_fn, key = hook_args["fn"].jit_function, hook_args["key"]
        if (jit_fn.fn, key) not in self.seen:  # by function: two modules have a _sum_rows_kernel
            self.seen.add((jit_fn.fn, key))
            self.compile(jit_fn, jit_fn.__name__, hook_args["compile"])
        return True  # skip: no compile by the jit, no launch

    def compile(self, jit_fn, name, spec):
        constexprs = spec["constants"]  # {(argument index,): value}
        shown = ", ".join(f"{jit_fn.arg_names[k[0]]}={v}" for k, v in sorted(constexprs.items())
                          if len(k) == 1 and jit_fn.arg_names[k[0]].isupper())
        dtypes = sorted({t[1:] for t in spec["signature"].values() if t.startswith("*")})
        row = {"kernel": name, "constexprs": shown, "pointers": "/".join(dtypes), "num_warps": spec["num_warps"],
               "fusion": spec["enable_fp_fusion"], "context": self.context}
        options = {k: spec[k] for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion")}
        src = ASTSource(jit_fn, spec["signature"], constexprs, spec["configs"][0])
        t0 = time.perf_counter()
        try:
            kernel = triton.compile(src, target=self.target, options=options)
        except Exception as exc:  # a kernel that does not lower: the finding this script exists for
            self.failures.append((row, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
            return
        row["compile_s"] = time.perf_counter() - t0
        row.update(self.resources(kernel, name))
        self.rows.append(row)

    def resources(self, kernel, name):
        """Registers, stack frame and spill stores (bytes per thread) by ``ptxas -v`` on the kernel's
        PTX (the ptxas Triton ships), and shared memory (Triton's, from the metadata).  The stack
        frame alone is not a spill: libdevice's sinf / cosf keep a local array for the
        Payne-Hanek reduction of huge arguments, a path the kernels' |t| <= pi never takes."""
        ptx = kernel.asm["ptx"]
        arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
        path = os.path.join(self.workdir, f"{name}.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        # The flags Triton's own ptxas call passes (triton/backends/nvidia/compiler.py, make_cubin).
        flags = ["-lineinfo", "-v", "--regAllocOptLevel=2"]
        if not kernel.metadata.enable_fp_fusion:
            flags.append("--fmad=false")
        out = subprocess.run([_ptxas(self.target.arch), *flags, f"--gpu-name={arch}", path, "-o", path + ".cubin"],
                             capture_output=True, text=True)
        text = out.stdout + out.stderr
        if out.returncode != 0:
            raise RuntimeError(f"ptxas -v failed on {name}: {text.strip()}")
        stack, spill = (int(v) for v in re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", text).groups())
        regs = int(re.search(r"Used (\d+) registers", text).group(1))
        return {"regs": regs, "stack": stack, "spill": spill, "shared": kernel.metadata.shared}


def catalog(compiler: Compiler, full: bool):
    """Every op forward + backward on the triton backend over dtypes x shapes x options.  ``full``:
    every combination of prior, reduction, free bits, alpha and STL at every shape (~1700
    specializations, ~9 min on 2 cores); else a cover of the same constexpr branches and
    block-size choices (each option value at least once per dtype; ~2 min)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=g).to(dtype).requires_grad_()

    def backward(out):
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()

    def priors(prior, b, d, dtype, which):  # prior: None, "d" ([D]) or "bd" ([B, D]); which: "both", "mu", "logvar"
        if prior is None:
            return None, None
        shape = (d,) if prior == "d" else (b, d)
        return (randn(*shape, dtype=dtype) if which != "logvar" else None,
                randn(*shape, dtype=dtype) if which != "mu" else None)

    kl_options = [(prior, which, reduction, free_bits)
                  for prior in (None, "d", "bd") for which in (("both",) if prior is None else ("both", "mu", "logvar"))
                  for reduction in ("none", "per_example", "sum", "batchmean") for free_bits in (0.0, 0.1)]
    iwae_options = [(prior, alpha, stl) for prior in (None, "d", "bd")
                    for alpha, stl in ((0.0, False), (0.0, True), (0.5, False), (1.0, False))]
    if not full:
        kl_options = [(None, "both", "per_example", 0.0), (None, "both", "none", 0.1), (None, "both", "sum", 0.0),
                      ("d", "both", "batchmean", 0.1), ("bd", "both", "per_example", 0.0), ("d", "mu", "none", 0.0),
                      ("bd", "logvar", "sum", 0.1), ("d", "logvar", "per_example", 0.1)]
        iwae_options = [(None, 0.0, False), ("d", 0.5, True), ("bd", 1.0, False), ("bd", 0.0, True)]
    kl_shapes = ((3, 5), (64, 33), (1024, 256), (8, 4096)) if full else ((64, 33), (1024, 256))
    iwae_shapes = ((1, 3, 5), (8, 64, 33), (64, 256, 256), (5, 2, 4096)) if full else ((1, 3, 5), (64, 256, 256))

    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for b, d in ((3, 5), (64, 33), (1024, 256), (8, 4096)):
            compiler.context = f"reparameterize {dt} ({b}, {d})"
            for k in (None, 1, 8):
                backward(vk.reparameterize(randn(b, d, dtype=dt), randn(b, d, dtype=dt), k, seed=1, backend="triton"))
            compiler.context = f"gaussian_log_prob {dt} ({b}, {d})"
            for lead in ((), (4,)):
                backward(vk.gaussian_log_prob(randn(*lead, b, d, dtype=dt), randn(b, d, dtype=dt),
                                              randn(b, d, dtype=dt), backend="triton"))
        for b, d in kl_shapes:
            for prior, which, reduction, free_bits in kl_options:
                compiler.context = f"gaussian_kl {dt} ({b}, {d}) prior {prior} {which} {reduction} {free_bits}"
                pm, plv = priors(prior, b, d, dt, which)
                backward(vk.gaussian_kl(randn(b, d, dtype=dt), randn(b, d, dtype=dt), pm, plv, reduction=reduction,
                                        free_bits=free_bits, backend="triton"))
        for k, b, d in iwae_shapes:
            for prior, alpha, stl in iwae_options:
                compiler.context = f"iwae_bound {dt} ({b}, {d}, {k}) prior {prior} alpha {alpha} stl {stl}"
                pm, plv = priors(prior, b, d, dt, "both")
                backward(vk.iwae_bound(randn(k, b), randn(k, b, d, dtype=dt), randn(b, d, dtype=dt),
                                       randn(b, d, dtype=dt), pm, plv, alpha=alpha, stl=stl, backend="triton"))
        for shape, dim in (((7,), 0), ((64, 130), -1), ((64, 130), 0), ((3, 1000, 5), 1), ((2, 8, 5000), -1)):
            compiler.context = f"log_mean_exp {dt} {shape} dim {dim}"
            backward(vk.log_mean_exp(randn(*shape, dtype=dt), dim, backend="triton"))
    compiler.context = "normal_noise"
    vk.normal_noise((3, 1000), 5, backend="triton")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (default 90: H100 / H200)")
    ap.add_argument("--full", action="store_true", help="every option combination at every shape (~9 min)")
    ap.add_argument("--max-spill", type=int, default=8, help="bytes of spill stores per thread allowed (default 8)")
    ap.add_argument("--md", help="also write the table as markdown to this file")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    driver.set_active(_NoGPU(target))
    # The triton backend runs on CUDA tensors; here its launchers take CPU tensors (only their
    # dtypes, alignment and sizes reach the compiler), bfloat16 included.
    real_why = backends.why_unavailable
    backends.why_unavailable = lambda name, device_type, dtype=None: (
        None if name == "triton" and backends._load("triton") is not None else real_why(name, device_type, dtype))
    with tempfile.TemporaryDirectory() as workdir:
        compiler = Compiler(target, workdir)
        knobs.runtime.jit_cache_hook = compiler
        t0 = time.perf_counter()
        catalog(compiler, args.full)
        total = time.perf_counter() - t0
    rows = sorted(compiler.rows, key=lambda r: (r["kernel"], r["pointers"], r["constexprs"]))
    lines = [f"Triton {triton.__version__}, target sm_{args.arch}, {'full' if args.full else 'covering'} catalog: "
             f"{len(rows)} specializations compiled, {len(compiler.failures)} failed, {total:.0f} s.", "",
             "| kernel | pointers | constexprs | warps | regs | stack B | spill B | shared B | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['pointers']} | {r['constexprs']} | {r['num_warps']} | {r['regs']} | "
                     f"{r['stack']} | {r['spill']} | {r['shared']} | {r['compile_s']:.1f} |")
    for row, err in compiler.failures:
        lines.append(f"FAILED {row['kernel']} [{row['pointers']}; {row['constexprs']}] from {row['context']}: {err}")
    spills = [r for r in rows if r["spill"] > args.max_spill]
    for r in spills:
        lines.append(f"SPILLS {r['kernel']} [{r['pointers']}; {r['constexprs']}]: {r['spill']} B per thread "
                     f"(more than --max-spill {args.max_spill})")
    unpinned = [r for r in rows if r["fusion"] != FP_FUSION]
    for r in unpinned:
        lines.append(f"UNPINNED {r['kernel']} [{r['pointers']}; {r['constexprs']}] from {r['context']}: launched "
                     f"without enable_fp_fusion=FP_FUSION (compiled with fusion {r['fusion']})")
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if not rows and not compiler.failures:  # the hook never fired: this Triton calls it otherwise
        print("no specialization reached the jit_cache_hook: nothing was checked")
        return 1
    return 1 if compiler.failures or spills or unpinned else 0


if __name__ == "__main__":
    sys.exit(main())
