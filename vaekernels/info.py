"""``python -m vaekernels.info``: versions, build info, and the backend each op uses on each device."""
from __future__ import annotations

import platform
import sys

import torch

from . import __version__, backends

# The public ops and the backend choice key each one resolves under.
OPS = ("reparameterize", "gaussian_kl", "iwae_bound", "log_mean_exp", "gaussian_log_prob")


def collect() -> dict:
    info = {
        "vaekernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["triton_interpret"] = backends.triton_interpreted()
    mod = backends._load("cpu")
    info["build_cpu"] = mod.build_info() if mod is not None else backends._modules["cpu"].reason
    # The CUDA module imports without a GPU (static cudart), so its build info shows everywhere.
    mod, reason = backends._import_compiled("vaekernels._C_cuda", warn=False)
    info["build_cuda"] = mod.build_info() if mod is not None else reason
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info["backends"] = {
        dev: {name: backends.why_unavailable(name, dev) or "available" for name in backends.BACKENDS} for dev in devices
    }
    info["default"] = {op: {dev: backends.default_backend(op, dev) for dev in devices} for op in OPS}
    return info


def main() -> None:
    info = collect()
    w = sys.stdout.write
    for key in ("vaekernels", "python", "torch", "torch_cuda", "cuda_available", "gpu", "triton", "triton_interpret"):
        w(f"{key:<18} {info[key]}\n")
    for name in ("cpu", "cuda"):
        build = info[f"build_{name}"]
        if isinstance(build, dict):
            w(f"build {name:<12} " + ", ".join(f"{k}={v}" for k, v in build.items()) + "\n")
        else:
            w(f"build {name:<12} not available: {build}\n")
    for dev, table in info["backends"].items():
        w(f"\nbackends on {dev} tensors:\n")
        for name, state in table.items():
            w(f"  {name:<10} {state}\n")
    w("\ndefault backend per op:\n")
    for op, per_dev in info["default"].items():
        w(f"  {op:<22} " + "  ".join(f"{dev}: {b}" for dev, b in per_dev.items()) + "\n")


if __name__ == "__main__":
    main()
