"""reparameterize: z = mu + exp(0.5 logvar) * eps, [K, B, D], against eager and torch.compile.

Byte floor (element size s, N = B*D):  fwd reads mu, logvar and writes z: (2N + KN) s;
bwd reads dz and logvar, writes dmu, dlogvar: (KN + 3N) s.  The noise is generated in registers.
"""
import itertools

import pytest
import torch

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, mode_fn, provider_fn, providers, run, saved_bytes


def naive(mu, logvar, k):
    return mu + torch.exp(0.5 * logvar) * torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)


def distributions(mu, logvar, k):
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).rsample((k,))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", providers(DEVICE))
def bench_reparameterize(benchmark, provider, mode, size):
    b, d, k = SIZES[size]
    n = b * d
    inputs = [(torch.randn(b, d, device=DEVICE), torch.randn(b, d, device=DEVICE).clamp(-5, 3)) for _ in range(3)]
    grad = torch.randn(k, b, d, device=DEVICE)
    rotate = itertools.cycle(inputs)

    def leaves():
        mu, lv = next(rotate)
        return mu.detach().requires_grad_(True), lv.detach().requires_grad_(True)

    f, compile_s = provider_fn(provider, lambda m, l: naive(m, l, k), lambda m, l: distributions(m, l, k),
                               lambda backend: (lambda m, l: vk.reparameterize(m, l, k, backend=backend)), leaves, mode)
    fn, setup = mode_fn(f, leaves, mode, grad)
    s = 4
    floor = {"fwd": (2 * n + k * n) * s, "bwd": (k * n + 3 * n) * s}
    floor["fwd+bwd"] = floor["fwd"] + floor["bwd"]
    kept = saved_bytes(lambda: f(*leaves()))
    run(benchmark, fn, setup, floor_bytes=floor[mode], kept_bytes=kept, compile_s=compile_s,
        op="reparameterize", provider=provider, mode=mode, size=size, shape=f"B={b} D={d} K={k}")
