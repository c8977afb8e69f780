"""Reparameterized sampling, the naive way: ``z = mu + exp(0.5 * logvar) * eps``.

Differentiated by torch autograd, which keeps ``eps`` ([K, ..., D]) for backward -- the memory
the fused backends save.  ``eps`` is the vaekernels stream, so every backend can be compared
with this one sample for sample.
"""
from __future__ import annotations

import torch

from . import random


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor, num_samples: int) -> torch.Tensor:
    """mu, logvar: [..., D]; seed: 0-d int64 -> z: [num_samples, ..., D].

    Element e of z viewed as a row-major [K, N] array (N = mu.numel(), logical order) uses
    normal e of the stream.  Half-precision inputs are computed in float32, as the kernels do."""
    eps = random.normal(seed, num_samples * mu.numel(), device=mu.device).view(num_samples, *mu.shape)
    compute = torch.float64 if mu.dtype == torch.float64 else torch.float32
    z = mu.to(compute) + torch.exp(0.5 * logvar.to(compute)) * eps.to(compute)
    return z.to(mu.dtype)
