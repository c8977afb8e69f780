"""Reparameterized sampling in Triton: ``z = mu + exp(0.5 * logvar) * eps``, forward and backward.

Forward   z[j, i]        = mu[i] + sigma[i] * eps(seed, j*n + i),   sigma = exp(0.5 * logvar)
Backward  grad_mu[i]     = sum_j grad_z[j, i]
          grad_logvar[i] = 0.5 * sigma[i] * sum_j grad_z[j, i] * eps(seed, j*n + i)

mu, logvar, grad_mu, grad_logvar: [n]; z, grad_z: [k, n] (row-major, the [K, ..., D] output
flattened); eps is the vaekernels stream (vaekernels/triton/random.py) keyed by the 64-bit
``seed``, generated in registers and never stored: the backward regenerates it from the seed
(eps = (z - mu) / sigma would lose every digit when sigma << |mu|).  All arithmetic in float32;
inputs may be float32, float16 or bfloat16 and outputs take the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import FP_FUSION
from .random import philox_normal, philox_normal_tile

# Forward: groups (of 4 consecutive outputs) per program -> 1024 outputs, 8 per thread at 4 warps.
_FWD_BLOCK = 256
# Backward: columns per program; each loops over all k rows.  Not yet tuned on a GPU.
_BWD_BLOCK_N = 512
_NUM_WARPS = 4


@triton.jit
def _reparameterize_fwd_kernel(mu_ptr, logvar_ptr, seed_ptr, z_ptr, n, total,
                               BLOCK: tl.constexpr, WRAP_ONCE: tl.constexpr, WHOLE_GROUPS: tl.constexpr):
    """z[e] = mu[e % n] + exp(0.5 * logvar[e % n]) * eps(seed, e) for e < total = k * n.

    mu, logvar: [n]; seed: int64 [] (the key's bit pattern); z: [k, n] seen flat.
    Program p owns the groups p*BLOCK .. p*BLOCK + BLOCK - 1, i.e. the 4*BLOCK consecutive outputs
    from e0 = 4*BLOCK*p, as a [BLOCK, 4] tile: one Philox call per row serves its 4 outputs.
    WRAP_ONCE (n >= 4*BLOCK): a tile crosses at most one row end of z, so e % n is a compare and
    a subtract instead of a division per element.
    WHOLE_GROUPS (total % 4 == 0): the bounds mask is per group, constant along the 4 lanes, so
    Triton keeps a group's 4 outputs in one thread and vectorizes the store even when it cannot
    prove total % 16 == 0."""
    pid = tl.program_id(0).to(tl.int64)  # int64: offsets pass 2^31 for large k * n
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    g = pid * BLOCK + tl.arange(0, BLOCK)
    eps = philox_normal_tile(seed, g)
    off = 4 * tl.arange(0, BLOCK)[:, None] + tl.arange(0, 4)[None, :]  # position in the tile
    e0 = pid * (4 * BLOCK)
    if WHOLE_GROUPS:
        mask = (g < total // 4)[:, None]
    else:
        mask = e0 + off < total
    i = (e0 % n) + off  # in [0, n + 4*BLOCK): the column, before wrapping past the row end
    if WRAP_ONCE:
        i = tl.where(i >= n, i - n, i)
    else:
        i = i.to(tl.int32) % n  # n < 4*BLOCK here, so i < 8*BLOCK: an int32 remainder is enough
    mu = tl.load(mu_ptr + i, mask=mask, other=0.0).to(tl.float32)
    logvar = tl.load(logvar_ptr + i, mask=mask, other=0.0).to(tl.float32)
    # tl.exp of float32 is ex2.approx(x * log2 e) on NVIDIA: ~2 ulp, plus |x| * 2^-24 relative
    # from rounding x * log2 e -- a few ulp of sigma for any realistic logvar.  NaN/inf propagate.
    sigma = tl.exp(0.5 * logvar)
    # Explicit fma: one rounding, the same on every Triton target (the compiler would otherwise
    # contract mul+add at its discretion).
    z = tl.fma(sigma, eps, mu)
    tl.store(z_ptr + e0 + off, z.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reparameterize_bwd_kernel(grad_z_ptr, logvar_ptr, seed_ptr, grad_mu_ptr, grad_logvar_ptr, n, k,
                               BLOCK_N: tl.constexpr, ALIGNED: tl.constexpr):
    """grad_mu[i] = sum_j grad_z[j, i];
    grad_logvar[i] = 0.5 * exp(0.5 * logvar[i]) * sum_j grad_z[j, i] * eps(seed, j*n + i).

    grad_z: [k, n]; logvar, grad_mu, grad_logvar: [n]; seed: int64 [].
    Program p owns the columns p*BLOCK_N .. p*BLOCK_N + BLOCK_N - 1 and loops over j = 0 .. k-1
    in order, accumulating in float32 registers: a fixed order, deterministic, no atomics.
    ALIGNED (n % 4 == 0): row j of a column quad 4c..4c+3 is exactly group j*n/4 + c, so the
    columns form a [BLOCK_N/4, 4] tile and one Philox call serves 4 columns, as in the forward.
    Otherwise a quad of columns straddles two groups whose split moves with j, so each element
    draws its own group (philox_normal: 4x the Philox work, one Box-Muller pair per element)."""
    pid = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    e_row = pid * 0  # int64 j*n, carried through the loop (j*n can pass 2^31)
    if ALIGNED:
        quad = pid * (BLOCK_N // 4) + tl.arange(0, BLOCK_N // 4)
        i = 4 * quad[:, None] + tl.arange(0, 4)[None, :]
        mask = (quad < n // 4)[:, None]  # == i < n; constant along a quad, so loads stay vectorized
        sum_dz = tl.zeros([BLOCK_N // 4, 4], dtype=tl.float32)
        sum_dz_eps = tl.zeros([BLOCK_N // 4, 4], dtype=tl.float32)
        for _ in range(k):
            eps = philox_normal_tile(seed, (e_row >> 2) + quad)
            dz = tl.load(grad_z_ptr + e_row + i, mask=mask, other=0.0).to(tl.float32)
            sum_dz += dz
            sum_dz_eps = tl.fma(dz, eps, sum_dz_eps)  # explicit fma: same rounding on every target
            e_row += n
    else:
        i = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = i < n
        sum_dz = tl.zeros([BLOCK_N], dtype=tl.float32)
        sum_dz_eps = tl.zeros([BLOCK_N], dtype=tl.float32)
        for _ in range(k):
            eps = philox_normal(seed, e_row + i)
            dz = tl.load(grad_z_ptr + e_row + i, mask=mask, other=0.0).to(tl.float32)
            sum_dz += dz
            sum_dz_eps = tl.fma(dz, eps, sum_dz_eps)
            e_row += n
    logvar = tl.load(logvar_ptr + i, mask=mask, other=0.0).to(tl.float32)
    half_sigma = 0.5 * tl.exp(0.5 * logvar)  # d sigma / d logvar; NaN/inf propagate
    out_ty = grad_mu_ptr.dtype.element_ty  # logvar's dtype, for both gradients
    tl.store(grad_mu_ptr + i, sum_dz.to(out_ty), mask=mask)
    tl.store(grad_logvar_ptr + i, (half_sigma * sum_dz_eps).to(out_ty), mask=mask)


def reparameterize_fwd(mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor, z: torch.Tensor) -> None:
    """z[j, i] = mu[i] + exp(0.5 * logvar[i]) * eps(seed, j*n + i), written into ``z``.

    mu, logvar: contiguous [n] (float32/float16/bfloat16, one dtype); seed: 0-d int64 on their
    device, the 64-bit key's bit pattern, read by the kernel (so a CUDA graph replays with a
    refilled seed and no recompile per seed); z: contiguous [k, n], preallocated, same dtype.
    Inputs are checked by the caller.  Memory traffic: writes k*n elements, reads 2n (the
    re-reads of mu/logvar for every row hit L2 unless 2n elements outgrow it): floor
    (k + 2) * n * itemsize bytes.  Arithmetic: about 80 sm_90 instructions per output (Philox
    ~18, log+sqrt ~16, libdevice sin+cos ~26, the rest ~20), so on an H100 the issue rate, not
    the memory, bounds it (estimated from SASS, not yet timed)."""
    n = mu.numel()
    total = z.numel()
    if total == 0:
        return
    grid = (triton.cdiv(triton.cdiv(total, 4), _FWD_BLOCK),)
    _reparameterize_fwd_kernel[grid](mu, logvar, seed, z, n, total,
                                     BLOCK=_FWD_BLOCK, WRAP_ONCE=n >= 4 * _FWD_BLOCK, WHOLE_GROUPS=total % 4 == 0,
                                     num_warps=_NUM_WARPS, enable_fp_fusion=FP_FUSION)


def reparameterize_bwd(grad_z: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor,
                       grad_mu: torch.Tensor, grad_logvar: torch.Tensor) -> None:
    """grad_mu[i] = sum_j grad_z[j, i];
    grad_logvar[i] = 0.5 * exp(0.5 * logvar[i]) * sum_j grad_z[j, i] * eps(seed, j*n + i).

    grad_z: contiguous [k, n]; logvar: contiguous [n]; seed: 0-d int64 (as in the forward);
    grad_mu, grad_logvar: contiguous [n] preallocated in logvar's dtype.  eps is regenerated from
    the seed; float32 accumulation over j in order (deterministic).  k == 0 writes zeros.
    Inputs are checked by the caller.  Memory traffic: reads k*n + n, writes 2n elements: floor
    (k + 3) * n * itemsize bytes.  Arithmetic per element of grad_z as in the forward when
    n % 4 == 0; about twice that otherwise (4 Philox calls per 4 elements instead of 1).
    Parallelism is cdiv(n, 512) programs: few for small n and large k (no split over k yet)."""
    n = logvar.numel()
    if n == 0:
        return
    k = grad_z.numel() // n
    grid = (triton.cdiv(n, _BWD_BLOCK_N),)
    _reparameterize_bwd_kernel[grid](grad_z, logvar, seed, grad_mu, grad_logvar, n, k,
                                     BLOCK_N=_BWD_BLOCK_N, ALIGNED=n % 4 == 0, num_warps=_NUM_WARPS,
                                     enable_fp_fusion=FP_FUSION)
