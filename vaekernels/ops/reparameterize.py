"""``vaekernels::reparameterize`` and ``vaekernels::reparameterize_backward``.

Forward   z[k, ...] = mu + exp(0.5 * logvar) * eps_k           mu, logvar: [..., D]; z: [K, ..., D]
Backward  dmu       = sum_k dz_k
          dlogvar   = sum_k dz_k * eps_k * 0.5 * exp(0.5 * logvar)

eps is the vaekernels Philox stream keyed by ``seed`` (docs/random.md), generated in registers
and never stored: backward keeps only ``logvar`` and the 0-d ``seed`` and regenerates eps.
Memory traffic per element of z: forward writes z (reads of mu/logvar amortize over K); backward
reads dz.

One exception, on the cpu backend in plain eager execution (the eager twin below), float32 and
float64, z of at least READ_BACK_MIN elements: when z is still alive at backward time and
unmodified (same version, storage and layout), the kernel reads eps back from it,
dlogvar = 0.5 * sum_k dz_k * (z_k - mu), in the blocks of columns where that is exact enough
(|mu| <= 16 sigma: ~4 bits of eps lost in float32; csrc/cpu/reparameterize.cpp, kZBlock) and
regenerates eps elsewhere.  Streaming z beside dz costs less than a second run of the generator
on the CPU (at (4096, 256, 64), 2 threads: ~17-20 ms against ~25-30 ms).  The twin holds only a
weak reference to z, so backward still keeps nothing of size K*B*D alive, and an in-place change
of z after the forward is seen (its version) and makes the backward regenerate.  Where
sigma << |mu| the quotient would lose every digit; there, and on every other path (the custom op,
the GPU backends, 16-bit types), eps is regenerated, which is exact.
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ._common import plain_eager, ptr


# The kernels read mu, logvar, grad_z (contiguous: row-major, the logical order whatever the
# caller's strides) as flat arrays; the cpu and cuda bindings take their addresses, so only the
# Triton launchers get [n] views (a view costs ~1 us a call here).


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
        backends.module("triton").reparameterize.reparameterize_fwd(
            mu.view(-1), logvar.view(-1), seed, z.view(k, n))
    else:
        raise ValueError(f"reparameterize: no kernel for backend {backend!r}")


def _bwd(grad_z: Tensor, logvar: Tensor, seed: Tensor, grad_mu: Tensor, grad_logvar: Tensor, backend: str,
         z: Optional[Tensor] = None, mu: Optional[Tensor] = None) -> None:
    # z, mu (cpu only): the forward's output and contiguous input, to read eps back from (see above).
    n, k = logvar.numel(), grad_z.shape[0]
    if backend == "cpu":
        backends.module("cpu").reparameterize_bwd(
            grad_z.data_ptr(), logvar.data_ptr(), ptr(z), ptr(mu), seed.data_ptr(), grad_mu.data_ptr(),
            grad_logvar.data_ptr(), n, k, backends.DTYPE_CODES[logvar.dtype], torch.get_num_threads())
    elif backend == "cuda":
        backends.module("cuda").reparameterize_bwd(
            grad_z.data_ptr(), logvar.data_ptr(), seed.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(),
            n, k, backends.DTYPE_CODES[logvar.dtype], *backends.cuda_launch_args(logvar))
    elif backend == "triton":
        backends.module("triton").reparameterize.reparameterize_bwd(
            grad_z.view(k, n), logvar.view(-1), seed, grad_mu.view(-1), grad_logvar.view(-1))
    else:
        raise ValueError(f"reparameterize: no kernel for backend {backend!r}")


def _forward(mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: int, backend: str) -> Tensor:
    z = mu.new_empty((num_samples, *mu.shape))
    if z.numel():
        _fwd(mu.contiguous(), logvar.contiguous(), seed, z, backend)
    return z


def _backward_kernels(grad_z: Tensor, logvar: Tensor, seed: Tensor, backend: str, z: Optional[Tensor] = None,
                      mu: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    grad_mu = torch.empty_like(logvar, memory_format=torch.contiguous_format)
    grad_logvar = torch.empty_like(grad_mu)
    if grad_mu.numel():
        _bwd(grad_z.contiguous(), logvar.contiguous(), seed, grad_mu, grad_logvar, backend, z, mu)
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


# Smallest z (elements) whose backward reads eps back from it.  Below, regenerating eps costs a few
# microseconds and the read-back's bookkeeping more (at (128, 32, 1): +2.5 us Python, +4-7 us
# kernel, measured).
READ_BACK_MIN = 1 << 16


class _EagerReparameterize(torch.autograd.Function):
    """The eager twin of vaekernels::reparameterize (plain eager calls skip the custom op's
    dispatch): the same _forward, saved tensors and backward kernels -- and, on the cpu backend,
    a weak reference to z for the backward to read eps back from (module docstring)."""

    @staticmethod
    def forward(ctx, mu, logvar, seed, num_samples, backend):
        read_back = (backend == "cpu" and mu.dtype in (torch.float32, torch.float64)
                     and num_samples * mu.numel() >= READ_BACK_MIN)
        # mu as the kernel reads it: mu itself when contiguous, else a private copy -- made here
        # once, for the forward kernel and the backward's read-back alike.
        mu_c = mu.contiguous() if read_back else mu
        z = _forward(mu_c, logvar, seed, num_samples, backend)
        _setup_context(ctx, (mu, logvar, seed, num_samples, backend), z)
        # Versions, address and layout tell at backward time whether z and mu still hold what the
        # forward wrote / read (an in-place change bumps the version).
        ctx.read_back = (weakref.ref(z), z._version, z.data_ptr(), z.shape, mu_c,
                         mu_c._version) if read_back else None
        return z

    @staticmethod
    def backward(ctx, grad_z):
        z, mu = _read_back(ctx.read_back)
        return _backward_with(lambda *args: _backward_kernels(*args, z=z, mu=mu), ctx, grad_z)


def _read_back(state) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(z, mu as the kernel read it) if z is alive and both are as the forward left them, else
    (None, None)."""
    if state is None:
        return None, None
    z_ref, z_version, z_ptr, z_shape, mu_c, mu_version = state
    z = z_ref()
    if (z is None or z._version != z_version or z.data_ptr() != z_ptr or z.shape != z_shape
            or not z.is_contiguous() or mu_c._version != mu_version):
        return None, None
    return z, mu_c


def run(mu: Tensor, logvar: Tensor, seed: Tensor, num_samples: int, backend: str) -> Tensor:
    """z through vaekernels::reparameterize or, in plain eager execution, its eager twin."""
    if plain_eager(mu, logvar, seed):
        return _EagerReparameterize.apply(mu, logvar, seed, num_samples, backend)
    return reparameterize(mu, logvar, seed, num_samples, backend)
