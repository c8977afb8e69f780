"""The diagonal Gaussian log-density, the naive way: the line a VAE user writes by hand.

    log N(z; mu, e^logvar) = -1/2 sum_d (log 2 pi + logvar + (z - mu)^2 / e^logvar)

Differentiated by torch autograd, which keeps ``z - mu``, its square and ``e^logvar`` (each the
size of z) for backward.  mu, logvar broadcast over z's leading dimensions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends import compute_dtype

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """z: [..., *mu.shape]; mu, logvar: [..., D] -> z.shape[:-1], in float32 (float64 for float64)."""
    c = compute_dtype(z.dtype)
    z, mu, logvar = z.to(c), mu.to(c), logvar.to(c)
    return (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / torch.exp(logvar))).sum(-1)
