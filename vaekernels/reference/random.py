"""The vaekernels random stream in plain torch integer arithmetic (docs/random.md).

Philox4x32-10 (Random123) on int64 tensors that hold uint32 values, and the Box-Muller
normals built on it.  Slow, exact, and the oracle every backend's stream is checked against.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


def _mulhilo(m: int, x: torch.Tensor):
    """(hi, lo) 32-bit halves of the 64-bit product m * x, x < 2^32 held in int64.

    x is split into 16-bit halves so every partial product stays below 2^49 and int64 never
    overflows (torch's int64 multiply would wrap, but relying on that is fragile)."""
    p_lo = m * (x & 0xFFFF)  # < 2^48
    p_hi = m * (x >> 16)  # < 2^48; the product is p_hi * 2^16 + p_lo
    low48 = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    return (p_hi >> 16) + (low48 >> 32), low48 & _MASK32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors (or ints) holding uint32 values; returns 4 int64 tensors."""
    c0, c1, c2, c3, k0, k1 = (torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3, k0, k1))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def philox(counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """counters int64 [n, 4], keys int64 [n, 2] (uint32 values) -> int64 [n, 4] of uint32 values."""
    return torch.stack(philox4x32_10(*counters.unbind(-1), *keys.unbind(-1)), dim=-1)


def _key(seed) -> tuple:
    seed = int(seed) & ((1 << 64) - 1)
    return seed & _MASK32, seed >> 32


def philox_fill(seed: int, first_group: int, n_groups: int, device=None) -> torch.Tensor:
    """The words of groups first_group .. first_group+n_groups-1 of the stream keyed by ``seed``."""
    g = torch.arange(first_group, first_group + n_groups, dtype=torch.int64, device=device)
    k0, k1 = _key(seed)
    zero = torch.zeros_like(g)
    return torch.stack(philox4x32_10(g & _MASK32, g >> 32, zero, zero, k0, k1), dim=-1)


def _uniform(w: torch.Tensor) -> torch.Tensor:
    """u(w) = fma(float32(w), 2^-32, 2^-33) in float32, as float64.

    float32(w) * 2^-32 + 2^-33 is exact in float64 (24-bit mantissa spanning at most 2^-1..2^-33),
    so one rounding to float32 afterwards is exactly the fused multiply-add."""
    return (w.to(torch.float32).to(torch.float64) * 2.0**-32 + 2.0**-33).to(torch.float32).to(torch.float64)


# Eager even inside torch.compile: the stream depends on the seed's value (a data-dependent int),
# which a traced graph would otherwise bake in as a constant.
@torch.compiler.disable
def normal(seed, numel: int, start: int = 0, device=None) -> torch.Tensor:
    """Elements start .. start+numel-1 of the normal stream keyed by ``seed`` (float32, 1-D).

    The float32 uniforms are exactly the kernels'; log, sqrt, cos and sin are evaluated in
    float64 and rounded once, so this is the correctly rounded value the kernels approximate
    within a few ulp."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first, last = start >> 2, (start + numel - 1) >> 2
    w0, w1, w2, w3 = philox_fill(seed, first, last - first + 1, device).unbind(-1)
    r01 = torch.sqrt(-2.0 * torch.log(_uniform(w0)))
    r23 = torch.sqrt(-2.0 * torch.log(_uniform(w2)))
    a01 = 2.0 * torch.pi * _uniform(w1)
    a23 = 2.0 * torch.pi * _uniform(w3)
    groups = torch.stack((r01 * torch.cos(a01), r01 * torch.sin(a01), r23 * torch.cos(a23), r23 * torch.sin(a23)), -1)
    offset = start - 4 * first
    return groups.reshape(-1)[offset : offset + numel].to(torch.float32)
