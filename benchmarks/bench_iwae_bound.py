"""iwae_bound: the IWAE bound over K samples, [K, B, D], against eager and torch.compile.

Providers: ``eager`` (the log-densities written by hand, then torch.logsumexp -- what a user
writes), ``distributions`` (torch.distributions.Normal(...).log_prob), ``compile`` (torch.compile of
the eager code), and each vaekernels backend.  Prior N(0, I), alpha = 0, reduction "sum".

Byte floor (element size s, N = B*D):
  fwd  reads z, mu, logvar, log_px_z; writes the bound and the weights:  (K N + 2 N) s + (2 K B + B) 4
  bwd  reads z, mu, logvar, the weights and grad; writes dz, dmu, dlogvar, d log_px_z:
       (2 K N + 4 N) s + (2 K B + B) 4
At (B, D, K) = (4096, 256, 64) in float32 that is 276 MB forward and 545 MB backward: about 19 ms
fwd+bwd at 43 GB/s -- z read twice and dz written once dominate.
"""
import itertools
import math

import pytest
import torch

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, mode_fn, provider_fn, providers, run, saved_bytes

LOG_2PI = math.log(2 * math.pi)


def eager(lpx, z, mu, logvar):
    log_q = (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / torch.exp(logvar))).sum(-1)
    log_p = (-0.5 * (LOG_2PI + z**2)).sum(-1)
    return (torch.logsumexp(lpx + log_p - log_q, 0) - math.log(z.shape[0])).sum()


def distributions(lpx, z, mu, logvar):
    normal = torch.distributions.Normal
    log_q = normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = normal(torch.zeros_like(mu), torch.ones_like(mu)).log_prob(z).sum(-1)
    return (torch.logsumexp(lpx + log_p - log_q, 0) - math.log(z.shape[0])).sum()


def floor_bytes(b, d, k, s=4):
    n = b * d
    fwd = (k * n + 2 * n) * s + (2 * k * b + b) * 4
    bwd = (2 * k * n + 4 * n) * s + (2 * k * b + b) * 4
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", providers(DEVICE))
def bench_iwae_bound(benchmark, provider, mode, size):
    b, d, k = SIZES[size]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = []
    for _ in range(2):
        mu = torch.randn(b, d, device=DEVICE, generator=g)
        lv = torch.randn(b, d, device=DEVICE, generator=g).clamp(-3, 3)
        z = mu + torch.exp(0.5 * lv) * torch.randn(k, b, d, device=DEVICE, generator=g)
        lpx = 10 * torch.randn(k, b, device=DEVICE, generator=g) - 100
        inputs.append((lpx, z, mu, lv))
    rotate = itertools.cycle(inputs)

    def leaves():
        return tuple(t.detach().requires_grad_(True) for t in next(rotate))

    f, compile_s = provider_fn(provider, eager, distributions, lambda backend: (
        lambda lpx, z, mu, lv: vk.iwae_bound(lpx, z, mu, lv, reduction="sum", backend=backend)), leaves, mode)
    fn, setup = mode_fn(f, leaves, mode)
    kept = saved_bytes(lambda: f(*leaves()))
    run(benchmark, fn, setup, floor_bytes=floor_bytes(b, d, k)[mode], kept_bytes=kept, compile_s=compile_s,
        op="iwae_bound", provider=provider, mode=mode, size=size, shape=f"B={b} D={d} K={k}")
