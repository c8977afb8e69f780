"""log-mean-exp in Triton, and the online log-sum-exp combine that iwae_bound reuses.

Forward   out[o, i]     = log (1/n) sum_j exp(x[o, j, i])             x: [O, n, I]; out: [O, I] float32
Backward  grad_x[o,j,i] = grad[o, i] exp(x[o, j, i] - out[o, i] - log n)    (0 where out = -inf)

The online state (m, s) stands for s * exp(m) and follows the rules of
csrc/include/vaekernels/logsumexp.h: a scale exp(m - m_new) is never formed when m == m_new (no
inf - inf, so all -inf gives -inf and all +inf gives +inf), NaN sticks, and a softmax weight is 0
where the whole sum is exp(-inf).  Inputs float32/float16/bfloat16 (loaded as float32); outputs
and the upstream gradient float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import FP_FUSION

_NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))


@triton.jit
def lse_combine(m1, s1, m2, s2):
    """The online log-sum-exp state (m1, s1) merged with (m2, s2); (x, 1) is one term x, (-inf, 0)
    none.  Elementwise; also the combine_fn of tl.reduce (a fixed tree: deterministic)."""
    m = tl.where((m2 > m1) | (m2 != m2), m2, m1)  # max that keeps NaN from either side
    # scale 1 where a max is already the new max: exp(-inf - -inf), exp(inf - inf) are never used
    a = tl.where(m1 == m, 1.0, tl.exp(m1 - m))
    b = tl.where(m2 == m, 1.0, tl.exp(m2 - m))
    return m, s1 * a + s2 * b


@triton.jit
def lse_block(r, mask, axis: tl.constexpr):
    """The state (m, s) of the terms r where mask holds, reduced along axis."""
    return tl.reduce((tl.where(mask, r, _NEG_INF), tl.where(mask, 1.0, 0.0)), axis, lse_combine)


@triton.jit
def lse_weight(x, lse):
    """exp(x - lse), 0 where lse = -inf (every term was exp(-inf): none carries weight)."""
    return tl.where(lse == _NEG_INF, 0.0, tl.exp(x - lse))


@triton.jit
def _log_mean_exp_fwd_kernel(x_ptr, out_ptr, n, inner, log_n, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    """out[o, i] = logsumexp_j x[o, j, i] - log n for the BLOCK_I columns i of program (o, p).

    Walks j in tiles of [BLOCK_N, BLOCK_I]: each tile's states are a tl.reduce over j, merged into
    the running per-column states in tile order -- the order depends on the shapes only."""
    o = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    im = i < inner
    m = tl.full([BLOCK_I], _NEG_INF, tl.float32)
    s = tl.zeros([BLOCK_I], tl.float32)
    for j0 in range(0, n, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        mask = (j < n)[:, None] & im[None, :]
        x = tl.load(x_ptr + (o * n + j.to(tl.int64))[:, None] * inner + i[None, :], mask=mask, other=0.0)
        bm, bs = lse_block(x.to(tl.float32), mask, 0)
        m, s = lse_combine(m, s, bm, bs)
    tl.store(out_ptr + o * inner + i, m + tl.log(s) - log_n, mask=im)


@triton.jit
def _log_mean_exp_bwd_kernel(grad_ptr, x_ptr, out_ptr, gx_ptr, total, n, inner, log_n, BLOCK: tl.constexpr):
    """grad_x[e] = grad[o, i] * exp(x[e] - out[o, i] - log n), e = (o*n + j)*inner + i < total."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < total
    oi = (e // (n * inner)) * inner + e % inner  # (o, i) of element e
    x = tl.load(x_ptr + e, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + oi, mask=mask, other=0.0)
    lse = tl.load(out_ptr + oi, mask=mask, other=0.0) + log_n
    tl.store(gx_ptr + e, (g * lse_weight(x, lse)).to(gx_ptr.dtype.element_ty), mask=mask)


def log_mean_exp_fwd(x: torch.Tensor, out: torch.Tensor, outer: int, n: int, inner: int) -> None:
    """out [outer, inner] (float32) = log-mean-exp of contiguous x [outer, n, inner] over n (n >= 1).

    Memory traffic: reads x once, writes outer*inner floats; (outer, cdiv(inner, BLOCK_I)) programs,
    each loops over n (few programs when outer*inner is small and n large: not split yet)."""
    block_i = min(triton.next_power_of_2(inner), 64)
    block_n = min(triton.next_power_of_2(n), max(1, 2048 // block_i))
    _log_mean_exp_fwd_kernel[(outer, triton.cdiv(inner, block_i))](
        x, out, n, inner, math.log(n), BLOCK_N=block_n, BLOCK_I=block_i, enable_fp_fusion=FP_FUSION)


def log_mean_exp_bwd(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, grad_x: torch.Tensor,
                     outer: int, n: int, inner: int) -> None:
    """grad_x = grad * softmax weights, elementwise over contiguous x [outer, n, inner]; grad, out:
    contiguous [outer, inner] float32.  Memory traffic: reads x, writes grad_x (the [outer, inner]
    reads hit cache)."""
    total = x.numel()
    block = 1024
    _log_mean_exp_bwd_kernel[(triton.cdiv(total, block),)](grad, x, out, grad_x, total, n, inner, math.log(n),
                                                            BLOCK=block, enable_fp_fusion=FP_FUSION)
