"""The public ops.  Each checks its inputs (vaekernels._checks), picks a backend
(vaekernels.backends) and calls the custom op (vaekernels.ops.<op>) or, for the ``reference``
backend, the plain-torch implementation (vaekernels.reference.<op>)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _checks, backends
from .ops import reparameterize as _reparameterize_op
from .reference import random as _ref_random
from .reference import reparameterize as _reparameterize_ref

Seed = Union[int, Tensor, None]

_SEED_LOW, _SEED_HIGH = -(1 << 63), (1 << 63) - 1


def _draw_seed(op: str, seed: Seed, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """The 0-d int64 Philox key on ``device``: ``seed`` when given, else a fresh draw from
    ``generator`` (default: torch's generator for the device), so torch.manual_seed reproduces a
    run and consecutive calls differ.  Drawn on the device, so CUDA-graph replay redraws it."""
    if seed is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass seed or generator, not both")
        return _checks.seed(op, seed, device)
    gen = _checks.generator(op, generator, device)
    return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64, device=device, generator=gen)


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    num_samples: Optional[int] = None,
    *,
    seed: Seed = None,
    generator: Optional[torch.Generator] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Reparameterized Gaussian samples ``z = mu + exp(0.5 * logvar) * eps``, ``eps ~ N(0, I)``.

    Args:
        mu, logvar: ``[..., D]``, same shape, dtype (float32/16, bfloat16; float64 on the
            ``reference`` and ``cpu`` backends) and device.  Arithmetic is float32 (float64 for
            float64 inputs).
        num_samples: ``K``. None returns ``[..., D]``; an int returns ``[K, ..., D]``.
        seed: the 64-bit Philox key (int or 0-d int64 tensor).  Default: drawn from
            ``generator`` (default: torch's generator on ``mu``'s device).
        backend: ``"reference" | "cpu" | "cuda" | "triton"``; default: see vaekernels.backends.

    Gradients: ``dmu = sum_k dz_k``, ``dlogvar = sum_k dz_k * eps_k * 0.5 * exp(0.5 * logvar)``;
    eps is regenerated from the seed, so backward keeps nothing of size K*B*D.
    Element ``e`` of z viewed as a row-major ``[K, mu.numel()]`` array is normal ``e`` of the
    stream (docs/random.md), on every backend.
    """
    op = "reparameterize"
    _checks.tensor(op, "mu", mu)
    _checks.like(op, "logvar", logvar, "mu", mu)
    k = _checks.positive_int(op, "num_samples", num_samples, allow_none=True)
    name = backends.resolve(op, mu.device, mu.dtype, backend)
    seed_t = _draw_seed(op, seed, generator, mu.device)
    if name == "reference":
        z = _reparameterize_ref.reparameterize(mu, logvar, seed_t, k or 1)
    else:
        z = _reparameterize_op.reparameterize(mu, logvar, seed_t, k or 1, name)
    return z[0] if k is None else z


def normal_noise(
    shape: Sequence[int],
    seed: Union[int, Tensor],
    *,
    device: Union[str, torch.device, None] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """The stream's standard normals for ``seed`` as a float32 tensor of ``shape``: exactly the eps
    that ``reparameterize(..., seed=seed)`` uses for an output of that shape."""
    op = "normal_noise"
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    name = backends.resolve(op, device, torch.float32, backend)
    seed_t = _checks.seed(op, seed, device)
    if name == "reference":
        return _ref_random.normal(int(seed_t), numel, device=device).view(shape)
    zeros = torch.zeros(numel, dtype=torch.float32, device=device)
    return _reparameterize_op.reparameterize(zeros, zeros, seed_t, 1, name).view(shape)
