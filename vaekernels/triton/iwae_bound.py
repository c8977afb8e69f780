"""The IWAE / Renyi bound in Triton: forward and backward, each one pass over z.

Per example b and sample k, with u = z - mu, v = z - pm, iq = e^-lv, ip = e^-plv (an absent prior
is 0):
  lw[k]      = lpx[k, b] - 1/2 sum_d (plv - lv) - 1/2 sum_d (v^2 ip - u^2 iq)     (log 2 pi cancels)
  bound[b]   = (logsumexp_k (1 - alpha) lw[k] - log K) / (1 - alpha)      (ELBO, alpha = 1: mean_k lw)
  weight[k]  = exp(r[k] - L), r[k] = (1 - alpha) lw[k] as rounded for L   (ELBO: 1/K; bound -inf: 0)
Backward, c_k = grad[b] * weight[k] (a sample with c_k = 0 contributes exact zeros):
  grad_lpx = c_k,  grad_z = c_k (u iq - v ip),  grad_mu = -iq sum_k c_k u,
  grad_logvar = 1/2 (sum_k c_k - iq sum_k c_k u^2),  grad_pm = ip sum_k c_k v,
  grad_plv = -1/2 (sum_k c_k - ip sum_k c_k v^2)

z: [K, B, D]; mu, logvar: [B, D]; a prior: [D] (row stride 0) or [B, D] (stride D); lpx, weight:
[K, B] and bound, grad: [B] in float32.  Inputs float32/float16/bfloat16 loaded as float32,
float32 accumulation, gradients in the input dtype.  -inf / +inf / NaN follow the rules of
csrc/include/vaekernels/logsumexp.h (lse_combine).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from . import FP_FUSION
from .log_mean_exp import lse_block, lse_combine, lse_weight

_NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))


@triton.jit
def _iwae_bound_fwd_kernel(lpx_ptr, z_ptr, mu_ptr, lv_ptr, pm_ptr, plv_ptr, bound_ptr, w_ptr,
                           K, B, D, pm_stride, plv_stride, one_minus, log_k, inv_k,
                           HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr, ELBO: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Example b = program 0: walks k in tiles of [BLOCK_K, BLOCK_D] (d looped inside), writes each
    tile's r = (1 - alpha) lw to w, merges the tile's logsumexp state of r into the running one
    (online over K), then turns w into the normalized weights in a second pass over the K values
    (not over z; the ELBO's weights are 1/K, nothing stored before)."""
    b = tl.program_id(0).to(tl.int64)
    # 1/2 sum_d (plv - lv): the constant part of lw
    hd = tl.zeros([BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        hd -= tl.load(lv_ptr + b * D + d, mask=dm, other=0.0).to(tl.float32)
        if HAS_PLV:
            hd += tl.load(plv_ptr + b * plv_stride + d, mask=dm, other=0.0).to(tl.float32)
    half_dlv = 0.5 * tl.sum(hd, 0)

    m = tl.full([], _NEG_INF, tl.float32)  # online state over K: sum = s * exp(m); ELBO: s = sum lw
    s = tl.zeros([], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        rows = k.to(tl.int64) * B + b
        acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            dm = d < D
            mu = tl.load(mu_ptr + b * D + d, mask=dm, other=0.0).to(tl.float32)
            iq = tl.exp(-tl.load(lv_ptr + b * D + d, mask=dm, other=0.0).to(tl.float32))
            z = tl.load(z_ptr + rows[:, None] * D + d[None, :], mask=km[:, None] & dm[None, :], other=0.0)
            z = z.to(tl.float32)
            u = z - mu[None, :]  # masked d: 0 - 0, so the term below is 0
            if HAS_PM:
                v = z - tl.load(pm_ptr + b * pm_stride + d, mask=dm, other=0.0).to(tl.float32)[None, :]
            else:
                v = z
            if HAS_PLV:
                ip = tl.exp(-tl.load(plv_ptr + b * plv_stride + d, mask=dm, other=0.0).to(tl.float32))
                acc += v * v * ip[None, :] - u * u * iq[None, :]
            else:
                acc += v * v - u * u * iq[None, :]
        lw = tl.load(lpx_ptr + rows, mask=km, other=0.0) - half_dlv - 0.5 * tl.sum(acc, 1)
        if ELBO:
            s += tl.sum(tl.where(km, lw, 0.0), 0)
        else:
            # r = (1 - alpha) lw as rounded here is what both the log-sum-exp and (stored, reloaded)
            # the weights exp(r - L) below use: forming (1 - alpha) lw - L again lets the GPU
            # compiler fuse it into one fma with the unrounded product (Triton enables fp fusion by
            # default), off from L's r by up to half an ulp of r (512 at |r| = 1e10): un-normalized
            # weights (K = 1: inf instead of 1).
            r = one_minus * lw
            tl.store(w_ptr + rows, r, mask=km)
            bm, bs = lse_block(r, km, 0)
            m, s = lse_combine(m, s, bm, bs)
    if ELBO:
        bound = s * inv_k
    else:
        lse = m + tl.log(s)
        bound = (lse - log_k) / one_minus
    tl.store(bound_ptr + b, bound)
    # The loads below read what other threads of this program stored above.
    tl.debug_barrier()
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        rows = k.to(tl.int64) * B + b
        if ELBO:
            w = tl.zeros([BLOCK_K], tl.float32) + inv_k
        else:
            w = lse_weight(tl.load(w_ptr + rows, mask=km, other=0.0), lse)  # exp(r - L) of the stored r
        # a -inf bound (all lw = -inf; for alpha >= 1 any): weight 0, so its gradients are 0
        tl.store(w_ptr + rows, tl.where(bound == _NEG_INF, 0.0, w), mask=km)


@triton.jit
def _iwae_bound_bwd_kernel(grad_ptr, w_ptr, z_ptr, mu_ptr, lv_ptr, pm_ptr, plv_ptr,
                           glpx_ptr, gz_ptr, gmu_ptr, glv_ptr, gpm_ptr, gplv_ptr,
                           K, B, D, pm_stride, plv_stride,
                           HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr, Q_GRAD: tl.constexpr,
                           PM_GRAD: tl.constexpr, PLV_GRAD: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Example b = program 0, latent dims d of program 1: grad_z for every k, the [B, D] gradients
    of mu, logvar and the prior (row b of gpm/gplv: the prior's own gradient when it is [B, D], a
    float32 partial row when it is [D]); the d-block 0 program also writes grad_lpx[:, b].
    Walks k in tiles of [BLOCK_K, BLOCK_D]; tile column sums are added in tile order."""
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    mu = tl.load(mu_ptr + b * D + d, mask=dm, other=0.0).to(tl.float32)
    iq = tl.exp(-tl.load(lv_ptr + b * D + d, mask=dm, other=0.0).to(tl.float32))
    if HAS_PM:
        pm = tl.load(pm_ptr + b * pm_stride + d, mask=dm, other=0.0).to(tl.float32)
    else:
        pm = tl.zeros([BLOCK_D], tl.float32)
    if HAS_PLV:
        ip = tl.exp(-tl.load(plv_ptr + b * plv_stride + d, mask=dm, other=0.0).to(tl.float32))
    else:
        ip = tl.zeros([BLOCK_D], tl.float32) + 1.0
    g = tl.load(grad_ptr + b)
    a1 = tl.zeros([BLOCK_D], tl.float32)  # sum_k c u
    a2 = tl.zeros([BLOCK_D], tl.float32)  # sum_k c u^2
    p1 = tl.zeros([BLOCK_D], tl.float32)  # sum_k c v
    p2 = tl.zeros([BLOCK_D], tl.float32)  # sum_k c v^2
    csum = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < K
        rows = k.to(tl.int64) * B + b
        c = g * tl.load(w_ptr + rows, mask=km, other=0.0)
        if pd == 0:
            tl.store(glpx_ptr + rows, c, mask=km)
        csum += c
        mask = km[:, None] & dm[None, :]
        z = tl.load(z_ptr + rows[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
        # Rows with c = 0 (zero weight, e.g. lw = -inf) are exact zeros: u, v set to 0 there, and
        # dz selected, so an infinite iq or z cannot turn 0 * inf into NaN.
        live = (c != 0.0)[:, None] & mask
        u = tl.where(live, z - mu[None, :], 0.0)
        v = tl.where(live, z - pm[None, :], 0.0)
        cu = c[:, None] * u
        cv = c[:, None] * v
        dz = tl.where(live, cu * iq[None, :] - cv * ip[None, :], 0.0)
        tl.store(gz_ptr + rows[:, None] * D + d[None, :], dz.to(gz_ptr.dtype.element_ty), mask=mask)
        a1 += tl.sum(cu, 0)
        a2 += tl.sum(cu * u, 0)
        p1 += tl.sum(cv, 0)
        p2 += tl.sum(cv * v, 0)
    total = tl.sum(csum, 0)  # = grad[b] unless the bound is -inf (then 0)
    if Q_GRAD:
        tl.store(gmu_ptr + b * D + d, (-iq * a1).to(gmu_ptr.dtype.element_ty), mask=dm)
        tl.store(glv_ptr + b * D + d, (0.5 * (total - iq * a2)).to(glv_ptr.dtype.element_ty), mask=dm)
    if PM_GRAD:
        tl.store(gpm_ptr + b * D + d, (ip * p1).to(gpm_ptr.dtype.element_ty), mask=dm)
    if PLV_GRAD:
        tl.store(gplv_ptr + b * D + d, (-0.5 * (total - ip * p2)).to(gplv_ptr.dtype.element_ty), mask=dm)


@triton.jit
def _sum_rows_kernel(part_ptr, out_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[j] = sum_r part[r, j] (float32 partials, [R, C]) in tiles of BLOCK_R rows, in row order."""
    j = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    jm = j < C
    acc = tl.zeros([BLOCK_C], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        x = tl.load(part_ptr + r.to(tl.int64)[:, None] * C + j[None, :], mask=(r < R)[:, None] & jm[None, :], other=0.0)
        acc += tl.sum(x, 0)
    tl.store(out_ptr + j, acc.to(out_ptr.dtype.element_ty), mask=jm)


def _stride(prior: Optional[torch.Tensor], d: int) -> int:
    return d if prior is not None and prior.dim() == 2 else 0


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(max(d, 1)), 128)


def iwae_bound_fwd(lpx, z, mu, logvar, pm, plv, bound, weights, alpha: float) -> None:
    """bound [B] and weights [K, B] (float32) from contiguous lpx [K, B] (float32), z [K, B, D],
    mu, logvar [B, D], priors None / [D] / [B, D].  One program per example.

    Memory traffic: reads z once (K B D elements), the [B, D] parameters once per k tile (cache),
    writes B + 2 K B floats (the weights written, re-read and rewritten).  Parallelism is B
    programs, each looping over K (no split over K: B = 1 with large K runs on one program)."""
    k, b, d = z.shape
    block_d = _block_d(d)
    block_k = min(triton.next_power_of_2(k), max(1, 2048 // block_d), 32)
    dummy = mu  # never read when the HAS_ flag is off
    _iwae_bound_fwd_kernel[(b,)](
        lpx, z, mu, logvar, pm if pm is not None else dummy, plv if plv is not None else dummy, bound, weights,
        k, b, d, _stride(pm, d), _stride(plv, d), 1.0 - alpha, math.log(k), 1.0 / k,
        HAS_PM=pm is not None, HAS_PLV=plv is not None, ELBO=alpha == 1.0, BLOCK_K=block_k, BLOCK_D=block_d,
        enable_fp_fusion=FP_FUSION)


def iwae_bound_bwd(grad, weights, z, mu, logvar, pm, plv, g_lpx, g_z, g_mu, g_lv, g_pm, g_plv) -> None:
    """Gradients of iwae_bound_fwd from grad [B] and weights [K, B] (float32); all contiguous, D >= 1.  g_mu,
    g_lv (both or neither), g_pm, g_plv may be None: not computed.  A [D] prior's gradient goes
    through a float32 [B, D] partial buffer summed over B by _sum_rows_kernel (fixed order).

    Memory traffic: reads z and writes g_z (2 K B D elements), reads the weights once per d block,
    plus the [B, D] arrays.  B * cdiv(D, BLOCK_D) programs, each looping over K."""
    k, b, d = z.shape
    block_d = _block_d(d)
    block_k = min(triton.next_power_of_2(k), max(1, 4096 // block_d), 32)
    shared = [g is not None and p is not None and p.dim() == 1 for g, p in ((g_pm, pm), (g_plv, plv))]
    parts = [torch.empty((b, d), dtype=torch.float32, device=z.device) if sh else g
             for sh, g in zip(shared, (g_pm, g_plv))]
    dummy = g_z  # never touched when the matching flag is off
    _iwae_bound_bwd_kernel[(b, triton.cdiv(d, block_d))](
        grad, weights, z, mu, logvar, pm if pm is not None else mu, plv if plv is not None else mu,
        g_lpx, g_z, g_mu if g_mu is not None else dummy, g_lv if g_lv is not None else dummy,
        parts[0] if parts[0] is not None else dummy, parts[1] if parts[1] is not None else dummy,
        k, b, d, _stride(pm, d), _stride(plv, d),
        HAS_PM=pm is not None, HAS_PLV=plv is not None, Q_GRAD=g_mu is not None,
        PM_GRAD=parts[0] is not None, PLV_GRAD=parts[1] is not None, BLOCK_K=block_k, BLOCK_D=block_d,
        enable_fp_fusion=FP_FUSION)
    for sh, part, g in zip(shared, parts, (g_pm, g_plv)):
        if sh:
            block_c = min(triton.next_power_of_2(d), 128)
            _sum_rows_kernel[(triton.cdiv(d, block_c),)](part, g, b, d, BLOCK_R=32, BLOCK_C=block_c,
                                                         enable_fp_fusion=FP_FUSION)
