"""vaekernels: fused kernels for variational auto-encoders.

    import vaekernels as vk
    z = vk.reparameterize(mu, logvar, num_samples=8)        # [8, B, D], noise never stored
    kl = vk.gaussian_kl(mu, logvar)                         # [B], KL to N(0, I) per example

Backends: ``reference`` (plain torch), ``cpu`` (C++), ``cuda`` (CUDA), ``triton``; see
vaekernels.backends and ``python -m vaekernels.info``.
"""
from ._version import __version__
from .backends import BACKENDS, BackendUnavailableError, available_backends, use_backend
from .functional import gaussian_kl, gaussian_log_prob, iwae_bound, log_mean_exp, normal_noise, reparameterize
from . import nn  # the VAE layer: vk.nn.VAE, vk.nn.GaussianLatent, ...

__all__ = [
    "__version__",
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "use_backend",
    "gaussian_kl",
    "gaussian_log_prob",
    "iwae_bound",
    "log_mean_exp",
    "normal_noise",
    "reparameterize",
    "nn",
]
