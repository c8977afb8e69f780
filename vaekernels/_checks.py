"""Input validation shared by every public op and module.

Every check raises before any kernel runs, so a bad call never reaches C++/CUDA/Triton and
nothing is half-written.  Messages name the op, the argument, what was expected and what
came, e.g. ``gaussian_kl: logvar has shape (128, 31) but mu has (128, 32)``.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MASK64 = (1 << 64) - 1


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def tensor(op: str, name: str, t, *, min_dim: int = 0) -> torch.Tensor:
    """A floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating tensor (float32, float16, bfloat16 or float64), got {t.dtype}"
        )
    if t.dim() < min_dim:
        raise ValueError(f"{op}: {name} must have at least {min_dim} dimension(s), got shape {_shape(t)}")
    return t


def same_shape(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} has shape {_shape(t)} but {ref_name} has {_shape(ref)}")


def same_dtype(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def same_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def like(op: str, name: str, t, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """A tensor with exactly the shape, dtype and device of ``ref``."""
    tensor(op, name, t)
    same_device(op, name, t, ref_name, ref)
    same_dtype(op, name, t, ref_name, ref)
    same_shape(op, name, t, ref_name, ref)
    return t


def positive_int(op: str, name: str, value, *, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    # bool is an int subclass; True samples is a bug, not a request for one sample.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be a positive int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    return int(value)


def one_of(op: str, name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def nonnegative_float(op: str, name: str, value) -> float:
    """A finite real number >= 0 (an int is taken as a float; bool, tensors and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (value >= 0.0 and value != float("inf")):  # also rejects NaN
        raise ValueError(f"{op}: {name} must be a finite float >= 0, got {value!r}")
    return value


def finite_float(op: str, name: str, value) -> float:
    """A finite real number (an int is taken as a float; bool, tensors and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not abs(value) < float("inf"):  # also rejects NaN
        raise ValueError(f"{op}: {name} must be a finite float, got {value!r}")
    return value


def flag(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def dims(op: str, name: str, t: torch.Tensor, ndim: int, layout: str) -> torch.Tensor:
    """A tensor with exactly ``ndim`` dimensions; ``layout`` names them, e.g. ``"[K, B, D]"``."""
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have shape {layout}, got {_shape(t)}")
    return t


def dim_index(op: str, name: str, value, t: torch.Tensor) -> int:
    """A dimension of ``t`` (negative counts from the end), returned in [0, t.dim())."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    if not -t.dim() <= value < t.dim():
        raise ValueError(f"{op}: {name} must be in [{-t.dim()}, {t.dim() - 1}] for shape {_shape(t)}, got {value}")
    return int(value) % t.dim()


def trailing_like(op: str, name: str, t, ref_name: str, ref: torch.Tensor, ndims: Sequence[int]) -> torch.Tensor:
    """A tensor with the dtype and device of ``ref`` whose shape is the last k dimensions of
    ``ref``'s for some k in ``ndims`` -- so it broadcasts against ``ref`` over the leading ones."""
    tensor(op, name, t)
    same_device(op, name, t, ref_name, ref)
    same_dtype(op, name, t, ref_name, ref)
    allowed = []
    for k in ndims:
        shape = _shape(ref)[max(0, ref.dim() - k):]
        if shape not in allowed:
            allowed.append(shape)
    if _shape(t) not in allowed:
        raise ValueError(
            f"{op}: {name} has shape {_shape(t)} but {ref_name} has {_shape(ref)}; "
            f"expected {' or '.join(map(str, allowed))}"
        )
    return t


def seed(op: str, value, device: torch.device) -> torch.Tensor:
    """``seed=`` as the 0-d int64 tensor the kernels read: the 64-bit Philox key.

    Python ints in [-2^63, 2^64) are taken modulo 2^64 (so 2^64 - 1 and -1 are the same key);
    a 0-d integer tensor is used as is (moved to ``device``).
    """
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.int64 or value.dim() != 0:
            raise TypeError(f"{op}: seed tensor must be a 0-d int64 tensor, got {value.dtype} with shape {_shape(value)}")
        return value.to(device, non_blocking=True)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: seed must be an int or a 0-d int64 tensor, got {type(value).__name__} {value!r}")
    value = int(value)
    if not -(1 << 63) <= value <= _MASK64:
        raise ValueError(f"{op}: seed must be in [-2**63, 2**64), got {value}")
    value &= _MASK64
    if value >= 1 << 63:  # the same 64 bits, as the signed int64 torch stores
        value -= 1 << 64
    return torch.tensor(value, dtype=torch.int64, device=device)


def generator(op: str, gen, device: torch.device) -> Optional[torch.Generator]:
    if gen is None:
        return None
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"{op}: generator must be a torch.Generator, got {type(gen).__name__}")
    if gen.device.type != device.type:
        raise ValueError(f"{op}: generator is on {gen.device} but the inputs are on {device}")
    return gen
