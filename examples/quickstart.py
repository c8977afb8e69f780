"""vaekernels at work: reparameterized sampling on every backend this machine has, checked
against the naive eager code and timed beside it.

    python examples/quickstart.py [--batch 4096] [--dim 256] [--samples 8] [--device cpu]
"""
import argparse
import time

import torch

import vaekernels as vk


def naive(mu, logvar, k):
    """What a VAE user writes by hand (PyTorch's VAE example, with K samples)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)


def fwd_bwd_ms(fn, mu, logvar, grad, repeats):
    times = []
    for _ in range(repeats):
        m, lv = mu.detach().requires_grad_(True), logvar.detach().requires_grad_(True)
        if mu.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(m, lv).backward(grad)
        if mu.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()

    torch.manual_seed(0)
    mu = torch.randn(a.batch, a.dim, device=a.device)
    logvar = torch.randn(a.batch, a.dim, device=a.device).clamp(-4, 2)
    grad = torch.randn(a.samples, a.batch, a.dim, device=a.device)
    print(f"vaekernels {vk.__version__}, torch {torch.__version__}, device {a.device}, "
          f"threads {torch.get_num_threads()}; z = [K={a.samples}, B={a.batch}, D={a.dim}]")

    ref = vk.reparameterize(mu, logvar, a.samples, seed=2026, backend="reference")
    base = fwd_bwd_ms(lambda m, lv: naive(m, lv, a.samples), mu, logvar, grad, a.repeats)
    print(f"\n{'provider':<22}{'fwd+bwd ms':>12}{'speed-up':>10}{'max |z - z_ref|':>18}{'kept for bwd':>15}")
    print(f"{'eager naive torch':<22}{base:>12.2f}{1.0:>9.1f}x{'(other noise)':>18}{'eps: K*B*D':>15}")
    for backend in vk.available_backends(mu.device.type):
        if backend == "reference":
            continue
        z = vk.reparameterize(mu, logvar, a.samples, seed=2026, backend=backend)
        err = (z - ref).abs().max().item()
        ms = fwd_bwd_ms(lambda m, lv: vk.reparameterize(m, lv, a.samples, backend=backend), mu, logvar, grad, a.repeats)
        print(f"{'vaekernels ' + backend:<22}{ms:>12.2f}{base / ms:>9.1f}x{err:>18.2e}{'logvar, seed':>15}")

    eps = vk.normal_noise(ref.shape, 2026, device=a.device)
    print(f"\nnoise of the reference stream: mean {eps.mean().item():+.4f}, std {eps.std().item():.4f} "
          f"over {eps.numel():,} normals")


if __name__ == "__main__":
    main()
