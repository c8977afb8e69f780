"""reparameterize: z = mu + exp(0.5 logvar) * eps, [K, B, D], against eager and torch.compile.

Byte floor (element size s, N = B*D):  fwd reads mu, logvar and writes z: (2N + KN) s;
bwd reads dz and logvar, writes dmu, dlogvar: (KN + 3N) s.  The noise is generated in registers.
"""
import itertools

import pytest
import torch

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, compiled, providers, run, saved_bytes


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

    compile_s = None
    if provider == "eager":
        f = lambda m, l: naive(m, l, k)  # noqa: E731
    elif provider == "distributions":
        f = lambda m, l: distributions(m, l, k)  # noqa: E731
    elif provider == "compile":
        f, compile_s = compiled(lambda m, l: naive(m, l, k), leaves, backward=mode != "fwd")
    else:
        backend = provider[3:]
        f = lambda m, l: vk.reparameterize(m, l, k, backend=backend)  # noqa: E731

    if mode == "fwd":
        fn, setup = f, leaves
    elif mode == "bwd":
        fn, setup = (lambda z: z.backward(grad)), (lambda: (f(*leaves()),))
    else:
        fn, setup = (lambda m, l: f(m, l).backward(grad)), leaves
    s = 4
    floor = {"fwd": (2 * n + k * n) * s, "bwd": (k * n + 3 * n) * s}
    floor["fwd+bwd"] = floor["fwd"] + floor["bwd"]
    kept = saved_bytes(lambda: f(*leaves()))
    run(benchmark, fn, setup, floor_bytes=floor[mode], kept_bytes=kept, compile_s=compile_s,
        op="reparameterize", provider=provider, mode=mode, size=size, shape=f"B={b} D={d} K={k}")
