"""The public ops.  Each checks its inputs (vaekernels._checks), picks a backend
(vaekernels.backends) and calls the custom op (vaekernels.ops.<op>) or, for the ``reference``
backend, the plain-torch implementation (vaekernels.reference.<op>)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _checks, backends
from .ops import gaussian_kl as _gaussian_kl_op
from .ops import gaussian_log_prob as _gaussian_log_prob_op
from .ops import iwae_bound as _iwae_bound_op
from .ops import log_mean_exp as _log_mean_exp_op
from .ops import reparameterize as _reparameterize_op
from .reference import gaussian_kl as _gaussian_kl_ref
from .reference import gaussian_log_prob as _gaussian_log_prob_ref
from .reference import iwae_bound as _iwae_bound_ref
from .reference import log_mean_exp as _log_mean_exp_ref
from .reference import random as _ref_random
from .reference import reparameterize as _reparameterize_ref

Seed = Union[int, Tensor, None]

_SEED_LOW, _SEED_HIGH = -(1 << 63), (1 << 63) - 1


def _draw_seed(op: str, seed: Seed, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """The 0-d int64 Philox key on ``device``: ``seed`` when given, else a fresh draw from
    ``generator`` (default: torch's generator for the device), so torch.manual_seed reproduces a
    run and consecutive calls differ.  Drawn on the device, so CUDA-graph replay redraws it."""
    if seed is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass seed or generator, not both")
        return _checks.seed(op, seed, device)
    gen = _checks.generator(op, generator, device)
    return torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64, device=device, generator=gen)


def reparameterize(
    mu: Tensor,
    logvar: Tensor,
    num_samples: Optional[int] = None,
    *,
    seed: Seed = None,
    generator: Optional[torch.Generator] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Reparameterized Gaussian samples ``z = mu + exp(0.5 * logvar) * eps``, ``eps ~ N(0, I)``.

    Args:
        mu, logvar: ``[..., D]``, same shape, dtype (float32/16, bfloat16; float64 on the
            ``reference`` and ``cpu`` backends) and device.  Arithmetic is float32 (float64 for
            float64 inputs).
        num_samples: ``K``. None returns ``[..., D]``; an int returns ``[K, ..., D]``.
        seed: the 64-bit Philox key (int or 0-d int64 tensor).  Default: drawn from
            ``generator`` (default: torch's generator on ``mu``'s device).
        backend: ``"reference" | "cpu" | "cuda" | "triton"``; default: see vaekernels.backends.

    Gradients: ``dmu = sum_k dz_k``, ``dlogvar = sum_k dz_k * eps_k * 0.5 * exp(0.5 * logvar)``;
    Backward keeps nothing of size K*B*D: eps is regenerated from the seed -- or, on the cpu
    backend in plain eager mode (float32/float64), read back from z as ``(z - mu) / sigma`` while
    z is alive and unmodified, in the blocks of columns where that is exact enough
    (``|mu| <= 16 sigma``), which costs less than regenerating it (vaekernels/ops/reparameterize.py).
    Element ``e`` of z viewed as a row-major ``[K, mu.numel()]`` array is normal ``e`` of the
    stream (docs/random.md), on every backend.
    """
    op = "reparameterize"
    _checks.tensor(op, "mu", mu)
    _checks.like(op, "logvar", logvar, "mu", mu)
    k = _checks.positive_int(op, "num_samples", num_samples, allow_none=True)
    name = backends.resolve(op, mu.device, mu.dtype, backend)
    seed_t = _draw_seed(op, seed, generator, mu.device)
    if name == "reference":
        z = _reparameterize_ref.reparameterize(mu, logvar, seed_t, k or 1)
    else:
        z = _reparameterize_op.run(mu, logvar, seed_t, k or 1, name)
    return z[0] if k is None else z


def normal_noise(
    shape: Sequence[int],
    seed: Union[int, Tensor],
    *,
    device: Union[str, torch.device, None] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """The stream's standard normals for ``seed`` as a float32 tensor of ``shape``: exactly the eps
    that ``reparameterize(..., seed=seed)`` uses for an output of that shape."""
    op = "normal_noise"
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(int(s) for s in shape)
    numel = 1
    for s in shape:
        numel *= s
    name = backends.resolve(op, device, torch.float32, backend)
    seed_t = _checks.seed(op, seed, device)
    if name == "reference":
        return _ref_random.normal(int(seed_t), numel, device=device).view(shape)
    zeros = torch.zeros(numel, dtype=torch.float32, device=device)
    return _reparameterize_op.run(zeros, zeros, seed_t, 1, name).view(shape)


def gaussian_kl(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    *,
    reduction: str = "per_example",
    free_bits: float = 0.0,
    backend: Optional[str] = None,
) -> Tensor:
    """``KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar))`` of diagonal Gaussians, reduced over
    the latent dimension in the same pass.

    With delta = logvar - prior_logvar and Delta = mu - prior_mu, elementwise
    ``KL = 0.5 * (e^delta - 1 - delta) + 0.5 * Delta^2 * e^-prior_logvar``; an absent prior
    parameter is 0, so no prior gives ``KL(N(mu, e^logvar) || N(0, I))``.

    Args:
        mu, logvar: ``[..., D]``, same shape, dtype (float32/16, bfloat16; float64 on the
            ``reference`` and ``cpu`` backends) and device.  Every leading dim is the batch.
        prior_mu, prior_logvar: None, ``[D]`` (one learned prior), ``[B, D]`` (mu's last two dims:
            a conditional prior, broadcast over any further leading dims) or mu's shape.  Their
            gradients come back in their own shape (summed over the examples they broadcast to).
        reduction: ``"none"`` -> ``[..., D]``; ``"per_example"`` (default) -> ``[...]``, summed over
            D; ``"sum"`` -> 0-d; ``"batchmean"`` -> 0-d, the sum divided by the number of
            examples (the mean of per_example).
        free_bits: lambda >= 0 (Kingma et al. 2016, IAF): for each latent dim d, the KL averaged
            over the batch, kl_d, is clamped from below at lambda: where kl_d < lambda every
            KL[..., d] becomes the constant lambda and passes no gradient.  The reduction is taken
            after the clamp, so ``batchmean == sum_d max(lambda, kl_d)``.
        backend: ``"reference" | "cpu" | "cuda" | "triton"``; default: see vaekernels.backends.

    Returns the KL in float32 for float32/float16/bfloat16 inputs (float64 for float64): the
    arithmetic is float32, and a KL or a sum of them can pass the float16 range where float32
    does not.  Fused backends compute it to ~1e-6 relative even where the posterior has
    collapsed onto the prior (``e^delta - 1 - delta`` by a series near 0, expm1 elsewhere); the
    ``reference`` backend is the naive formula and loses those digits.
    """
    op = "gaussian_kl"
    _checks.tensor(op, "mu", mu, min_dim=1)
    _checks.like(op, "logvar", logvar, "mu", mu)
    prior_dims = (1, 2, mu.dim())
    if prior_mu is not None:
        _checks.trailing_like(op, "prior_mu", prior_mu, "mu", mu, prior_dims)
    if prior_logvar is not None:
        _checks.trailing_like(op, "prior_logvar", prior_logvar, "mu", mu, prior_dims)
    _checks.one_of(op, "reduction", reduction, _gaussian_kl_op.REDUCTIONS)
    free_bits = _checks.nonnegative_float(op, "free_bits", free_bits)
    name = backends.resolve(op, mu.device, mu.dtype, backend)
    if name == "reference":
        return _gaussian_kl_ref.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction, free_bits)
    if prior_mu is not None and prior_logvar is not None and prior_mu.shape != prior_logvar.shape:
        # The kernels take one prior shape: the smaller prior is expanded (and materialized by the
        # op); torch autograd sums its gradient back to its own shape.  That sum must add unrounded
        # terms: in float16/bfloat16 the op would return the expanded prior's per-example gradients
        # rounded to 16 bits, and a term past 65504 is inf (the sum inf - inf = NaN) although the
        # summed gradient is in range.  So a 16-bit call with mixed prior shapes runs in float32:
        # the inputs are cast up (the KL is float32 either way), the expand's backward sums float32
        # terms, and each cast's backward rounds its gradient to 16 bits once.  Rather than kernels
        # that take the two priors' row counts apart (a new argument through every backend's
        # kernels and bindings for a rare call): this costs a float32 copy of the inputs, only there.
        if mu.dtype in (torch.float16, torch.bfloat16):
            mu, logvar, prior_mu, prior_logvar = (t.float() for t in (mu, logvar, prior_mu, prior_logvar))
        if prior_mu.dim() < prior_logvar.dim():
            prior_mu = prior_mu.expand(prior_logvar.shape)
        else:
            prior_logvar = prior_logvar.expand(prior_mu.shape)
    return _gaussian_kl_op.run(mu, logvar, prior_mu, prior_logvar, reduction, free_bits, name)


IWAE_REDUCTIONS = ("per_example", "sum", "batchmean")


def iwae_bound(
    log_px_z: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Optional[Tensor] = None,
    prior_logvar: Optional[Tensor] = None,
    *,
    alpha: float = 0.0,
    stl: bool = False,
    reduction: str = "per_example",
    return_weights: bool = False,
    backend: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The importance-weighted bound (IWAE, Burda et al. 2016) and the Renyi bound (Li & Turner 2016).

    ``log w_k = log_px_z_k + log N(z_k; prior_mu, e^prior_logvar) - log N(z_k; mu, e^logvar)``, both
    densities summed over D, and per example ``1/(1 - alpha) log (1/K) sum_k w_k^(1 - alpha)``:
    alpha = 0 is IWAE ``log (1/K) sum_k w_k``, alpha = 1 the ELBO ``mean_k log w_k`` (computed as
    that limit).  Fused: one pass over z computes both log-densities, the sums over D and an
    online log-sum-exp over K.

    Args:
        log_px_z: ``[K, B]`` decoder log-likelihoods, any floating dtype (converted to the compute
            dtype, float32 or float64 for float64 z); K >= 1.
        z: ``[K, B, D]`` samples of q (e.g. from :func:`reparameterize`).
        mu, logvar: ``[B, D]``, q's parameters; z, mu, logvar and the priors share dtype and device.
        prior_mu, prior_logvar: None (0: the prior N(0, I)), ``[D]`` (one learned prior) or ``[B, D]``;
            their gradients come back in their own shape (a [D] prior's summed over B in a fixed order).
        alpha: any finite float.  In (0, 1] the exact Renyi bound lies between the ELBO and
            log p(x); below 0 it is above log p(x) (Li & Turner, Thm. 1; VR-max as alpha -> -inf);
            above 1 it is below the ELBO.  Any K-sample estimate of it is biased.
        stl: "sticking the landing" (Roeder et al. 2017): the gradient reaches mu and logvar only
            through z, not through q's density directly (log q is evaluated with mu, logvar detached).
        reduction: ``"per_example"`` -> ``[B]``; ``"sum"`` -> 0-d; ``"batchmean"`` -> 0-d, the mean over B.
        return_weights: also return the normalized weights ``[K, B]`` (detached, compute dtype):
            ``softmax_k (1 - alpha) log w_k`` -- the importance weights for alpha = 0, 1/K for alpha = 1 --
            which are the bound's derivatives by log w_k.  They sum to 1 over K, except for an example
            whose bound is -inf, whose weights are 0.
        backend: ``"reference" | "cpu" | "cuda" | "triton"``; default: see vaekernels.backends.

    Returns the bound in the compute dtype (float32, float64 for float64 z): bounds near -1e4 and
    their sums leave the float16 range.  With ``return_weights``, ``(bound, weights)``.

    Edge cases: a sample with log w_k = -inf has weight 0 and gradient 0; an example whose bound is
    -inf (every log w_k = -inf; for alpha >= 1 any one) has gradient 0, not NaN; +inf and NaN
    propagate.  Backward keeps only the inputs and the weights ``[K, B]``.
    """
    op = "iwae_bound"
    _checks.dims(op, "log_px_z", _checks.tensor(op, "log_px_z", log_px_z), 2, "[K, B]")
    _checks.dims(op, "z", _checks.tensor(op, "z", z), 3, "[K, B, D]")
    _checks.same_device(op, "z", z, "log_px_z", log_px_z)
    if z.shape[:2] != log_px_z.shape:
        raise ValueError(f"{op}: z has shape {tuple(z.shape)} but log_px_z has {tuple(log_px_z.shape)}; "
                         "expected z: [K, B, D] and log_px_z: [K, B]")
    if z.shape[0] == 0:
        raise ValueError(f"{op}: needs K >= 1 samples, got log_px_z of shape {tuple(log_px_z.shape)}")
    _checks.tensor(op, "mu", mu)
    _checks.same_device(op, "mu", mu, "z", z)
    _checks.same_dtype(op, "mu", mu, "z", z)
    if mu.shape != z.shape[1:]:
        raise ValueError(f"{op}: mu has shape {tuple(mu.shape)} but z has {tuple(z.shape)}; expected mu: [B, D] "
                         f"= {tuple(z.shape[1:])}")
    _checks.like(op, "logvar", logvar, "mu", mu)
    if prior_mu is not None:
        _checks.trailing_like(op, "prior_mu", prior_mu, "mu", mu, (1, 2))
    if prior_logvar is not None:
        _checks.trailing_like(op, "prior_logvar", prior_logvar, "mu", mu, (1, 2))
    alpha = _checks.finite_float(op, "alpha", alpha)
    # 1 - alpha is rounded to the compute dtype; past its range it is inf and the bound NaN (inf * 0,
    # inf - inf), so such an alpha is refused here rather than answered with NaN.
    cdt = backends.compute_dtype(z.dtype)
    if not abs(1.0 - alpha) <= torch.finfo(cdt).max:
        raise ValueError(f"{op}: alpha must have |1 - alpha| <= {torch.finfo(cdt).max:.4g} (the {cdt} range of the "
                         f"computation), got alpha={alpha!r}")
    _checks.flag(op, "stl", stl)
    _checks.one_of(op, "reduction", reduction, IWAE_REDUCTIONS)
    _checks.flag(op, "return_weights", return_weights)
    name = backends.resolve(op, z.device, z.dtype, backend)
    if name == "reference":
        bound, weights = _iwae_bound_ref.iwae_bound(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha, stl)
    else:
        lpx = log_px_z.to(backends.compute_dtype(z.dtype))
        bound, weights = _iwae_bound_op.run(lpx, z, mu, logvar, prior_mu, prior_logvar, alpha, stl, name)
    if reduction == "sum":
        bound = bound.sum()
    elif reduction == "batchmean":
        bound = bound.mean()
    return (bound, weights) if return_weights else bound


def log_mean_exp(x: Tensor, dim: int, keepdim: bool = False, *, backend: Optional[str] = None) -> Tensor:
    """``log (1/n) sum_j exp(x_j)`` along ``dim`` (n = x.shape[dim] >= 1), stable (max-shifted, online).

    Where every entry along dim is -inf the value is -inf and its gradient 0 (torch.logsumexp's
    gradient is NaN there); +inf and NaN propagate.  Returns x's shape without dim (kept as size 1
    with ``keepdim``) in the compute dtype (float32, float64 for float64).  The gradient is
    ``grad * softmax(x)`` along dim; backward keeps x and the result.
    """
    op = "log_mean_exp"
    _checks.tensor(op, "x", x, min_dim=1)
    dim = _checks.dim_index(op, "dim", dim, x)
    _checks.flag(op, "keepdim", keepdim)
    if x.shape[dim] == 0:
        raise ValueError(f"{op}: x has size 0 along dim {dim} (shape {tuple(x.shape)}): the mean of no terms")
    name = backends.resolve(op, x.device, x.dtype, backend)
    if name == "reference":
        return _log_mean_exp_ref.log_mean_exp(x, dim, keepdim)
    out = _log_mean_exp_op.run(x, dim, name)
    return out.unsqueeze(dim) if keepdim else out


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """``log N(z; mu, e^logvar) = -1/2 sum_d (log 2 pi + logvar + (z - mu)^2 e^-logvar)``, over the last dim.

    Args:
        z: ``[S..., *mu.shape]``: mu and logvar broadcast over z's leading sample dimensions (e.g.
            z: [K, B, D] with mu: [B, D] or [D]), without being materialized.
        mu, logvar: ``[..., D]``, same shape; z, mu, logvar share dtype and device.
    Returns ``z.shape[:-1]`` in the compute dtype (float32, float64 for float64): a sum of D
    log-densities leaves the float16 range easily.  Fused: one pass over z; e^-logvar computed
    once per row of mu, not per sample.  Backward keeps the inputs only.
    """
    op = "gaussian_log_prob"
    _checks.tensor(op, "mu", mu, min_dim=1)
    _checks.like(op, "logvar", logvar, "mu", mu)
    _checks.tensor(op, "z", z)
    _checks.same_device(op, "z", z, "mu", mu)
    _checks.same_dtype(op, "z", z, "mu", mu)
    if z.dim() < mu.dim() or z.shape[z.dim() - mu.dim():] != mu.shape:
        raise ValueError(f"{op}: z has shape {tuple(z.shape)} but mu has {tuple(mu.shape)}; mu and logvar must be "
                         "z's trailing dimensions")
    name = backends.resolve(op, z.device, z.dtype, backend)
    if name == "reference":
        return _gaussian_log_prob_ref.gaussian_log_prob(z, mu, logvar)
    return _gaussian_log_prob_op.run(z, mu, logvar, name)
