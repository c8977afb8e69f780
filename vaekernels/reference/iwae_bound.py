"""The IWAE / Renyi bound, the naive way: log-densities by hand, then a logsumexp over the samples.

    log w_k = log p(x|z_k) + log N(z_k; prior) - log N(z_k; mu, e^logvar)
    bound   = 1/(1 - alpha) (logsumexp_k (1 - alpha) log w_k - log K)      alpha = 1: mean_k log w_k

Differentiated by torch autograd, which keeps several tensors of z's size for backward.  Beside
the textbook lines, the same guards as the fused kernels: an example whose bound is -inf (all
log w_k = -inf; for alpha >= 1 any) is computed on zeros and then set to -inf, so its gradients are
0 rather than NaN; STL evaluates log q with mu and logvar detached.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..backends import compute_dtype
from .gaussian_log_prob import gaussian_log_prob


def _bound(lw: Tensor, alpha: float) -> Tuple[Tensor, Tensor]:
    """lw: [K, B] -> (bound [B], the normalized weights [K, B] = d bound / d lw, detached)."""
    k = lw.shape[0]
    if alpha == 1.0:
        return lw.mean(0), torch.full_like(lw.detach(), 1.0 / k)
    r = (1.0 - alpha) * lw
    lse = torch.logsumexp(r, 0)
    # exp(r - lse): exactly what torch.logsumexp's backward multiplies by (softmax would make a
    # whole column NaN where one r is +inf; this keeps the finite samples' weights at 0).
    return (lse - math.log(k)) / (1.0 - alpha), torch.exp(r.detach() - lse.detach())


def iwae_bound(log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
               prior_logvar: Optional[Tensor], alpha: float, stl: bool) -> Tuple[Tensor, Tensor]:
    """log_px_z: [K, B]; z: [K, B, D]; mu, logvar: [B, D]; priors: None (0), [D] or [B, D].

    Returns (bound [B], weights [K, B]) in float32 (float64 for float64 z); weights are detached."""
    c = compute_dtype(z.dtype)
    zero = torch.zeros((), dtype=c, device=z.device)
    pm = zero if prior_mu is None else prior_mu
    plv = zero if prior_logvar is None else prior_logvar
    log_q = gaussian_log_prob(z, mu.detach() if stl else mu, logvar.detach() if stl else logvar)
    lw = log_px_z.to(c) + gaussian_log_prob(z, pm.to(c).expand_as(mu), plv.to(c).expand_as(mu)) - log_q
    with torch.no_grad():
        dead = _bound(lw, alpha)[0] == -math.inf
    bound, weights = _bound(lw.masked_fill(dead, 0.0), alpha)
    return bound.masked_fill(dead, -math.inf), weights.masked_fill(dead, 0.0)
