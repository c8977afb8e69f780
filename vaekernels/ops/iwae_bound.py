"""``vaekernels::iwae_bound`` and ``vaekernels::iwae_bound_backward``.

With u = z - mu, v = z - pm, iq = e^-logvar, ip = e^-plv (pm = prior_mu, plv = prior_logvar; 0 when
absent), per example b and sample k:

Forward   log w_k = lpx_k + log N(z_k; pm, e^plv) - log N(z_k; mu, e^logvar)
                  = lpx_k - 1/2 sum_d (plv - logvar + v^2 ip - u^2 iq)
          bound   = 1/(1 - alpha) (logsumexp_k (1 - alpha) log w_k - log K)    (alpha = 1: mean_k)
          weights = softmax_k (1 - alpha) log w_k   (alpha = 1: 1/K), = d bound / d log w_k
Backward  with c_k = grad * weights_k:
          d lpx_k = c_k               dz_k = c_k (u iq - v ip)
          dmu     = -iq sum_k c_k u    dlogvar = 1/2 (sum_k c_k - iq sum_k c_k u^2)   (0 with STL)
          dpm     =  ip sum_k c_k v    dplv    = -1/2 (sum_k c_k - ip sum_k c_k v^2)

log_px_z, lw, weights: [K, B]; z: [K, B, D]; mu, logvar: [B, D]; a prior is [D] or [B, D] (row
stride 0 or D for the kernels, never materialized); a [D] prior's gradient is summed over the
examples in a fixed order.  An example whose bound is -inf (every log w_k = -inf; for alpha >= 1
any) has weights 0, hence gradients 0 (not NaN); a sample with log w_k = -inf has weight 0.
+inf and NaN propagate (vaekernels/logsumexp.h).

Dtypes: z, mu, logvar and the priors share one dtype; log_px_z, the bound, the weights and the
upstream gradient are in its compute dtype (float32, float64 for float64): bounds near -1e4 and
their sums leave the float16 range.  Gradients take their input's dtype.

Memory: forward reads z once (K B D elements) plus the [B, D] parameters and writes the bound and
the weights (B + K B); backward reads z and writes dz (2 K B D) plus the weights and the [B, D]
parameters and gradients.  Backward keeps the inputs and the weights [K, B] only -- nothing of
z's size (eager autograd keeps several).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ..backends import compute_dtype
from ._common import contig as _contig
from ._common import dispatcher, eager_twin
from ._common import ptr as _ptr


def _stride(prior: Optional[Tensor], d: int) -> int:
    # Row stride of a prior seen as rows of d: 0 for [D] (every example reads the one row), d for [B, D].
    return d if prior is not None and prior.dim() == 2 else 0


def _fwd(lpx, z, mu, logvar, pm, plv, bound, weights, alpha, backend) -> None:
    k, b, d = z.shape
    if backend == "cpu":
        backends.module("cpu").iwae_bound_fwd(
            lpx.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _stride(pm, d), _ptr(plv),
            _stride(plv, d), bound.data_ptr(), weights.data_ptr(), k, b, d, alpha, backends.DTYPE_CODES[z.dtype],
            torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").iwae_bound_fwd(
            lpx.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm), _stride(pm, d), _ptr(plv),
            _stride(plv, d), bound.data_ptr(), weights.data_ptr(), k, b, d, alpha, backends.DTYPE_CODES[z.dtype],
            *backends.cuda_launch_args(z))
    elif backend == "triton":
        backends.module("triton").iwae_bound.iwae_bound_fwd(lpx, z, mu, logvar, pm, plv, bound, weights, alpha)
    else:
        raise ValueError(f"iwae_bound: no kernel for backend {backend!r}")


def _bwd(grad, weights, z, mu, logvar, pm, plv, g_lpx, g_z, g_mu, g_lv, g_pm, g_plv, backend) -> None:
    k, b, d = z.shape
    if backend == "cpu":
        backends.module("cpu").iwae_bound_bwd(
            grad.data_ptr(), weights.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm),
            _stride(pm, d), _ptr(plv), _stride(plv, d), g_lpx.data_ptr(), g_z.data_ptr(), _ptr(g_mu), _ptr(g_lv),
            _ptr(g_pm), _ptr(g_plv), k, b, d, backends.DTYPE_CODES[z.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").iwae_bound_bwd(
            grad.data_ptr(), weights.data_ptr(), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(), _ptr(pm),
            _stride(pm, d), _ptr(plv), _stride(plv, d), g_lpx.data_ptr(), g_z.data_ptr(), _ptr(g_mu), _ptr(g_lv),
            _ptr(g_pm), _ptr(g_plv), k, b, d, backends.DTYPE_CODES[z.dtype], *backends.cuda_launch_args(z))
    elif backend == "triton":
        backends.module("triton").iwae_bound.iwae_bound_bwd(
            grad, weights, z, mu, logvar, pm, plv, g_lpx, g_z, g_mu, g_lv, g_pm, g_plv)
    else:
        raise ValueError(f"iwae_bound: no kernel for backend {backend!r}")


def _forward(log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
             prior_logvar: Optional[Tensor], alpha: float, stl: bool, backend: str) -> Tuple[Tensor, Tensor]:
    k, b, _ = z.shape
    cdt = compute_dtype(z.dtype)
    bound = z.new_empty((b,), dtype=cdt)
    weights = z.new_empty((k, b), dtype=cdt)
    if bound.numel():
        _fwd(log_px_z.contiguous(), z.contiguous(), mu.contiguous(), logvar.contiguous(), _contig(prior_mu),
             _contig(prior_logvar), bound, weights, alpha, backend)
    return bound, weights


@torch.library.custom_op("vaekernels::iwae_bound", mutates_args=())
def iwae_bound(log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
               prior_logvar: Optional[Tensor], alpha: float, stl: bool, backend: str) -> Tuple[Tensor, Tensor]:
    """log_px_z: [K, B] (compute dtype); z: [K, B, D]; mu, logvar: [B, D]; priors: None, [D] or [B, D]
    -> (bound [B], weights [K, B]), both in the compute dtype.  ``stl`` only affects backward."""
    return _forward(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha, stl, backend)


@iwae_bound.register_fake
def _(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha, stl, backend):
    cdt = compute_dtype(z.dtype)
    return z.new_empty(z.shape[1:2], dtype=cdt), z.new_empty(z.shape[:2], dtype=cdt)


def _grad_buffer(t: Optional[Tensor], wanted: bool, ref: Tensor) -> Tensor:
    # A custom op cannot return None: a gradient not computed is an empty tensor (mapped back to None).
    return torch.empty_like(t, memory_format=torch.contiguous_format) if wanted and t is not None else ref.new_empty((0,))


def _backward_kernels(grad: Tensor, weights: Tensor, z: Tensor, mu: Tensor, logvar: Tensor,
                      prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor], q_grad: bool, prior_grad: bool,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    g_lpx = torch.empty_like(weights, memory_format=torch.contiguous_format)
    g_z = torch.empty_like(z, memory_format=torch.contiguous_format)
    g_mu, g_lv = _grad_buffer(mu, q_grad, z), _grad_buffer(logvar, q_grad, z)
    g_pm, g_plv = _grad_buffer(prior_mu, prior_grad, z), _grad_buffer(prior_logvar, prior_grad, z)
    if z.shape[1] == 0 or z.shape[2] == 0:  # no examples, or D = 0: lw = lpx, nothing else to differentiate
        torch.mul(grad[None, :], weights, out=g_lpx)
        for g in (g_z, g_mu, g_lv, g_pm, g_plv):
            g.zero_()
        return g_lpx, g_z, g_mu, g_lv, g_pm, g_plv
    _bwd(grad.contiguous(), weights.contiguous(), z.contiguous(), mu.contiguous(), logvar.contiguous(),
         _contig(prior_mu), _contig(prior_logvar), g_lpx, g_z, g_mu if q_grad else None, g_lv if q_grad else None,
         g_pm if prior_grad and prior_mu is not None else None,
         g_plv if prior_grad and prior_logvar is not None else None, backend)
    return g_lpx, g_z, g_mu, g_lv, g_pm, g_plv


@torch.library.custom_op("vaekernels::iwae_bound_backward", mutates_args=())
def iwae_bound_backward(grad: Tensor, weights: Tensor, z: Tensor, mu: Tensor, logvar: Tensor,
                        prior_mu: Optional[Tensor], prior_logvar: Optional[Tensor], q_grad: bool,
                        prior_grad: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """grad: [B], weights: [K, B] (compute dtype) -> (grad_log_px_z [K, B] compute dtype, grad_z,
    grad_mu, grad_logvar, grad_prior_mu, grad_prior_logvar), each in its input's shape and dtype, or
    [0] where not computed: the q gradients without ``q_grad`` (STL), a prior's when absent or
    without ``prior_grad``."""
    return _backward_kernels(grad, weights, z, mu, logvar, prior_mu, prior_logvar, q_grad, prior_grad, backend)


@iwae_bound_backward.register_fake
def _(grad, weights, z, mu, logvar, prior_mu, prior_logvar, q_grad, prior_grad, backend):
    def like(t, wanted):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if wanted and t is not None else z.new_empty((0,))

    return (torch.empty_like(weights, memory_format=torch.contiguous_format),
            torch.empty_like(z, memory_format=torch.contiguous_format), like(mu, q_grad), like(logvar, q_grad),
            like(prior_mu, prior_grad), like(prior_logvar, prior_grad))


def _setup_context(ctx, inputs, output):
    log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha, stl, backend = inputs
    weights = output[1]
    ctx.mark_non_differentiable(weights)
    # Its gradient is never read: no zeros of its size made per backward (materialized, they cost
    # a fill of the output's size and ~5 us a call).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(z, mu, logvar, prior_mu, prior_logvar, weights)
    ctx.args = (stl, backend)


def _backward_with(kernels, ctx, grad, _grad_weights):
    if grad is None:  # only the non-differentiable weights reached the loss
        return (None,) * 9
    z, mu, logvar, prior_mu, prior_logvar, weights = ctx.saved_tensors
    stl, backend = ctx.args
    need = ctx.needs_input_grad
    q_grad = not stl and (need[2] or need[3])
    prior_grad = need[4] or need[5]
    # The upstream gradient may arrive in another dtype (autocast); the kernels read the compute dtype.
    g_lpx, g_z, g_mu, g_lv, g_pm, g_plv = kernels(
        grad.to(weights.dtype), weights, z, mu, logvar, prior_mu, prior_logvar, q_grad, prior_grad, backend)

    def out(g, wanted):
        return g if wanted else None

    return (g_lpx, g_z, out(g_mu, q_grad), out(g_lv, q_grad), out(g_pm, prior_grad and prior_mu is not None),
            out(g_plv, prior_grad and prior_logvar is not None), None, None, None)


def _backward(ctx, grad, _grad_weights):
    return _backward_with(iwae_bound_backward, ctx, grad, _grad_weights)


iwae_bound.register_autograd(_backward, setup_context=_setup_context)

_Eager = eager_twin("_EagerIWAEBound", _forward, _setup_context, _backward_with, _backward_kernels)

# run(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha, stl, backend) -> (bound, weights),
# through the custom op or its eager twin.
run = dispatcher(iwae_bound, _Eager)
