"""``vaekernels::gaussian_log_prob`` and ``vaekernels::gaussian_log_prob_backward``.

With u = z - mu and iv = e^-logvar, for each row of z:

Forward   out      = -1/2 sum_d (log 2 pi + logvar + u^2 iv)
Backward  dz       = -grad u iv
          dmu      = sum over the sample rows of grad u iv
          dlogvar  = -1/2 sum over the sample rows of grad (1 - u^2 iv)

z: [S..., N..., D] seen as [S, N, D], where mu, logvar: [N..., D] are z's trailing dimensions
(broadcast over the S leading sample rows, never materialized); out: [S, N] seen as
z.shape[:-1], in the compute dtype (float32, float64 for float64): a sum of D log-densities
leaves the float16 range easily.  The sums over samples are deterministic (fixed chunks added
in a fixed order).

Memory: forward reads z once (S N D elements) and mu, logvar (N D), writes S N; backward reads
z and writes dz (2 S N D) plus the [N, D] parameters and gradients.  Backward keeps the inputs
only.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import backends
from ..backends import compute_dtype
from ._common import dispatcher, eager_twin


def _sizes(z: Tensor, mu: Tensor) -> Tuple[int, int, int]:
    d = mu.shape[-1]
    n = math.prod(mu.shape[:-1])
    s = z.numel() // (n * d) if n * d else math.prod(z.shape[: z.dim() - mu.dim()])
    return s, n, d


def _fwd(z, mu, logvar, out, backend) -> None:
    s, n, d = _sizes(z, mu)
    if backend == "cpu":
        backends.module("cpu").gaussian_log_prob_fwd(
            z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), out.data_ptr(), s, n, d, backends.DTYPE_CODES[z.dtype],
            torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").gaussian_log_prob_fwd(
            z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), out.data_ptr(), s, n, d, backends.DTYPE_CODES[z.dtype],
            *backends.cuda_launch_args(z))
    elif backend == "triton":
        backends.module("triton").gaussian_log_prob.gaussian_log_prob_fwd(z, mu, logvar, out, s, n, d)
    else:
        raise ValueError(f"gaussian_log_prob: no kernel for backend {backend!r}")


def _bwd(grad, z, mu, logvar, g_z, g_mu, g_lv, backend) -> None:
    s, n, d = _sizes(z, mu)
    if backend == "cpu":
        backends.module("cpu").gaussian_log_prob_bwd(
            grad.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), g_z.data_ptr(), g_mu.data_ptr(),
            g_lv.data_ptr(), s, n, d, backends.DTYPE_CODES[z.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").gaussian_log_prob_bwd(
            grad.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), g_z.data_ptr(), g_mu.data_ptr(),
            g_lv.data_ptr(), s, n, d, backends.DTYPE_CODES[z.dtype], *backends.cuda_launch_args(z))
    elif backend == "triton":
        backends.module("triton").gaussian_log_prob.gaussian_log_prob_bwd(grad, z, mu, logvar, g_z, g_mu, g_lv, s, n, d)
    else:
        raise ValueError(f"gaussian_log_prob: no kernel for backend {backend!r}")


def _forward(z: Tensor, mu: Tensor, logvar: Tensor, backend: str) -> Tensor:
    out = z.new_empty(z.shape[:-1], dtype=compute_dtype(z.dtype))
    if out.numel():
        _fwd(z.contiguous(), mu.contiguous(), logvar.contiguous(), out, backend)
    return out


@torch.library.custom_op("vaekernels::gaussian_log_prob", mutates_args=())
def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor, backend: str) -> Tensor:
    """z: [..., *mu.shape]; mu, logvar: [..., D] -> z.shape[:-1] in the compute dtype."""
    return _forward(z, mu, logvar, backend)


@gaussian_log_prob.register_fake
def _(z, mu, logvar, backend):
    return z.new_empty(z.shape[:-1], dtype=compute_dtype(z.dtype))


def _backward_kernels(grad: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    g_z = torch.empty_like(z, memory_format=torch.contiguous_format)
    g_mu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    g_lv = torch.empty_like(g_mu)
    if z.numel() == 0:  # no samples (or D = 0): the sums over samples are 0
        g_mu.zero_()
        g_lv.zero_()
        return g_z, g_mu, g_lv
    _bwd(grad.contiguous(), z.contiguous(), mu.contiguous(), logvar.contiguous(), g_z, g_mu, g_lv, backend)
    return g_z, g_mu, g_lv


@torch.library.custom_op("vaekernels::gaussian_log_prob_backward", mutates_args=())
def gaussian_log_prob_backward(grad: Tensor, z: Tensor, mu: Tensor, logvar: Tensor,
                               backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """grad: z.shape[:-1] (compute dtype) -> (grad_z, grad_mu, grad_logvar) in their inputs' shapes and dtype."""
    return _backward_kernels(grad, z, mu, logvar, backend)


@gaussian_log_prob_backward.register_fake
def _(grad, z, mu, logvar, backend):
    g_mu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    return torch.empty_like(z, memory_format=torch.contiguous_format), g_mu, torch.empty_like(g_mu)


def _setup_context(ctx, inputs, output):
    z, mu, logvar, backend = inputs
    ctx.save_for_backward(z, mu, logvar)
    ctx.backend = backend


def _backward_with(kernels, ctx, grad):
    z, mu, logvar = ctx.saved_tensors
    # The upstream gradient may arrive in another dtype (autocast); the kernels read the compute dtype.
    g_z, g_mu, g_lv = kernels(grad.to(compute_dtype(z.dtype)), z, mu, logvar, ctx.backend)
    return g_z, g_mu, g_lv, None


def _backward(ctx, grad):
    return _backward_with(gaussian_log_prob_backward, ctx, grad)


gaussian_log_prob.register_autograd(_backward, setup_context=_setup_context)

_Eager = eager_twin("_EagerGaussianLogProb", _forward, _setup_context, _backward_with, _backward_kernels)

# run(z, mu, logvar, backend) -> log-densities, through the custom op or its eager twin.
run = dispatcher(gaussian_log_prob, _Eager)
