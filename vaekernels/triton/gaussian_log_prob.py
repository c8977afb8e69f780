"""The diagonal Gaussian log-density in Triton, summed over the last dimension, and its gradient.

Forward   out[s, n]      = -1/2 sum_d (log 2 pi + lv[n, d] + (z[s, n, d] - mu[n, d])^2 e^-lv[n, d])
Backward  grad_z[s, n]   = -c u iv                       (c = grad[s, n], u = z - mu, iv = e^-lv)
          grad_mu[n]     = iv sum_s c u
          grad_logvar[n] = -1/2 (sum_s c - iv sum_s c u^2)

z: [S, N, D]; mu, logvar: [N, D] (broadcast over S); out, grad: [S, N] float32.  Inputs
float32/float16/bfloat16, loaded as float32; float32 accumulation; gradients in the input dtype.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import FP_FUSION

_LOG_2PI: tl.constexpr = tl.constexpr(math.log(2 * math.pi))


@triton.jit
def _gaussian_log_prob_fwd_kernel(z_ptr, mu_ptr, lv_ptr, out_ptr, S, N, D,
                                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[s, n] for example n = program 0 and the BLOCK_S samples of program 1.

    Tiles of [BLOCK_S, BLOCK_D] over d; the tile sums are added elementwise across the d loop and
    reduced once at the end (fixed order)."""
    n = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    sm = s < S
    rows = s.to(tl.int64) * N + n
    acc = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    cst = tl.zeros([BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        mu = tl.load(mu_ptr + n * D + d, mask=dm, other=0.0).to(tl.float32)
        lv = tl.load(lv_ptr + n * D + d, mask=dm, other=0.0).to(tl.float32)
        iv = tl.exp(-lv)  # e^-lv once per tile row, not per sample
        cst += tl.where(dm, _LOG_2PI + lv, 0.0)
        z = tl.load(z_ptr + rows[:, None] * D + d[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
        u = z.to(tl.float32) - mu[None, :]  # masked d: 0 - 0
        acc += u * u * iv[None, :]
    out = -0.5 * tl.sum(cst, 0) - 0.5 * tl.sum(acc, 1)
    tl.store(out_ptr + rows, out, mask=sm)


@triton.jit
def _gaussian_log_prob_bwd_kernel(grad_ptr, z_ptr, mu_ptr, lv_ptr, gz_ptr, gmu_ptr, glv_ptr, S, N, D,
                                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Example n = program 0, latent dims d of program 1: grad_z for all s, grad_mu, grad_logvar.

    Walks s in tiles of [BLOCK_S, BLOCK_D]; each tile's column sums are added in tile order."""
    n = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    mu = tl.load(mu_ptr + n * D + d, mask=dm, other=0.0).to(tl.float32)
    iv = tl.exp(-tl.load(lv_ptr + n * D + d, mask=dm, other=0.0).to(tl.float32))
    a1 = tl.zeros([BLOCK_D], tl.float32)  # sum_s c u
    a2 = tl.zeros([BLOCK_D], tl.float32)  # sum_s c u^2
    csum = tl.zeros([BLOCK_S], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        sm = s < S
        rows = s.to(tl.int64) * N + n
        c = tl.load(grad_ptr + rows, mask=sm, other=0.0)
        csum += c
        mask = sm[:, None] & dm[None, :]
        z = tl.load(z_ptr + rows[:, None] * D + d[None, :], mask=mask, other=0.0)
        u = tl.where(mask, z.to(tl.float32) - mu[None, :], 0.0)
        cu = c[:, None] * u
        tl.store(gz_ptr + rows[:, None] * D + d[None, :], (-cu * iv[None, :]).to(gz_ptr.dtype.element_ty), mask=mask)
        a1 += tl.sum(cu, 0)
        a2 += tl.sum(cu * u, 0)
    out_ty = gmu_ptr.dtype.element_ty
    tl.store(gmu_ptr + n * D + d, (iv * a1).to(out_ty), mask=dm)
    tl.store(glv_ptr + n * D + d, (-0.5 * (tl.sum(csum, 0) - iv * a2)).to(out_ty), mask=dm)


def _blocks(s: int, d: int):
    block_d = min(triton.next_power_of_2(max(d, 1)), 128)
    block_s = min(triton.next_power_of_2(max(s, 1)), max(1, 4096 // block_d), 64)
    return block_s, block_d


def gaussian_log_prob_fwd(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, out: torch.Tensor,
                          s: int, n: int, d: int) -> None:
    """out [s, n] (float32) from contiguous z [s, n, d] and mu, logvar [n, d].

    Memory traffic: reads z once (s n d elements) and the [n, d] parameters once per program row
    (cache hits across the s blocks); writes s n floats."""
    block_s, block_d = _blocks(s, d)
    _gaussian_log_prob_fwd_kernel[(n, triton.cdiv(s, block_s))](z, mu, logvar, out, s, n, d,
                                                                 BLOCK_S=block_s, BLOCK_D=block_d,
                                                                 enable_fp_fusion=FP_FUSION)


def gaussian_log_prob_bwd(grad: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                          grad_z: torch.Tensor, grad_mu: torch.Tensor, grad_logvar: torch.Tensor,
                          s: int, n: int, d: int) -> None:
    """grad_z [s, n, d], grad_mu, grad_logvar [n, d] from grad [s, n] (float32); all contiguous, s, d >= 1.

    Memory traffic: reads z, writes grad_z (2 s n d elements), plus the [n, d] arrays.  Parallelism
    is n * cdiv(d, BLOCK_D) programs, each looping over all s (no split over s yet: a [D]-shaped mu
    with many samples runs on few programs)."""
    block_s, block_d = _blocks(s, d)
    _gaussian_log_prob_bwd_kernel[(n, triton.cdiv(d, block_d))](grad, z, mu, logvar, grad_z, grad_mu, grad_logvar,
                                                                 s, n, d, BLOCK_S=block_s, BLOCK_D=block_d,
                                                                 enable_fp_fusion=FP_FUSION)
