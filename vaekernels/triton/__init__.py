"""The Triton backend: ``@triton.jit`` kernels and their launchers, one module per op.

- ``random``          the vaekernels normal stream (Philox4x32-10 + Box-Muller) as Triton helpers,
                      plus the ``philox`` / ``philox_fill`` launchers the known-answer tests use;
- ``reparameterize``  ``z = mu + exp(0.5 * logvar) * eps`` forward and backward.

This package file imports nothing, so ``import vaekernels.triton`` works without Triton; the
submodules import ``triton`` and are loaded only where it is importable.
"""
