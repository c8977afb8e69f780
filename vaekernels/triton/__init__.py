"""The Triton backend: ``@triton.jit`` kernels and their launchers, one module per op.

- ``random``          the vaekernels normal stream (Philox4x32-10 + Box-Muller) as Triton helpers,
                      plus the ``philox`` / ``philox_fill`` launchers the known-answer tests use;
- ``reparameterize``  ``z = mu + exp(0.5 * logvar) * eps`` forward and backward;
- ``log_mean_exp``    log-mean-exp, and the online log-sum-exp helpers (``lse_combine``) it shares;
- ``gaussian_log_prob`` the diagonal Gaussian log-density summed over the last dim;
- ``gaussian_kl``     KL(N(mu, e^logvar) || prior) reduced over the last dim, forward and backward;
- ``iwae_bound``      the IWAE / Renyi bound over K samples (uses ``log_mean_exp``'s helpers).

This package file imports nothing, so ``import vaekernels.triton`` works without Triton; the
submodules import ``triton`` and are loaded only where it is importable.
"""
