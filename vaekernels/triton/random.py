"""The vaekernels normal stream as ``@triton.jit`` helpers (docs/random.md), and two launchers
that expose the raw Philox words to the known-answer and cross-backend tests.

The stream: element ``e`` of an output viewed as a row-major ``[K, N]`` array

    g = e >> 2;   (w0, w1, w2, w3) = Philox4x32-10(counter = (lo32(g), hi32(g), 0, 0),
                                                   key     = (lo32(seed), hi32(seed)))
    u(w) = fma(float32(w), 2^-32, 2^-33)                          in float32, in (0, 1]
    r01 = sqrt(-2 ln u(w0)),  r23 = sqrt(-2 ln u(w2))
    e % 4 == 0: r01 cos(2 pi u(w1))   1: r01 sin(2 pi u(w1))
             2: r23 cos(2 pi u(w3))   3: r23 sin(2 pi u(w3))

Triton facts this module relies on (checked under the Triton 3.9 interpreter):
- ``tl.philox(seed, c0, c1, c2, c3)`` runs Philox4x32-10 only when the counters are 32-bit; with
  64-bit counters it switches to Philox4x64-10, another generator.  So the 64-bit group index is
  split here into two uint32 counter words, and ``tl.randint4x`` (whose handling of a 64-bit
  offset has changed between Triton releases) is not used.
- The key is ``(lo32(seed), hi32(seed))`` of the uint64 ``seed``, as ``tl.philox`` splits it.
- ``uint32.to(tl.float32)`` is an unsigned conversion (uitofp, round to nearest), also for
  words >= 2^31.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import FP_FUSION

_TWO_POW_M32: tl.constexpr = tl.constexpr(2.0**-32)
_TWO_POW_M33: tl.constexpr = tl.constexpr(2.0**-33)
# 2 pi = _TWO_PI_HI + _TWO_PI_LO, the head being float32(2 pi).
_TWO_PI_HI: tl.constexpr = tl.constexpr(6.2831854820251465)
_TWO_PI_LO: tl.constexpr = tl.constexpr(-1.7484556025237907e-07)


@triton.jit
def philox_words(seed, g):
    """The 4 Philox4x32-10 words of groups ``g`` of the stream keyed by ``seed``.

    seed: uint64 scalar (the 64-bit key); g: int64 block of group indices (0 <= g < 2^63).
    Returns 4 uint32 blocks shaped like ``g``: Philox4x32-10 of counter (lo32 g, hi32 g, 0, 0)
    and key (lo32 seed, hi32 seed)."""
    c0 = g.to(tl.uint32)  # truncation: lo32(g)
    c1 = (g >> 32).to(tl.uint32)  # g >= 0, so the arithmetic shift is hi32(g)
    zero = tl.zeros_like(c0)
    # 32-bit counters select Philox4x32 inside tl.philox (64-bit ones would select Philox4x64).
    return tl.philox(seed, c0, c1, zero, zero)


@triton.jit
def uniform(w):
    """u(w) = fma(float32(w), 2^-32, 2^-33) in float32, in (0, 1]; w: uint32 block."""
    # float32(w) rounds to nearest (unsigned conversion, so words >= 2^31 stay positive) and may
    # round up to 2^32, so u <= 1; the +2^-33 keeps u >= 2^-33, so ln u is finite and
    # |normal| <= sqrt(66 ln 2) ~ 6.8.  float32(w) * 2^-32 is exact, so the fma equals the
    # unfused multiply-add; tl.fma just states the contract.
    return tl.fma(w.to(tl.float32), _TWO_POW_M32, _TWO_POW_M33)


@triton.jit
def box_muller(w_radius, w_angle):
    """(r cos t, r sin t) with r = sqrt(-2 ln u(w_radius)), t = 2 pi u(w_angle); float32 blocks."""
    # tl.log/sin/cos lower to libdevice __nv_logf/__nv_sinf/__nv_cosf on NVIDIA (not the
    # approximate MUFU instructions): an approximate log would cost absolute 1e-7 on ln u near
    # u = 1, i.e. a large relative error on small radii.  -2 * ln u >= -0.0, never NaN.
    # sqrt_rn (IEEE round to nearest) is the sqrtf of the C++/CUDA backends.
    r = tl.sqrt_rn(-2.0 * tl.log(uniform(w_radius)))
    # The angle 2 pi u to within an ulp: u in (1/2, 1] becomes u - 1 (exact, Sterbenz), so
    # |t| <= pi, and 2 pi is split in two floats so the product is not rounded to float32(2 pi)
    # (a plain float32(2 pi) * u is off by up to 4e-7 rad, i.e. 1.6e-6 on a normal of 4).
    u = uniform(w_angle)
    u = tl.where(u > 0.5, u - 1.0, u)
    t = tl.fma(u, _TWO_PI_HI, u * _TWO_PI_LO)
    return r * tl.cos(t), r * tl.sin(t)


@triton.jit
def philox_normal4(seed, g):
    """The 4 normals of groups ``g``: elements 4g, 4g+1, 4g+2, 4g+3 of the stream.

    seed: uint64 scalar; g: int64 block.  Returns 4 float32 blocks shaped like ``g``:
    (r01 cos t1, r01 sin t1, r23 cos t3, r23 sin t3).  One Philox call serves 4 outputs."""
    w0, w1, w2, w3 = philox_words(seed, g)
    n0, n1 = box_muller(w0, w1)
    n2, n3 = box_muller(w2, w3)
    return n0, n1, n2, n3


@triton.jit
def philox_normal_tile(seed, g):
    """The normals of elements ``4 * g[:, None] + arange(4)[None, :]``: a float32 [BLOCK, 4] tile.

    seed: uint64 scalar; g: int64 [BLOCK] block of groups.  Row r holds group g[r]'s 4 normals in
    lane order, so a tile of consecutive groups is a contiguous run of 4 * BLOCK elements."""
    n0, n1, n2, n3 = philox_normal4(seed, g)
    lane = tl.arange(0, 4)[None, :]
    return tl.where(lane == 0, n0[:, None],
                    tl.where(lane == 1, n1[:, None], tl.where(lane == 2, n2[:, None], n3[:, None])))


@triton.jit
def philox_normal(seed, e):
    """The normal of each element ``e`` (int64 block, any layout) alone: float32 like ``e``.

    One Philox call per element (4x the Philox work of philox_normal4, for callers whose elements
    are not whole groups), but only the Box-Muller half the lane needs.  Bitwise the same value
    as philox_normal4's: the same float32 operations on the same words."""
    w0, w1, w2, w3 = philox_words(seed, e >> 2)
    lane = e & 3
    upper = lane >= 2  # lanes 2, 3 use (w2, w3)
    c, s = box_muller(tl.where(upper, w2, w0), tl.where(upper, w3, w1))
    return tl.where((lane & 1) == 0, c, s)


