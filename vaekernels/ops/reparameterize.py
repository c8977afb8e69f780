"""``vaekernels::reparameterize`` and ``vaekernels::reparameterize_backward``.

Forward   z[k, ...] = mu + exp(0.5 * logvar) * eps_k           mu, logvar: [..., D]; z: [K, ..., D]
Backward  dmu       = sum_k dz_k
          dlogvar   = sum_k dz_k * eps_k * 0.5 * exp(0.5 * logvar)

eps is the vaekernels Philox stream keyed by ``seed`` (docs/random.md), generated in registers
and never stored: backward keeps only ``logvar`` and the 0-d ``seed`` and regenerates eps.
Numerics: regenerating eps is also exact, where eps = (z - mu) / sigma would lose every digit
when sigma << |mu| (and would need z and mu kept).  Memory traffic per element of z: forward
writes z (reads of mu/logvar amortize over K); backward reads dz.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import backends
from ._common import dispatcher, eager_twin


def _flat(t: Tensor) -> Tensor:
    # Kernels read [N] row-major: the logical order, whatever t's strides are.
    return t.contiguous().view(-1)


def _fwd(mu: Tensor, logvar: Tensor, seed: Tensor, z: Tensor, backend: str) -> None:
    n, k = mu.numel(), z.shape[0]
    if backend == "cpu":
        backends.module("cpu").reparameterize_fwd(
            mu.data_ptr(), logvar.data_ptr(), seed.data_ptr(), z.data_ptr(), n, k,
            backends.DTYPE_CODES[mu.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").reparameterize_fwd(
            mu.data_ptr(), logvar.data_ptr(), seed.data_ptr(), z.data_ptr(), n, k,
            backends.DTYPE_CODES[mu.dtype], *backends.cuda_launch_args(mu))
    elif backend == "triton":
        backends.module("triton").reparameterize.reparameterize_fwd(mu, logvar, seed, z.view(k, n))
    else:
        raise ValueError(f"reparameterize: no kernel for backend {backend!r}")


def _bwd(grad_z: Tensor, logvar: Tensor, seed: Tensor, grad_mu: Tensor, grad_logvar: Tensor, backend: str) -> None:
    n, k = logvar.numel(), grad_z.shape[0]
    if backend == "cpu":
        backends.module("cpu").reparameterize_bwd(
            grad_z.data_ptr(), logvar.data_ptr(), seed.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(),
            n, k, backends.DTYPE_CODES[logvar.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").reparameterize_bwd(
            grad_z.data_ptr(), logvar.data_ptr(), seed.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(),
            n, k, backends.DTYPE_CODES[logvar.dtype], *backends.cuda_launch_args(logvar))
    elif backend == "triton":
        backends.module("triton").reparameterize.reparameterize_bwd(
            grad_z.view(k, n), logvar, seed, grad_mu, grad_logvar)
    else:
        raise ValueError(f"reparameterize: no kernel for backend {backend!r}")


def _forward(mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: int, backend: str) -> Tensor:
    z = mu.new_empty((num_samples, *mu.shape))
    if z.numel():
        _fwd(_flat(mu), _flat(logvar), seed, z, backend)
    return z


def _backward_kernels(grad_z: Tensor, logvar: Tensor, seed: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    grad_mu = torch.empty_like(logvar, memory_format=torch.contiguous_format)
    grad_logvar = torch.empty_like(grad_mu)
    if grad_mu.numel():
        _bwd(grad_z.contiguous(), _flat(logvar), seed, grad_mu, grad_logvar, backend)
    return grad_mu, grad_logvar


@torch.library.custom_op("vaekernels::reparameterize", mutates_args=())
def reparameterize(mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: int, backend: str) -> Tensor:
    """mu, logvar: [..., D] (same shape/dtype); seed: 0-d int64 on mu's device -> z: [K, ..., D]."""
    return _forward(mu, logvar, seed, num_samples, backend)


@reparameterize.register_fake
def _(mu, logvar, seed, num_samples, backend):
    return mu.new_empty((num_samples, *mu.shape))


@torch.library.custom_op("vaekernels::reparameterize_backward", mutates_args=())
def reparameterize_backward(grad_z: Tensor, logvar: Tensor, seed: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    """grad_z: [K, ..., D]; logvar: [..., D] -> (grad_mu, grad_logvar): [..., D] each."""
    return _backward_kernels(grad_z, logvar, seed, backend)


@reparameterize_backward.register_fake
def _(grad_z, logvar, seed, backend):
    return torch.empty_like(logvar, memory_format=torch.contiguous_format), torch.empty_like(
        logvar, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    mu, logvar, seed, num_samples, backend = inputs
    ctx.save_for_backward(logvar, seed)
    ctx.backend = backend


def _backward_with(kernels, ctx, grad_z):
    logvar, seed = ctx.saved_tensors
    # grad_z may arrive in another dtype (e.g. under autocast) -- the kernels read logvar's dtype.
    grad_mu, grad_logvar = kernels(grad_z.to(logvar.dtype), logvar, seed, ctx.backend)
    return grad_mu, grad_logvar, None, None, None


def _backward(ctx, grad_z):
    return _backward_with(reparameterize_backward, ctx, grad_z)


reparameterize.register_autograd(_backward, setup_context=_setup_context)


_Eager = eager_twin("_EagerReparameterize", _forward, _setup_context, _backward_with, _backward_kernels)

# run(mu, logvar, seed, num_samples, backend) -> z, through the custom op or its eager twin.
run = dispatcher(reparameterize, _Eager)
