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

# Every launch passes enable_fp_fusion=FP_FUSION: the contraction of a * b + c into one fma is
# part of a kernel's numerics, so it is fixed here rather than left to Triton's default (enabled
# up to Triton 3.9, which warns that 3.10 turns it off: TRITON_DEFAULT_FP_FUSION).  Enabled, as
# nvcc's default --fmad=true does for the CUDA backend; where the order of rounding matters the
# kernels say so with tl.fma.  (The interpreter ignores the option: numpy never fuses.)
FP_FUSION = True
