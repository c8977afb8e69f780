"""log_mean_exp over the K samples of a [K, B*D]-element tensor (the IWAE reduction's shape, dim 0)
and over its last dim, against torch.logsumexp - log K eagerly and under torch.compile.

Byte floor (s = 4, M = B*D):  fwd reads x and writes the result: (K M + M) s; bwd reads x, the
result and grad, writes dx: (2 K M + 2 M) s.
"""
import itertools
import math

import pytest
import torch

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, mode_fn, provider_fn, providers, run, saved_bytes


def eager(x, dim):
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", [p for p in providers(DEVICE) if p != "distributions"])
def bench_log_mean_exp(benchmark, provider, mode, size, dim):
    b, d, k = SIZES[size]
    m = b * d
    shape = (k, m) if dim == 0 else (m, k)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [torch.randn(shape, device=DEVICE, generator=gen) for _ in range(2)]
    rotate = itertools.cycle(inputs)
    grad = torch.randn(m, device=DEVICE, generator=gen)

    def leaves():
        return (next(rotate).detach().requires_grad_(True),)

    f, compile_s = provider_fn(provider, lambda x: eager(x, dim), None,
                               lambda backend: (lambda x: vk.log_mean_exp(x, dim, backend=backend)), leaves, mode)
    fn, setup = mode_fn(f, leaves, mode, grad)
    floor = {"fwd": (k * m + m) * 4, "bwd": (2 * k * m + 2 * m) * 4}
    floor["fwd+bwd"] = floor["fwd"] + floor["bwd"]
    run(benchmark, fn, setup, floor_bytes=floor[mode], kept_bytes=saved_bytes(lambda: f(*leaves())),
        compile_s=compile_s, op="log_mean_exp", variant=f"dim={dim}", provider=provider, mode=mode, size=size,
        shape=f"{tuple(shape)} dim={dim}")
