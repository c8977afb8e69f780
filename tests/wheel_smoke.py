"""Smoke test of an installed vaekernels (make wheel-test): every public op on every backend
available here, checked against the reference backend.  Run from outside the source tree."""
import sys

import torch

import vaekernels as vk

assert "site-packages" in vk.__file__, f"imported the source tree, not the wheel: {vk.__file__}"
from vaekernels import info  # noqa: E402

info.main()
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
failures = 0
for device in devices:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g).to(device)
    lv = torch.randn(6, 5, generator=g).to(device)
    z = vk.reparameterize(mu, lv, 3, seed=1, backend="reference")
    lp = torch.randn(3, 6, generator=g).to(device)
    calls = {
        "reparameterize": lambda b: vk.reparameterize(mu, lv, 3, seed=1, backend=b),
        "gaussian_kl": lambda b: vk.gaussian_kl(mu, lv, backend=b),
        "iwae_bound": lambda b: vk.iwae_bound(lp, z, mu, lv, backend=b),
        "log_mean_exp": lambda b: vk.log_mean_exp(lp, 0, backend=b),
        "gaussian_log_prob": lambda b: vk.gaussian_log_prob(z, mu, lv, backend=b),
    }
    for backend in vk.available_backends(device):
        for op, call in calls.items():
            got, want = call(backend), call("reference")
            ok = torch.allclose(got.float().cpu(), want.float().cpu(), rtol=1e-4, atol=1e-4)
            failures += not ok
            print(f"{device:<5} {backend:<10} {op:<18} {'ok' if ok else 'MISMATCH'}")
print(f"torch {torch.__version__}: {'all ok' if not failures else f'{failures} failures'}")
sys.exit(1 if failures else 0)
