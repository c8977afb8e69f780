"""Gaussian KL in Triton: the elementwise KL reduced over D in the same pass, and its backward.

With delta = logvar - plv, Delta = mu - pm and s = e^(-plv/2) (pm, plv: the prior, 0 when absent):

Forward   KL[r, c] = 0.5 * (e^delta - 1 - delta) + 0.5 * (Delta s)^2
          out = KL [n, d] | its row sums [n] | their sum [] | sum / n []
Backward  grad_mu = g Delta s^2        grad_logvar = 0.5 g expm1(delta)
          grad_pm = -grad_mu           grad_plv    = -0.5 g (expm1(delta) + (Delta s)^2)

mu, logvar: contiguous [n, d]; a prior: contiguous [p, d], example r uses prior row r % p.
Free bits (lambda > 0): a first pass writes the column means col[c] = mean_r KL[r, c]; where
col[c] < lambda, KL[:, c] becomes lambda (and its gradient 0) before the reduction.

Determinism: every sum is a fixed tree (tl.sum) over a fixed tile, or a loop in a fixed order over
fixed blocks; block sizes depend on n, d, p only.  No atomics.  Arithmetic is float32; the 0-d
total over rows is accumulated in float64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import FP_FUSION

_TILE = 2048  # elements of a [rows, cols] tile per loop step (4 warps: 16 per thread)
_MAX_BLOCKS = 256  # most row blocks whose partial column sums are kept
_NUM_WARPS = 4


@triton.jit
def _expm1_parts(x):
    """(phi, em1) = (e^x - 1 - x, e^x - 1), each accurate also for x -> 0.

    |x| <= 0.5: the Taylor series x^2/2! + ... + x^9/9!, remainder <= |x|^10/10! / (1 - |x|/11),
    at most 2.7e-9 (0.05 ulp) relative to phi >= 0.1065 (its least value on |x| = 0.5).  Beyond,
    e^x - 1 - x, whose cancellation magnifies the error of e^x by at most e^x / phi(x) <= 11 (at
    x = 0.5).  tl.exp of float32 is ex2.approx(x log2 e) on NVIDIA: ~2 ulp plus |x| 2^-24
    relative, so phi is within ~2e-6 relative over |x| <= 30 (the interpreter: numpy's exp)."""
    s = tl.fma(x, 1.0 / 362880.0, 1.0 / 40320.0)
    s = tl.fma(s, x, 1.0 / 5040.0)
    s = tl.fma(s, x, 1.0 / 720.0)
    s = tl.fma(s, x, 1.0 / 120.0)
    s = tl.fma(s, x, 1.0 / 24.0)
    s = tl.fma(s, x, 1.0 / 6.0)
    s = tl.fma(s, x, 0.5)
    s = s * (x * x)
    e = tl.exp(x) - 1.0
    small = tl.abs(x) <= 0.5
    return tl.where(small, s, e - x), tl.where(small, x + s, e)


@triton.jit
def _load_f32(ptr, off, mask):
    return tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _kl_tile(mu_ptr, lv_ptr, pm_ptr, plv_ptr, off, poff, mask, HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr):
    """KL of the elements at ``off`` against the prior elements at ``poff`` (masked lanes: 0)."""
    mu = _load_f32(mu_ptr, off, mask)
    delta = _load_f32(lv_ptr, off, mask)
    if HAS_PM:
        mu = mu - _load_f32(pm_ptr, poff, mask)
    if HAS_PLV:
        plv = _load_f32(plv_ptr, poff, mask)
        delta = delta - plv
        # (Delta e^(-plv/2))^2, not Delta^2 e^-plv: neither factor alone overflows.
        mu = mu * tl.exp(-0.5 * plv)
    phi, _ = _expm1_parts(delta)
    # Two non-negative terms: the sum has no cancellation.
    return 0.5 * tl.fma(mu, mu, phi)


@triton.jit
def _gaussian_kl_fwd_kernel(mu_ptr, lv_ptr, pm_ptr, plv_ptr, col_ptr, out_ptr, n, d, p, lam,
                            HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr, FREE_BITS: tl.constexpr,
                            REDUCTION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows pid*BLOCK_R ... of out = KL [n, d] (REDUCTION 0) or its row sums (1; [n]), or, for the
    0-d reductions (2, 3), this block's total in float64 at out[pid] (added up by _sum_rows_kernel).
    Each row is walked in BLOCK_D chunks; a lane's running sum then one tl.sum tree per row."""
    pid = tl.program_id(0).to(tl.int64)  # int64: offsets pass 2^31 for large n * d
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n
    prows = rows % p
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        cmask = cols < d
        mask = rmask[:, None] & cmask[None, :]
        off = rows[:, None] * d + cols[None, :]
        kl = _kl_tile(mu_ptr, lv_ptr, pm_ptr, plv_ptr, off, prows[:, None] * d + cols[None, :], mask, HAS_PM, HAS_PLV)
        if FREE_BITS:  # a column whose batch mean is below lambda is the constant lambda (NaN: kept)
            col = tl.load(col_ptr + cols, mask=cmask, other=0.0)
            kl = tl.where((col < lam)[None, :], lam, kl)
        if REDUCTION == 0:
            tl.store(out_ptr + off, kl, mask=mask)
        else:
            acc += tl.where(mask, kl, 0.0)
    if REDUCTION == 1:
        tl.store(out_ptr + rows, tl.sum(acc, axis=1), mask=rmask)
    elif REDUCTION >= 2:
        # float64 across rows: the 0-d total stays accurate for any n.
        tl.store(out_ptr + pid, tl.sum(tl.sum(acc, axis=1).to(tl.float64), axis=0))


@triton.jit
def _gaussian_kl_colsum_kernel(mu_ptr, lv_ptr, pm_ptr, plv_ptr, part_ptr, n, d, p, rows_per_block,
                               HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr,
                               BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """part[b, c] = sum of KL[r, c] over the rows r of block b (rows_per_block of them), for the
    columns of program (b, pid 1); float32 lanes summed in row order, then one tl.sum tree."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < d
    r_end = tl.minimum(n, (b + 1) * rows_per_block)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for r0 in range(b * rows_per_block, r_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows < r_end)[:, None] & cmask[None, :]
        kl = _kl_tile(mu_ptr, lv_ptr, pm_ptr, plv_ptr, rows[:, None] * d + cols[None, :],
                      (rows % p)[:, None] * d + cols[None, :], mask, HAS_PM, HAS_PLV)
        acc += tl.where(mask, kl, 0.0)
    tl.store(part_ptr + b * d + cols, tl.sum(acc, axis=0), mask=cmask)


@triton.jit
def _sum_rows_kernel(part_ptr, out_ptr, rows, cols, divisor, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[c] = (sum_r part[r, c]) / divisor for the columns of this program, in part's dtype, the
    rows walked in order in BLOCK_R steps (deterministic), stored in out's dtype."""
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < cols
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=part_ptr.dtype.element_ty)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        acc += tl.load(part_ptr + r[:, None] * cols + c[None, :], mask=(r < rows)[:, None] & cmask[None, :], other=0.0)
    tl.store(out_ptr + c, (tl.sum(acc, axis=0) / divisor).to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _gaussian_kl_bwd_kernel(grad_ptr, mu_ptr, lv_ptr, pm_ptr, plv_ptr, col_ptr, gmu_ptr, glv_ptr, gpm_ptr, gplv_ptr,
                            k_rows, m, d, p, rows_per_block, lam, g_divisor,
                            HAS_PM: tl.constexpr, HAS_PLV: tl.constexpr, FREE_BITS: tl.constexpr,
                            REDUCTION: tl.constexpr, REDUCE_PRIOR: tl.constexpr,
                            BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """The gradients over the [K, M] view of mu / logvar (M = p*d, K = n / p): program (b, pid 1)
    owns rows b*rows_per_block ... and columns pid1*BLOCK_M ...; column j's prior element is j.

    grad: [n, d] / [n] / [] by REDUCTION (0-d: divided by g_divisor, n for batchmean).
    REDUCE_PRIOR (K > 1): gpm, gplv point at float32 partials [K / rows_per_block, M] (or at the
    prior gradients themselves when there is one block): this block's column sums, in row order
    of BLOCK_K-row steps and one tl.sum tree.  Else (K == 1) each prior gradient is stored."""
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    jmask = j < m
    rj = j // d  # example row of column j within a [p, d] block
    if HAS_PM:
        pm = _load_f32(pm_ptr, j, jmask)
    if HAS_PLV:  # the prior and e^(-plv/2) are loaded and computed once per column
        plv = _load_f32(plv_ptr, j, jmask)
        s = tl.exp(-0.5 * plv)
    if FREE_BITS:  # a clamped column is a constant: no gradient
        active = tl.load(col_ptr + j % d, mask=jmask, other=0.0) >= lam
    if REDUCTION >= 2:
        g0 = tl.load(grad_ptr).to(tl.float32) / g_divisor
    acc_pm = tl.zeros([BLOCK_K, BLOCK_M], dtype=tl.float32)
    acc_plv = tl.zeros([BLOCK_K, BLOCK_M], dtype=tl.float32)
    k_end = tl.minimum(k_rows, (b + 1) * rows_per_block)
    for k0 in range(b * rows_per_block, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask = (k < k_end)[:, None] & jmask[None, :]
        e = k[:, None] * m + j[None, :]
        if REDUCTION == 0:
            g = tl.load(grad_ptr + e, mask=mask, other=0.0)
        elif REDUCTION == 1:
            g = tl.load(grad_ptr + k[:, None] * p + rj[None, :], mask=mask, other=0.0)
        else:
            g = tl.zeros([BLOCK_K, BLOCK_M], dtype=tl.float32) + g0
        if FREE_BITS:
            g = tl.where(active[None, :], g, 0.0)
        mu = _load_f32(mu_ptr, e, mask)
        delta = _load_f32(lv_ptr, e, mask)
        if HAS_PM:
            mu = mu - pm[None, :]
        if HAS_PLV:
            delta = delta - plv[None, :]
            q = mu * s[None, :]
            gmu = g * (q * s[None, :])  # Delta e^-plv as (Delta s) s: no overflow of e^-plv alone
        else:
            q = mu
            gmu = g * mu
        _, em1 = _expm1_parts(delta)
        half_g = 0.5 * g
        tl.store(gmu_ptr + e, gmu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + e, (half_g * em1).to(glv_ptr.dtype.element_ty), mask=mask)
        # -0.5 g (expm1(delta) + (Delta s)^2), the sum in one rounding (its terms may cancel).
        gplv = -half_g * tl.fma(q, q, em1)
        if REDUCE_PRIOR:
            if HAS_PM:
                acc_pm += tl.where(mask, -gmu, 0.0)
            if HAS_PLV:
                acc_plv += tl.where(mask, gplv, 0.0)
        else:
            if HAS_PM:
                tl.store(gpm_ptr + e, (-gmu).to(gpm_ptr.dtype.element_ty), mask=mask)
            if HAS_PLV:
                tl.store(gplv_ptr + e, gplv.to(gplv_ptr.dtype.element_ty), mask=mask)
    if REDUCE_PRIOR:
        if HAS_PM:
            tl.store(gpm_ptr + b * m + j, tl.sum(acc_pm, axis=0).to(gpm_ptr.dtype.element_ty), mask=jmask)
        if HAS_PLV:
            tl.store(gplv_ptr + b * m + j, tl.sum(acc_plv, axis=0).to(gplv_ptr.dtype.element_ty), mask=jmask)


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(1, x))


def _tile(cols: int):
    """(BLOCK_R, BLOCK_C): a tile of about _TILE elements, the columns first (up to 1024)."""
    block_c = min(_pow2(cols), 1024)
    return max(1, _TILE // block_c), block_c


def _sum_rows(part: torch.Tensor, out: torch.Tensor, rows: int, cols: int, divisor: float) -> None:
    block_r, block_c = 16, min(_pow2(cols), 256)
    _sum_rows_kernel[(triton.cdiv(cols, block_c),)](part, out, rows, cols, divisor, BLOCK_R=block_r, BLOCK_C=block_c,
                                                    num_warps=_NUM_WARPS, enable_fp_fusion=FP_FUSION)


def _prior_or(t, fallback):
    # Absent prior: any tensor of the right device stands in; HAS_PM / HAS_PLV keep it unread.
    return fallback if t is None else t


def gaussian_kl_fwd(mu, logvar, prior_mu, prior_logvar, out, col, n: int, d: int, p: int, reduction: int,
                    free_bits: float) -> None:
    """out = KL reduced by ``reduction`` (0 none [n, d], 1 per example [n], 2 sum [], 3 sum / n []);
    col [d]: the column means, written and applied when free_bits > 0 (else None).

    mu, logvar: contiguous [n, d] (float32/float16/bfloat16); prior_mu, prior_logvar: contiguous
    [p, d] or None; out, col: float32.  Inputs are checked by the caller.  Memory traffic: reads
    2nd + 2pd elements (each prior element is re-read per row that uses it: from L2 for p < n) and
    writes nd / n / 1 float32; free bits read the inputs twice and keep a [<= 256, d] float32
    partial."""
    has_pm, has_plv = prior_mu is not None, prior_logvar is not None
    pm, plv = _prior_or(prior_mu, mu), _prior_or(prior_logvar, mu)
    block_r, block_d = _tile(d)
    block_r = min(block_r, _pow2(n))
    if free_bits > 0:
        rows_per_block = max(triton.cdiv(n, _MAX_BLOCKS), block_r)
        nblocks = triton.cdiv(n, rows_per_block)
        part = torch.empty((nblocks, d), dtype=torch.float32, device=mu.device)
        _gaussian_kl_colsum_kernel[(nblocks, triton.cdiv(d, block_d))](
            mu, logvar, pm, plv, part, n, d, p, rows_per_block, HAS_PM=has_pm, HAS_PLV=has_plv,
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=_NUM_WARPS, enable_fp_fusion=FP_FUSION)
        _sum_rows(part, col, nblocks, d, float(n))
    grid = (triton.cdiv(n, block_r),)
    target = out if reduction < 2 else torch.empty(grid[0], dtype=torch.float64, device=mu.device)
    _gaussian_kl_fwd_kernel[grid](mu, logvar, pm, plv, col if free_bits > 0 else out, target, n, d, p, free_bits,
                                  HAS_PM=has_pm, HAS_PLV=has_plv, FREE_BITS=free_bits > 0, REDUCTION=reduction,
                                  BLOCK_R=block_r, BLOCK_D=block_d, num_warps=_NUM_WARPS, enable_fp_fusion=FP_FUSION)
    if reduction >= 2:
        _sum_rows(target, out, grid[0], 1, float(n) if reduction == 3 else 1.0)


def gaussian_kl_bwd(grad, mu, logvar, prior_mu, prior_logvar, col, grad_mu, grad_logvar, grad_prior_mu,
                    grad_prior_logvar, n: int, d: int, p: int, reduction: int, free_bits: float) -> None:
    """The gradients of gaussian_kl_fwd: grad (float32, shaped as its out) -> grad_mu, grad_logvar
    [n, d] and grad_prior_mu / grad_prior_logvar [p, d] (None with their prior), in the inputs' dtype.

    Seen as [K, M] = [n / p, p d] (K = 1 without a prior), a prior gradient is a column sum over K:
    fixed blocks of rows (at most 256) write float32 partials, added in block order by
    _sum_rows_kernel.  Memory traffic: reads 2nd + 2pd input elements and the upstream gradient,
    writes 2nd + 2pd gradient elements (plus 2 * blocks * pd float32 partials when K > 1)."""
    has_pm, has_plv = prior_mu is not None, prior_logvar is not None
    if not (has_pm or has_plv):
        p = n
    k_rows, m = n // p, p * d
    block_k, block_m = _tile(m)
    block_k = min(block_k, _pow2(k_rows))
    rows_per_block = max(triton.cdiv(k_rows, _MAX_BLOCKS), block_k)
    nblocks = triton.cdiv(k_rows, rows_per_block)
    reduce_prior = k_rows > 1 and (has_pm or has_plv)
    gpm, gplv = grad_prior_mu, grad_prior_logvar
    if reduce_prior and nblocks > 1:
        gpm = torch.empty((nblocks, m), dtype=torch.float32, device=mu.device) if has_pm else None
        gplv = torch.empty((nblocks, m), dtype=torch.float32, device=mu.device) if has_plv else None
    _gaussian_kl_bwd_kernel[(nblocks, triton.cdiv(m, block_m))](
        grad, mu, logvar, _prior_or(prior_mu, mu), _prior_or(prior_logvar, mu), col if free_bits > 0 else grad,
        grad_mu, grad_logvar, _prior_or(gpm, grad_mu), _prior_or(gplv, grad_mu), k_rows, m, d, p, rows_per_block,
        free_bits, float(n) if reduction == 3 else 1.0,
        HAS_PM=has_pm, HAS_PLV=has_plv, FREE_BITS=free_bits > 0, REDUCTION=reduction, REDUCE_PRIOR=reduce_prior,
        BLOCK_K=block_k, BLOCK_M=block_m, num_warps=_NUM_WARPS, enable_fp_fusion=FP_FUSION)
    if reduce_prior and nblocks > 1:
        if has_pm:
            _sum_rows(gpm, grad_prior_mu, nblocks, m, 1.0)
        if has_plv:
            _sum_rows(gplv, grad_prior_logvar, nblocks, m, 1.0)
