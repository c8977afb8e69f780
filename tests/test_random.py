"""The one random stream: Philox4x32-10 known answers and the normals, on every backend."""
import math

import pytest
import torch

import vaekernels as vk
from vaekernels import backends
from vaekernels.reference import random as ref_random

from conftest import KERNEL_CASES, require

# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
# Keys that exercise both 32-bit halves and the sign bit of the int64 that carries the key.
SEEDS = [0, 1, 0xDEADBEEF, (1 << 63) + 12345, (1 << 64) - 1]


def _as_u32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32)  # wraps values >= 2^31 to the same 32 bits


def _from_u32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64) & 0xFFFFFFFF


def philox_on(backend: str, device: str, counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of each (counter, key) row through ``backend``'s own implementation."""
    counters, keys = counters.to(device), keys.to(device)
    if backend == "reference":
        return ref_random.philox(counters, keys)
    if backend == "triton":
        return backends.module("triton").random.philox(counters, keys)
    c, k = _as_u32(counters).contiguous(), _as_u32(keys).contiguous()
    out = torch.empty_like(c)
    n = c.shape[0]
    if backend == "cpu":
        backends.module("cpu").philox(c.data_ptr(), k.data_ptr(), out.data_ptr(), n)
    else:
        backends.module("cuda").philox(c.data_ptr(), k.data_ptr(), out.data_ptr(), n, *backends.cuda_launch_args(c))
    return _from_u32(out)


def philox_fill_on(backend: str, device: str, seed: int, first: int, n: int) -> torch.Tensor:
    if backend == "reference":
        return ref_random.philox_fill(seed, first, n, device)
    if backend == "triton":
        return backends.module("triton").random.philox_fill(seed, first, n, device)
    out = torch.empty((n, 4), dtype=torch.int32, device=device)
    if backend == "cpu":
        backends.module("cpu").philox_fill(seed, first, out.data_ptr(), n)
    else:
        backends.module("cuda").philox_fill(seed, first, out.data_ptr(), n, *backends.cuda_launch_args(out))
    return _from_u32(out)


@pytest.mark.parametrize("device,backend", [pytest.param("cpu", "reference", id="cpu-reference")] + KERNEL_CASES)
def test_known_answer_vectors(device, backend):
    require(backend, device)
    counters = torch.tensor([c for c, _, _ in KAT], dtype=torch.int64)
    keys = torch.tensor([k for _, k, _ in KAT], dtype=torch.int64)
    expected = torch.tensor([o for _, _, o in KAT], dtype=torch.int64)
    assert torch.equal(philox_on(backend, device, counters, keys).cpu(), expected)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_philox_matches_reference_on_random_counters(device, backend):
    require(backend, device)
    g = torch.Generator().manual_seed(7)
    counters = torch.randint(0, 1 << 32, (4099, 4), generator=g, dtype=torch.int64)
    keys = torch.randint(0, 1 << 32, (4099, 2), generator=g, dtype=torch.int64)
    assert torch.equal(philox_on(backend, device, counters, keys).cpu(), ref_random.philox(counters, keys))


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("seed", SEEDS)
def test_stream_words_match_reference(device, backend, seed):
    """The counter layout: group g -> counter (lo32(g), hi32(g), 0, 0), key = the 64-bit seed."""
    require(backend, device)
    for first in (0, (1 << 32) - 3):  # the counter's high word starts to count past 2^32 groups
        got = philox_fill_on(backend, device, seed, first, 1031).cpu()
        assert torch.equal(got, ref_random.philox_fill(seed, first, 1031))


def stream_tolerance(eps_ref: torch.Tensor) -> torch.Tensor:
    """|eps - eps_ref| allowed: a few float32 ulp of the result and of the Box-Muller radius
    (log/sin/cos differ slightly between libm, CUDA and Triton)."""
    return 1e-6 * torch.clamp(eps_ref.abs(), min=1.0)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_normals_match_reference(device, backend, seed):
    require(backend, device)
    n = 200_003 if backend != "triton" or device == "cuda" else 40_009
    got = vk.normal_noise((n,), seed, device=device, backend=backend).cpu()
    ref = vk.normal_noise((n,), seed, backend="reference")
    err = (got.double() - ref.double()).abs()
    assert got.dtype == torch.float32
    assert bool((err <= stream_tolerance(ref.double())).all()), f"max error {err.max().item():.3g}"


def test_normals_have_no_zero_log_and_bounded_tail():
    """u(w) is never 0, so every normal is finite and |eps| <= sqrt(-2 ln 2^-33) ~ 6.77."""
    w = torch.tensor([0, 1, 0xFFFFFFFF, 0xFFFFFF80], dtype=torch.int64)
    u = ref_random._uniform(w)
    assert u.min().item() == pytest.approx(2.0**-33)
    assert u.max().item() == 1.0
    assert math.sqrt(-2 * math.log(2.0**-33)) < 6.8


@pytest.mark.parametrize("device,backend", [pytest.param("cpu", "reference", id="cpu-reference")] + KERNEL_CASES)
def test_stream_statistics(device, backend):
    """>= 10^6 normals: mean and variance within 5 standard errors, KS distance under its 0.1%
    critical value, no correlation beyond 5 standard errors between neighbours."""
    require(backend, device)
    n = 1 << 20 if backend != "triton" or device == "cuda" else 1 << 18  # the interpreter is slow
    x = vk.normal_noise((n,), 20261121, device=device, backend=backend).cpu().double()
    se = 1.0 / math.sqrt(n)
    assert abs(x.mean().item()) < 5 * se
    assert abs(x.var().item() - 1.0) < 5 * math.sqrt(2.0) * se  # var of a sample variance: 2/n
    xs, _ = torch.sort(x)
    cdf = 0.5 * torch.erfc(-xs / math.sqrt(2.0))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.9495 / math.sqrt(n), f"KS distance {ks:.2e}"  # Kolmogorov 0.1% critical value
    for lag in (1, 2, 3, 4, 5):  # within a Philox group (1-3) and across groups (4, 5)
        r = (x[:-lag] * x[lag:]).mean().item()
        assert abs(r) < 5 * se, f"lag-{lag} correlation {r:.2e}"
