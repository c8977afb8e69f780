"""gaussian_kl: KL(N(mu, e^logvar) || prior) summed per example, [B, D] -> [B], against eager,
torch.distributions and torch.compile of the naive code; without a prior (N(0, I)) and with a
learned [D] prior.  K of benchmarks/conftest.SIZES is unused.

Byte floor (element size s = 4, N = B*D; the prior's 2D elements only with a prior):
fwd reads mu, logvar and the prior, writes B outputs: (2N + 2D + B) s;
bwd reads the B upstream gradients, mu, logvar and the prior, writes dmu, dlogvar and the
prior's gradients: (B + 4N + 4D) s.  Every provider computes in float32.

bench_gaussian_kl_collapse_error also records the accuracy where the posterior has collapsed
onto the prior (|mu - pm|, |logvar - plv| in [0.5e-3, 2e-3]): the max relative error of the
elementwise KL against float64 torch.distributions, for vaekernels and for the naive formula, in
float32.
"""
import itertools

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import vaekernels as vk
from conftest import DEVICE, MODES, SIZES, mode_fn, provider_fn, providers, run, saved_bytes


def naive(mu, logvar, pm, plv):
    """The textbook formulas a VAE user writes."""
    if pm is None:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)
    return 0.5 * (plv - logvar + (logvar.exp() + (mu - pm).pow(2)) / plv.exp() - 1).sum(-1)


def distributions(mu, logvar, pm, plv):
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu)) if pm is None else Normal(pm, torch.exp(0.5 * plv))
    return kl_divergence(q, p).sum(-1)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("prior", ["none", "learned"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", providers(DEVICE))
def bench_gaussian_kl(benchmark, provider, mode, prior, size):
    b, d, _ = SIZES[size]
    n = b * d
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=DEVICE, generator=g)

    inputs = [(randn(b, d), randn(b, d).clamp(-5, 3), randn(d), randn(d).clamp(-3, 3)) for _ in range(3)]
    grad = randn(b)
    rotate = itertools.cycle(inputs)

    def leaves():
        mu, lv, pm, plv = (t.detach().requires_grad_(True) for t in next(rotate))
        return (mu, lv, pm, plv) if prior == "learned" else (mu, lv, None, None)

    f, compile_s = provider_fn(provider, naive, distributions, lambda backend: (
        lambda mu, lv, pm, plv: vk.gaussian_kl(mu, lv, pm, plv, backend=backend)), leaves, mode)
    fn, setup = mode_fn(f, leaves, mode, grad)
    s, pd = 4, (2 * d if prior == "learned" else 0)
    floor = {"fwd": (2 * n + pd + b) * s, "bwd": (b + 4 * n + 2 * pd) * s}
    floor["fwd+bwd"] = floor["fwd"] + floor["bwd"]
    kept = saved_bytes(lambda: f(*leaves()))
    run(benchmark, fn, setup, floor_bytes=floor[mode], kept_bytes=kept, compile_s=compile_s,
        op="gaussian_kl", variant="" if prior == "none" else "learned prior", provider=provider, mode=mode, size=size,
        shape=f"B={b} D={d}")


def near_1e3(b, d, g):
    """Offsets of magnitude 0.5e-3 ... 2e-3, either sign (bounded away from 0, where the float64
    torch.distributions value itself cancels: a KL of ~1e-12 keeps only ~4 of its digits)."""
    size = 0.5e-3 * 4 ** torch.rand(b, d, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(b, d, generator=g) < 0.5, -size, size)


@pytest.mark.parametrize("provider", [p for p in providers(DEVICE) if p.startswith("vk_")])
def bench_gaussian_kl_collapse_error(benchmark, provider):
    """Forward time on collapsed inputs, with the max relative errors in extra_info."""
    b, d, _ = SIZES["large"]
    g = torch.Generator().manual_seed(1)
    pm = torch.randn(d, generator=g, dtype=torch.float64)
    plv = 2 * torch.randn(d, generator=g, dtype=torch.float64)
    mu = (pm + near_1e3(b, d, g)).float()
    lv = (plv + near_1e3(b, d, g)).float()
    pm, plv = pm.float(), plv.float()
    mu64, lv64, pm64, plv64 = (t.double() for t in (mu, lv, pm, plv))
    exact = kl_divergence(Normal(mu64, (0.5 * lv64).exp()), Normal(pm64, (0.5 * plv64).exp()))
    args = [t.to(DEVICE) for t in (mu, lv, pm, plv)]
    backend = provider[3:]

    def rel_err(kl):
        return ((kl.double().cpu() - exact).abs() / exact).max().item()

    err_vk = rel_err(vk.gaussian_kl(*args, reduction="none", backend=backend))
    err_naive = rel_err(0.5 * (args[3] - args[1] + (args[1].exp() + (args[0] - args[2]).pow(2)) / args[3].exp() - 1))
    n = b * d
    run(benchmark, lambda: vk.gaussian_kl(*args, reduction="none", backend=backend), lambda: (),
        floor_bytes=(3 * n + 2 * d) * 4, kept_bytes=0, op="gaussian_kl_collapse", provider=provider, mode="fwd",
        size="large", shape=f"B={b} D={d}", max_rel_err_vk=err_vk, max_rel_err_naive=err_naive)
