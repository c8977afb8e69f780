"""``vaekernels::log_mean_exp`` and ``vaekernels::log_mean_exp_backward``.

x seen as [O, n, I] around the reduced dimension ``dim`` (O: the dims before it, I: after):

Forward   out[o, i]     = log (1/n) sum_j exp(x[o, j, i])      online max-shifted logsumexp
Backward  dx[o, j, i]   = grad[o, i] exp(x[o, j, i] - out[o, i] - log n)     (softmax weights)

Where every x along dim is -inf the value is -inf and the gradient 0 (torch.logsumexp's is NaN);
+inf and NaN propagate (vaekernels/logsumexp.h).  out is [O, I] seen as x.shape without dim, in
the compute dtype (float32, float64 for float64), which is also what backward reads: a float16
out would round the softmax weights to 3 digits.

Memory: forward reads x once and writes O I; backward reads x and writes dx.  Backward keeps x
and out.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import backends
from ..backends import compute_dtype
from ._common import dispatcher, eager_twin


def _sizes(x: Tensor, dim: int) -> Tuple[int, int, int]:
    return math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:])


def _fwd(x, out, dim, backend) -> None:
    o, n, i = _sizes(x, dim)
    if backend == "cpu":
        backends.module("cpu").log_mean_exp_fwd(
            x.data_ptr(), out.data_ptr(), o, n, i, backends.DTYPE_CODES[x.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").log_mean_exp_fwd(
            x.data_ptr(), out.data_ptr(), o, n, i, backends.DTYPE_CODES[x.dtype], *backends.cuda_launch_args(x))
    elif backend == "triton":
        backends.module("triton").log_mean_exp.log_mean_exp_fwd(x, out, o, n, i)
    else:
        raise ValueError(f"log_mean_exp: no kernel for backend {backend!r}")


def _bwd(grad, x, out, g_x, dim, backend) -> None:
    o, n, i = _sizes(x, dim)
    if backend == "cpu":
        backends.module("cpu").log_mean_exp_bwd(
            grad.data_ptr(), x.data_ptr(), out.data_ptr(), g_x.data_ptr(), o, n, i, backends.DTYPE_CODES[x.dtype],
            torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").log_mean_exp_bwd(
            grad.data_ptr(), x.data_ptr(), out.data_ptr(), g_x.data_ptr(), o, n, i, backends.DTYPE_CODES[x.dtype],
            *backends.cuda_launch_args(x))
    elif backend == "triton":
        backends.module("triton").log_mean_exp.log_mean_exp_bwd(grad, x, out, g_x, o, n, i)
    else:
        raise ValueError(f"log_mean_exp: no kernel for backend {backend!r}")


def _out_shape(x: Tensor, dim: int) -> tuple:
    return tuple(x.shape[:dim]) + tuple(x.shape[dim + 1:])


def _forward(x: Tensor, dim: int, backend: str) -> Tensor:
    out = x.new_empty(_out_shape(x, dim), dtype=compute_dtype(x.dtype))
    if out.numel():
        _fwd(x.contiguous(), out, dim, backend)
    return out


@torch.library.custom_op("vaekernels::log_mean_exp", mutates_args=())
def log_mean_exp(x: Tensor, dim: int, backend: str) -> Tensor:
    """x: [..., n, ...] with n = x.shape[dim] >= 1 (dim >= 0) -> x.shape without dim, compute dtype."""
    return _forward(x, dim, backend)


@log_mean_exp.register_fake
def _(x, dim, backend):
    return x.new_empty(_out_shape(x, dim), dtype=compute_dtype(x.dtype))


def _backward_kernels(grad: Tensor, x: Tensor, out: Tensor, dim: int, backend: str) -> Tensor:
    g_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    if g_x.numel():
        _bwd(grad.contiguous(), x.contiguous(), out.contiguous(), g_x, dim, backend)
    return g_x


@torch.library.custom_op("vaekernels::log_mean_exp_backward", mutates_args=())
def log_mean_exp_backward(grad: Tensor, x: Tensor, out: Tensor, dim: int, backend: str) -> Tensor:
    """grad, out: x.shape without dim (compute dtype) -> grad_x: x's shape and dtype."""
    return _backward_kernels(grad, x, out, dim, backend)


@log_mean_exp_backward.register_fake
def _(grad, x, out, dim, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, dim, backend = inputs
    ctx.save_for_backward(x, output)
    ctx.args = (dim, backend)


def _backward_with(kernels, ctx, grad):
    x, out = ctx.saved_tensors
    dim, backend = ctx.args
    return kernels(grad.to(out.dtype), x, out, dim, backend), None, None


def _backward(ctx, grad):
    return _backward_with(log_mean_exp_backward, ctx, grad)


log_mean_exp.register_autograd(_backward, setup_context=_setup_context)

_Eager = eager_twin("_EagerLogMeanExp", _forward, _setup_context, _backward_with, _backward_kernels)

# run(x, dim, backend) -> out, through the custom op or its eager twin.
run = dispatcher(log_mean_exp, _Eager)
