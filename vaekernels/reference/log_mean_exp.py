"""log-mean-exp in plain torch: ``torch.logsumexp(x, dim) - log n`` with one guard.

Where every entry along ``dim`` is -inf, torch.logsumexp's gradient is NaN (exp(-inf - -inf));
here such a slice gives -inf with gradient 0: it is replaced by zeros (masked_fill, whose
gradient at the filled places is 0) before the logsumexp, and its result by -inf after.  +inf and
NaN propagate as in torch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends import compute_dtype


def logsumexp_safe(x: Tensor, dim: int) -> Tensor:
    """torch.logsumexp(x, dim), but -inf with gradient 0 (not NaN) where all of x along dim is -inf."""
    dead = (x.detach() == -math.inf).all(dim, keepdim=True)
    out = torch.logsumexp(x.masked_fill(dead, 0.0), dim, keepdim=True).masked_fill(dead, -math.inf)
    return out.squeeze(dim)


def log_mean_exp(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """log (1/n) sum_j exp(x_j) along ``dim`` (n = x.shape[dim] >= 1), in float32 (float64 for float64)."""
    out = logsumexp_safe(x.to(compute_dtype(x.dtype)), dim) - math.log(x.shape[dim])
    return out.unsqueeze(dim) if keepdim else out
