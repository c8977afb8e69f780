"""vaekernels: fused kernels for variational auto-encoders.

    import vaekernels as vk
    z = vk.reparameterize(mu, logvar, num_samples=8)        # [8, B, D], noise never stored

Backends: ``reference`` (plain torch), ``cpu`` (C++), ``cuda`` (CUDA), ``triton``; see
vaekernels.backends and ``python -m vaekernels.info``.
"""
from ._version import __version__
from .backends import BACKENDS, BackendUnavailableError, available_backends, use_backend
from .functional import normal_noise, reparameterize

__all__ = [
    "__version__",
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "use_backend",
    "normal_noise",
    "reparameterize",
]
