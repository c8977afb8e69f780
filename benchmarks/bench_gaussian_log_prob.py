"""gaussian_log_prob: log N(z; mu, e^logvar) summed over D, z [K, B, D], mu/logvar [B, D], against
eager (written by hand), torch.distributions and torch.compile.

Byte floor (element size s, N = B*D):  fwd reads z, mu, logvar, writes [K, B]: (K N + 2 N) s + 4 K B;
bwd reads z, mu, logvar and grad, writes dz, dmu, dlogvar: (2 K N + 4 N) s + 4 K B.
"""
import itertools
import math

import pytest
import torch

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, mode_fn, provider_fn, providers, run, saved_bytes

LOG_2PI = math.log(2 * math.pi)


def eager(z, mu, logvar):
    return (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / torch.exp(logvar))).sum(-1)


def distributions(z, mu, logvar):
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", providers(DEVICE))
def bench_gaussian_log_prob(benchmark, provider, mode, size):
    b, d, k = SIZES[size]
    n = b * d
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [(torch.randn(k, b, d, device=DEVICE, generator=gen), torch.randn(b, d, device=DEVICE, generator=gen),
               torch.randn(b, d, device=DEVICE, generator=gen).clamp(-3, 3)) for _ in range(2)]
    rotate = itertools.cycle(inputs)
    grad = torch.randn(k, b, device=DEVICE, generator=gen)

    def leaves():
        return tuple(t.detach().requires_grad_(True) for t in next(rotate))

    f, compile_s = provider_fn(provider, eager, distributions, lambda backend: (
        lambda z, mu, lv: vk.gaussian_log_prob(z, mu, lv, backend=backend)), leaves, mode)
    fn, setup = mode_fn(f, leaves, mode, grad)
    floor = {"fwd": (k * n + 2 * n) * 4 + 4 * k * b, "bwd": (2 * k * n + 4 * n) * 4 + 4 * k * b}
    floor["fwd+bwd"] = floor["fwd"] + floor["bwd"]
    run(benchmark, fn, setup, floor_bytes=floor[mode], kept_bytes=saved_bytes(lambda: f(*leaves())),
        compile_s=compile_s, op="gaussian_log_prob", provider=provider, mode=mode, size=size,
        shape=f"B={b} D={d} K={k}")
