"""Shared fixtures: which (device, backend) pairs the suite runs.

Without a GPU the Triton kernels run under the interpreter on CPU tensors, so TRITON_INTERPRET
must be set before triton compiles anything.  Backends that must exist are not skipped when
missing -- the test fails with the reason (a missing _C is a broken build, not a skip).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import vaekernels as vk  # noqa: E402
from vaekernels import backends  # noqa: E402

# Hypothesis profiles (tests/test_properties.py).  "ci", the default, is derandomized: every run
# draws the same examples (seeded from each property's source), so a CI failure reproduces by
# rerunning the test and a pass is not a lucky draw the next unrelated commit loses -- new
# examples come only when a property changes.  It is no weaker for that: hunt for new
# counterexamples with HYPOTHESIS_PROFILE=explore (random draws, 10x the examples, the example
# database in .hypothesis/ replays what failed).  No deadline: the Triton interpreter and a loaded
# 2-core machine make call times vary 10x; print_blob prints @reproduce_failure on a failure.
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", settings.get_profile("ci"), max_examples=2000, derandomize=False,
                          database=settings.default.database)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# (device, backend) pairs: every backend on the device it serves.  The GPU ones are marked.
KERNEL_CASES = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cpu", "triton", id="cpu-triton_interp"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=[pytest.mark.gpu, gpu]),
    pytest.param("cuda", "triton", id="cuda-triton", marks=[pytest.mark.gpu, gpu]),
]
ALL_CASES = [pytest.param("cpu", "reference", id="cpu-reference")] + KERNEL_CASES


def require(backend: str, device: str, dtype=None) -> None:
    """Fail (not skip) when a backend that this machine must have is unavailable."""
    reason = backends.why_unavailable(backend, device, dtype)
    if reason is not None:
        if dtype is not None and backends.why_unavailable(backend, device) is None:
            pytest.skip(reason)  # the backend exists; it does not compute in this dtype here
        pytest.fail(f"backend {backend!r} on {device}: {reason}")


def dtypes_for(backend: str, device: str):
    """The dtypes to test a backend with on a device (the interpreter has no bfloat16)."""
    out = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    return [d for d in out if backends.why_unavailable(backend, device, d) is None]


# Tolerances of a float32-computed result stored in each dtype, against a float64 oracle.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
}


def assert_within(got, ref, bound, what: str) -> None:
    """|got - ref| <= bound elementwise, compared in float64 on the CPU; where ref is +-inf or NaN,
    got must be the same (+-inf with its sign, NaN)."""
    got = got.detach().cpu().double()
    ref = ref.detach().cpu().double()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(ref)
    special = ~torch.isfinite(ref)
    same = (got == ref) | (got.isnan() & ref.isnan())
    err = (got - ref).abs()
    bad = torch.where(special, ~same, ~(err <= bound))
    if bool(bad.any()):
        i = int(torch.nonzero(bad.flatten())[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.numel()} off; first at {i}: got {got.flatten()[i].item()!r}, "
            f"want {ref.flatten()[i].item()!r} +- {bound.flatten()[i].item():.3g}"
        )
