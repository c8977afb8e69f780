"""Backends and how an op picks one.

``reference``  plain torch: the naive implementation and the test oracle (any device).
``cpu``        vaekernels._C       C++ kernels (OpenMP, vectorized), CPU tensors.
``cuda``       vaekernels._C_cuda  CUDA kernels, CUDA tensors.
``triton``     vaekernels.triton   Triton kernels, CUDA tensors (CPU tensors under TRITON_INTERPRET=1).

Choice, first match wins: ``backend=`` on the call, the innermost ``use_backend(...)`` block,
the ``VAEKERNELS_BACKEND`` environment variable, then the default for the device: a CUDA tensor
goes to ``cuda`` if built, else ``triton``, else ``reference``; a CPU tensor to ``cpu`` if built,
else ``reference``.  A backend asked for by name that cannot run raises
:class:`BackendUnavailableError` saying why; the default silently skips what is missing (after
one warning at import when a compiled module fails to load).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import pkgutil
import warnings
from typing import Dict, Iterator, Optional, Tuple

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Dtype codes of csrc/include/vaekernels/dtype.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

# Dtypes each backend computes in (float32 arithmetic for the half types everywhere).
_DTYPES = {
    "reference": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
    "cpu": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute (and return reductions) in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Default order per device type.  An op may override it (by measurement, benchmarks/results/).
_DEFAULT_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
_OP_DEFAULT_ORDER: Dict[Tuple[str, str], Tuple[str, ...]] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and cannot run here; the message says why."""


class BackendNotSupportedWarning(UserWarning):
    pass


_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("vaekernels_backend", default=None)


# ----------------------------------------------------------------------------- loading
class _Loaded:
    """A lazily imported backend module and, when it cannot be used, the reason why."""

    def __init__(self) -> None:
        self.module = None
        self.reason: Optional[str] = None
        self.tried = False


_modules: Dict[str, _Loaded] = {name: _Loaded() for name in ("cpu", "cuda", "triton")}


def _import_compiled(name: str, warn: bool):
    try:
        return importlib.import_module(name), None
    except ImportError as exc:  # missing, or built for another platform / Python
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == name
        if not missing:
            reason = f"{name} failed to load: {exc}"
        elif name.endswith("_cuda"):
            reason = f"{name} is not in this build (built without nvcc, or with VAEKERNELS_CUDA=0)"
        else:
            reason = f"{name} is not built (install the package or run `make build`)"
        if warn and not missing:
            warnings.warn(f"vaekernels: {reason}; falling back to other backends", BackendNotSupportedWarning, stacklevel=3)
        return None, reason


def _load(name: str):
    entry = _modules[name]
    if entry.tried:
        return entry.module
    entry.tried = True
    if name == "cpu":
        # _C needs libgomp.so.1: torch's wheels load their own copy under that soname first, so
        # both share one OpenMP runtime and one thread pool (no second pool spinning on the cores).
        entry.module, entry.reason = _import_compiled("vaekernels._C", warn=True)
    elif name == "cuda":
        if not torch.cuda.is_available():
            built = importlib.util.find_spec("vaekernels._C_cuda") is not None
            entry.reason = f"vaekernels._C_cuda is {'built' if built else 'not built'}, but torch sees no CUDA device"
        else:
            entry.module, entry.reason = _import_compiled("vaekernels._C_cuda", warn=True)
    elif name == "triton":
        try:
            import triton  # noqa: F401

            entry.module = importlib.import_module("vaekernels.triton")
            for sub in pkgutil.iter_modules(entry.module.__path__):  # every kernel file
                importlib.import_module(f"vaekernels.triton.{sub.name}")
        except ImportError as exc:
            entry.reason = f"triton is not importable ({exc}); pip install triton"
    return entry.module


def module(name: str):
    """The loaded module of a compiled/triton backend (raises if it is unavailable)."""
    mod = _load(name)
    if mod is None:
        raise BackendUnavailableError(f"vaekernels: backend {name!r} is unavailable: {_modules[name].reason}")
    return mod


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_unavailable(name: str, device_type: str, dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """None when ``name`` can run ops on ``device_type`` tensors of ``dtype``, else the reason."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
    if name == "cpu" and device_type != "cpu":
        return f"the cpu backend runs on CPU tensors, got {device_type} tensors"
    if name == "cuda" and device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got {device_type} tensors"
    if name == "triton":
        if device_type == "cpu" and not triton_interpreted():
            return "the triton backend runs on CUDA tensors, or on CPU tensors only under TRITON_INTERPRET=1"
        if device_type not in ("cpu", "cuda"):
            return f"the triton backend runs on CUDA tensors, got {device_type} tensors"
    if name != "reference" and _load(name) is None:
        return _modules[name].reason
    if dtype is not None and dtype not in _DTYPES[name]:
        return f"the {name} backend computes in {', '.join(str(d) for d in _DTYPES[name])}, got {dtype}"
    if name == "triton" and dtype == torch.bfloat16 and device_type == "cpu":
        return "the Triton interpreter (CPU tensors) does not support bfloat16"
    return None


def default_backend(op: str, device_type: str, dtype: Optional[torch.dtype] = None) -> str:
    order = _OP_DEFAULT_ORDER.get((op, device_type), _DEFAULT_ORDER.get(device_type, ("reference",)))
    for name in order:
        if why_unavailable(name, device_type, dtype) is None:
            return name
    return "reference"


# Under torch.compile the choice is made once, at trace time, and baked into the graph as a
# constant: dynamo cannot trace ContextVar.get or the lazy imports, and need not.
@torch.compiler.assume_constant_result
def resolve(op: str, device: torch.device, dtype: torch.dtype, requested: Optional[str] = None) -> str:
    """The backend that runs ``op`` on tensors of ``device``/``dtype``: see the module docstring."""
    if requested is None:
        requested = _override.get()
    if requested is None:
        requested = os.environ.get("VAEKERNELS_BACKEND") or None
    if requested is None:
        return default_backend(op, device.type, dtype)
    if not isinstance(requested, str) or requested not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(map(repr, BACKENDS))} or None, got {requested!r}")
    reason = why_unavailable(requested, device.type, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: backend {requested!r} is unavailable: {reason}")
    return requested


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Run every vaekernels op in the block on backend ``name`` (None: the default choice).

    >>> with vaekernels.use_backend("reference"):
    ...     z = vaekernels.reparameterize(mu, logvar, 8)
    """
    if name is not None and name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {', '.join(map(repr, BACKENDS))} or None, got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def available_backends(device_type: str) -> Tuple[str, ...]:
    """The backends that can run on ``device_type`` ('cpu' or 'cuda') tensors here."""
    return tuple(name for name in BACKENDS if why_unavailable(name, device_type) is None)


def cuda_launch_args(t: torch.Tensor) -> Tuple[int, int]:
    """(stream handle, device index) for a CUDA kernel launched on ``t``'s device."""
    return torch.cuda.current_stream(t.device).cuda_stream, t.device.index
