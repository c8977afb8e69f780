"""Gaussian KL, the naive way: the textbook line a VAE user writes, differentiated by torch autograd.

    KL(N(mu, e^logvar) || N(0, 1))      = -0.5 * (1 + logvar - mu**2 - e^logvar)
    KL(N(mu, e^logvar) || N(pm, e^plv)) =  0.5 * (plv - logvar + (e^logvar + (mu - pm)**2) / e^plv - 1)

Elementwise over ``[..., D]``; every term is of order max(e^logvar, |logvar|, 1), so where the
posterior has collapsed onto the prior (KL ~ (logvar - plv)^2 / 4 + ...) the sum cancels and
float32 keeps only the digits above ~1e-7 of those terms: with |logvar - plv| ~ 1e-3 the result
is off by ~10% (see tests/test_gaussian_kl.py).  In float64 it is good to ~1e-16 of the terms,
which is why it still serves as an oracle there.  Each autograd step is its own pass over
``[..., D]``; torch keeps ``e^logvar`` and friends for backward.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor],
                reduction: str, free_bits: float) -> Tensor:
    """mu, logvar: [..., D]; prior_mu, prior_logvar: None (0), [D], [B, D] or mu's shape (broadcast).

    Returns [..., D] (``none``), [...] (``per_example``) or 0-d (``sum``, ``batchmean`` = sum / n,
    n = number of examples).  ``free_bits`` > 0: the elementwise KL of a dimension d whose mean
    over the examples is below free_bits becomes the constant free_bits (no gradient), before any
    reduction.  Computed in float32 (float64 for float64 inputs), returned in that dtype."""
    compute = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu, logvar = mu.to(compute), logvar.to(compute)
    if prior_mu is None and prior_logvar is None:
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    else:
        zero = torch.zeros((), dtype=compute, device=mu.device)
        pm = zero if prior_mu is None else prior_mu.to(compute)
        plv = zero if prior_logvar is None else prior_logvar.to(compute)
        kl = 0.5 * (plv - logvar + (logvar.exp() + (mu - pm).pow(2)) / plv.exp() - 1)
    d = mu.shape[-1]
    n = math.prod(mu.shape[:-1])
    if free_bits > 0:
        col = kl.detach().reshape(n, d).mean(0)  # per-dimension KL averaged over the examples
        kl = torch.where(col < free_bits, free_bits, kl)
    if reduction == "none":
        return kl
    if reduction == "per_example":
        return kl.sum(-1)
    total = kl.sum()
    return total if reduction == "sum" else total / n