_BLOCK = 256  # rows per program in the test launchers below


@triton.jit
def _philox_kernel(counters_ptr, keys_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[r, :] = Philox4x32-10(counters[r, :], keys[r, :]) for r < n.

    counters: int64 [n, 4], keys: int64 [n, 2], out: int64 [n, 4], all holding uint32 values."""
    r = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = r < n
    c0 = tl.load(counters_ptr + 4 * r + 0, mask=m).to(tl.uint32)  # truncation of the int64 holders
    c1 = tl.load(counters_ptr + 4 * r + 1, mask=m).to(tl.uint32)
    c2 = tl.load(counters_ptr + 4 * r + 2, mask=m).to(tl.uint32)
    c3 = tl.load(counters_ptr + 4 * r + 3, mask=m).to(tl.uint32)
    k0 = tl.load(keys_ptr + 2 * r + 0, mask=m).to(tl.uint64)
    k1 = tl.load(keys_ptr + 2 * r + 1, mask=m).to(tl.uint64)
    # tl.philox takes the key as one uint64 and splits it back into (lo32, hi32) = (k0, k1).
    w0, w1, w2, w3 = tl.philox((k1 << 32) | k0, c0, c1, c2, c3)
    # uint32 -> int64 zero-extends (the source is unsigned).
    tl.store(out_ptr + 4 * r + 0, w0.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 1, w1.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 2, w2.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 3, w3.to(tl.int64), mask=m)


@triton.jit
def _philox_fill_kernel(seed_ptr, out_ptr, first_group, n_groups, BLOCK: tl.constexpr):
    """out[r, :] = philox_words(seed, first_group + r) for r < n_groups; out: int64 [n_groups, 4]."""
    r = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = r < n_groups
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)  # the int64 holder's bit pattern
    w0, w1, w2, w3 = philox_words(seed, first_group + r)
    tl.store(out_ptr + 4 * r + 0, w0.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 1, w1.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 2, w2.to(tl.int64), mask=m)
    tl.store(out_ptr + 4 * r + 3, w3.to(tl.int64), mask=m)


def philox(counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of explicit counters and keys, through ``tl.philox`` (known-answer tests).

    counters: contiguous int64 [n, 4], keys: contiguous int64 [n, 2], both holding uint32 values,
    on one device -> int64 [n, 4] of uint32 values, out[i] = Philox4x32-10(counters[i], keys[i])."""
    n = counters.shape[0]
    out = torch.empty((n, 4), dtype=torch.int64, device=counters.device)
    if n:
        _philox_kernel[(triton.cdiv(n, _BLOCK),)](counters, keys, out, n, BLOCK=_BLOCK, enable_fp_fusion=FP_FUSION)
    return out


def philox_fill(seed: int, first_group: int, n_groups: int, device) -> torch.Tensor:
    """The words of groups ``first_group .. first_group + n_groups - 1`` of the stream keyed by ``seed``.

    seed: 0 <= seed < 2^64; 0 <= first_group, first_group + n_groups <= 2^63 ->
    int64 [n_groups, 4] of uint32 values, row r = the words (w0, w1, w2, w3) of group first_group + r."""
    out = torch.empty((n_groups, 4), dtype=torch.int64, device=device)
    if n_groups:
        # The kernels read the key from memory as an int64 bit pattern (as the ops pass it).
        bits = seed - (1 << 64) if seed >= (1 << 63) else seed
        seed_t = torch.tensor(bits, dtype=torch.int64, device=device)
        _philox_fill_kernel[(triton.cdiv(n_groups, _BLOCK),)](seed_t, out, first_group, n_groups, BLOCK=_BLOCK,
                                                              enable_fp_fusion=FP_FUSION)
    return out
