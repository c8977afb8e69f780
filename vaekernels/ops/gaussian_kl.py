"""``vaekernels::gaussian_kl`` and ``vaekernels::gaussian_kl_backward``.

With delta = logvar - plv and Delta = mu - pm (pm = prior_mu, plv = prior_logvar; 0 when absent):

Forward   KL = 0.5 * (e^delta - 1 - delta) + 0.5 * (Delta * e^(-plv/2))^2       elementwise, [n, D]
          then the reduction over D (per example), over everything (sum), or sum / n (batchmean)
Backward  dKL/dmu  = Delta e^-plv        dKL/dlogvar = 0.5 expm1(delta)
          dKL/dpm  = -dKL/dmu            dKL/dplv    = -0.5 expm1(delta) - 0.5 Delta^2 e^-plv

mu, logvar: [..., D], n = mu.numel() / D examples; a prior is [P, D] seen flat -- its own shape
[D] (P = 1), [B, D] (P = B, mu's last two dims) or mu's shape (P = n) -- and example r uses prior
row r % P, so a broadcast prior is never materialized.  Both priors, when given, have one shape
(vaekernels.functional expands the smaller).  Prior gradients come back in the prior's shape:
for P < n a column sum over the examples, done deterministically (fixed row blocks whose partial
sums are added in a fixed order; no atomics).

Free bits (lambda > 0, Kingma et al. 2016): kl_d = mean over the n examples of KL[:, d]; where
kl_d < lambda every KL[:, d] becomes the constant lambda (no gradient), before the reduction.  The
forward then makes two passes over the inputs (column means, then the output) and returns the
D column means as a second output, which backward reads to know the dimensions that pass
gradient.  Without free bits that output is empty and the forward is one pass.

Output dtype: float32 for float32/float16/bfloat16 inputs (the arithmetic is float32 and a KL or
its sum can exceed the float16 range where float32 does not; torch autocast runs kl_div in float32
for the same reason), float64 for float64.  Gradients take the dtype of their input.

Memory traffic (s = input element size, c = 4 or 8 the output's): forward reads 2 n D s + the
priors' P D s and writes n D c / n c / c (none / per example / sum); free bits read the inputs
twice.  Backward reads mu, logvar, the priors and the upstream gradient, writes 2 n D s + the
priors' gradients.  Backward keeps the inputs only (plus the D column means with free bits).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ._common import contig as _contig
from ._common import plain_eager
from ._common import ptr as _ptr
from ..backends import compute_dtype

REDUCTIONS = ("none", "per_example", "sum", "batchmean")  # the kernels' reduction codes 0..3


def _out_shape(mu: Tensor, reduction: str) -> tuple:
    if reduction == "none":
        return tuple(mu.shape)
    return tuple(mu.shape[:-1]) if reduction == "per_example" else ()



def _fwd(mu, logvar, pm, plv, out, col, n, d, p, reduction, free_bits, backend) -> None:
    code = REDUCTIONS.index(reduction)
    if backend == "cpu":
        backends.module("cpu").gaussian_kl_fwd(
            mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _ptr(plv), out.data_ptr(), _ptr(col), n, d, p, code,
            free_bits, backends.DTYPE_CODES[mu.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").gaussian_kl_fwd(
            mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _ptr(plv), out.data_ptr(), _ptr(col), n, d, p, code,
            free_bits, backends.DTYPE_CODES[mu.dtype], *backends.cuda_launch_args(mu))
    elif backend == "triton":
        backends.module("triton").gaussian_kl.gaussian_kl_fwd(mu, logvar, pm, plv, out, col, n, d, p, code, free_bits)
    else:
        raise ValueError(f"gaussian_kl: no kernel for backend {backend!r}")


def _bwd(grad, mu, logvar, pm, plv, col, gmu, glv, gpm, gplv, n, d, p, reduction, free_bits, backend) -> None:
    code = REDUCTIONS.index(reduction)
    if backend == "cpu":
        backends.module("cpu").gaussian_kl_bwd(
            grad.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _ptr(plv), _ptr(col), gmu.data_ptr(),
            glv.data_ptr(), _ptr(gpm), _ptr(gplv), n, d, p, code, free_bits, backends.DTYPE_CODES[mu.dtype],
            torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").gaussian_kl_bwd(
            grad.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _ptr(plv), _ptr(col), gmu.data_ptr(),
            glv.data_ptr(), _ptr(gpm), _ptr(gplv), n, d, p, code, free_bits, backends.DTYPE_CODES[mu.dtype],
            *backends.cuda_launch_args(mu))
    elif backend == "triton":
        backends.module("triton").gaussian_kl.gaussian_kl_bwd(
            grad, mu, logvar, pm, plv, col, gmu, glv, gpm, gplv, n, d, p, code, free_bits)
    else:
        raise ValueError(f"gaussian_kl: no kernel for backend {backend!r}")


def _prior_rows(mu: Tensor, pm: Optional[Tensor], plv: Optional[Tensor]) -> int:
    prior = pm if pm is not None else plv
    return 1 if prior is None else prior.numel() // mu.shape[-1]


def _forward(mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor],
             reduction: str, free_bits: float, backend: str) -> Tuple[Tensor, Optional[Tensor]]:
    """(KL reduced, the D column means with free bits else None)."""
    cdt = compute_dtype(mu.dtype)
    d = mu.shape[-1]
    n = math.prod(mu.shape[:-1])
    out = mu.new_empty(_out_shape(mu, reduction), dtype=cdt)
    col = mu.new_empty((d,), dtype=cdt) if free_bits > 0 else None
    if n == 0 or d == 0:  # empty sums: 0; batchmean and the column means of no examples: 0 / 0
        out.fill_(math.nan if reduction == "batchmean" and n == 0 else 0.0)
        if col is not None:
            col.fill_(math.nan)
        return out, col
    pm, plv = _contig(prior_mu), _contig(prior_logvar)
    _fwd(mu.contiguous(), logvar.contiguous(), pm, plv, out, col, n, d, _prior_rows(mu, pm, plv), reduction,
         free_bits, backend)
    return out, col


def _grad_like(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)


def _backward_kernels(grad: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
                      prior_logvar: Optional[Tensor], col: Optional[Tensor], reduction: str, free_bits: float,
                      backend: str) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """(grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar); None for an absent prior."""
    gmu, glv, gpm, gplv = _grad_like(mu), _grad_like(mu), _grad_like(prior_mu), _grad_like(prior_logvar)
    d = mu.shape[-1]
    n = math.prod(mu.shape[:-1])
    if n == 0 or d == 0:
        for g in (gmu, glv, gpm, gplv):
            if g is not None:
                g.zero_()
        return gmu, glv, gpm, gplv
    pm, plv = _contig(prior_mu), _contig(prior_logvar)
    _bwd(grad.contiguous(), mu.contiguous(), logvar.contiguous(), pm, plv, col if free_bits > 0 else None, gmu, glv,
         gpm, gplv, n, d, _prior_rows(mu, pm, plv), reduction, free_bits, backend)
    return gmu, glv, gpm, gplv


@torch.library.custom_op("vaekernels::gaussian_kl", mutates_args=())
def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor],
                reduction: str, free_bits: float, backend: str) -> Tuple[Tensor, Tensor]:
    """mu, logvar: [..., D]; prior_mu, prior_logvar: None or one shape ([D], mu's last two dims, or
    mu's shape) -> (KL reduced: [..., D] / [...] / [], column means: [D] with free bits else [0])."""
    out, col = _forward(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend)
    return out, out.new_empty((0,)) if col is None else col


@gaussian_kl.register_fake
def _(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend):
    cdt = compute_dtype(mu.dtype)
    col_shape = (mu.shape[-1],) if free_bits > 0 else (0,)
    return mu.new_empty(_out_shape(mu, reduction), dtype=cdt), mu.new_empty(col_shape, dtype=cdt)


@torch.library.custom_op("vaekernels::gaussian_kl_backward", mutates_args=())
def gaussian_kl_backward(grad: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
                         prior_logvar: Optional[Tensor], col: Tensor, reduction: str, free_bits: float,
                         backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad: the forward output's shape (compute dtype); col: the forward's column means ->
    (grad_mu, grad_logvar: mu's shape and dtype; grad_prior_mu, grad_prior_logvar: the priors'
    shapes and dtype, or [0] for an absent prior)."""
    gmu, glv, gpm, gplv = _backward_kernels(grad, mu, logvar, prior_mu, prior_logvar, col, reduction, free_bits,
                                            backend)
    # A custom op cannot return None: an absent prior gets an empty gradient (mapped back to None).
    return gmu, glv, mu.new_empty((0,)) if gpm is None else gpm, mu.new_empty((0,)) if gplv is None else gplv


@gaussian_kl_backward.register_fake
def _(grad, mu, logvar, prior_mu, prior_logvar, col, reduction, free_bits, backend):
    def like(t):
        return mu.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    gmu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    return gmu, torch.empty_like(gmu), like(prior_mu), like(prior_logvar)


def _save(ctx, mu, logvar, prior_mu, prior_logvar, col, reduction, free_bits, backend) -> None:
    ctx.save_for_backward(mu, logvar, prior_mu, prior_logvar, col)
    ctx.args = (reduction, free_bits, backend)


def _setup_context(ctx, inputs, output):
    col = output[1]
    ctx.mark_non_differentiable(col)
    # Its gradient is never read: no zeros of its size made per backward (materialized, they cost
    # a fill of the output's size and ~5 us a call).
    ctx.set_materialize_grads(False)
    _save(ctx, *inputs[:4], col, *inputs[4:])


def _backward_with(kernels, ctx, grad, _grad_col=None):
    if grad is None:  # only the non-differentiable column means reached the loss
        return (None,) * 7
    mu, logvar, prior_mu, prior_logvar, col = ctx.saved_tensors
    reduction, free_bits, backend = ctx.args
    # The upstream gradient may arrive in another dtype (autocast); the kernels read the compute dtype.
    grad = grad.to(compute_dtype(mu.dtype))
    gmu, glv, gpm, gplv = kernels(grad, mu, logvar, prior_mu, prior_logvar, col, reduction, free_bits, backend)
    return (gmu, glv, gpm if prior_mu is not None else None, gplv if prior_logvar is not None else None,
            None, None, None)


def _backward(ctx, grad, _grad_col):
    return _backward_with(gaussian_kl_backward, ctx, grad)


gaussian_kl.register_autograd(_backward, setup_context=_setup_context)


class _EagerGaussianKL(torch.autograd.Function):
    """The eager twin of vaekernels::gaussian_kl (as _common.eager_twin makes them: the same
    _forward, saved tensors and backward kernels, so the same bits), with one output: the column
    means of free bits stay on ctx instead of being a second, non-differentiable output, whose
    bookkeeping costs autograd ~5 us a call (a tenth of a small VAE's KL, forward + backward)."""

    @staticmethod
    def forward(ctx, mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend):
        out, col = _forward(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend)
        _save(ctx, mu, logvar, prior_mu, prior_logvar, col, reduction, free_bits, backend)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _backward_with(_backward_kernels, ctx, grad)


def run(mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor], reduction: str,
        free_bits: float, backend: str) -> Tensor:
    """The KL through vaekernels::gaussian_kl or, in plain eager execution, its eager twin."""
    if plain_eager(mu, logvar, prior_mu, prior_logvar):
        return _EagerGaussianKL.apply(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend)
    return gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, backend)[0]
