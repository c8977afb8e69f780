"""A thin ``nn`` layer over the fused ops: a VAE user changes an import, not a model.

    import vaekernels as vk
    model = vk.nn.VAE(encoder, decoder, latent_dim=16)      # encoder: x -> features, decoder: z -> logits
    loss = model(x)                                         # vk.nn.Loss(total, reconstruction, kl)
    loss.total.backward()
    model.log_likelihood(x_test, 1000)                      # [B] importance-sampled log p(x)

Every op call of a module passes the module's ``backend`` attribute (a constructor argument, and
settable later): None is the default choice, which also honours ``vaekernels.use_backend`` blocks;
``backend="reference"`` runs the same model on the naive plain-torch code (the "naive twin").  The
backends share one random stream, so with the same seed both give the same losses and gradients.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as tF
from torch import Tensor, nn

from . import _checks, backends
from . import functional as F

__all__ = ["GaussianLatent", "Reparameterize", "GaussianKL", "IWAEBound", "Loss", "VAE"]

_LOG_2PI = math.log(2 * math.pi)
# Decoder rows (samples x examples) per pass in VAE.log_likelihood when chunk_size is not given.
_LL_ROWS = 1 << 16


def _backend_arg(op: str, backend: Optional[str]) -> Optional[str]:
    if backend is not None:
        _checks.one_of(op, "backend", backend, backends.BACKENDS)
    return backend


class GaussianLatent(nn.Module):
    """The Gaussian latent head: features ``[..., F]`` -> ``(mu, logvar)``, each ``[..., D]``.

    Two ``Linear`` layers (``fc_mu``, ``fc_logvar``: PyTorch's VAE example's ``fc21``/``fc22``), so
    mu and logvar come out contiguous.  logvar is not clamped."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.fc_mu = nn.Linear(in_features, latent_dim)
        self.fc_logvar = nn.Linear(in_features, latent_dim)

    def forward(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        return self.fc_mu(h), self.fc_logvar(h)


class Reparameterize(nn.Module):
    """:func:`vaekernels.reparameterize` as a module: ``(mu, logvar)`` ``[..., D]`` -> z ``[..., D]``
    (``num_samples=None``) or ``[K, ..., D]``; the noise is drawn from torch's generator."""

    def __init__(self, num_samples: Optional[int] = None, *, backend: Optional[str] = None) -> None:
        super().__init__()
        self.num_samples = _checks.positive_int("Reparameterize", "num_samples", num_samples, allow_none=True)
        self.backend = _backend_arg("Reparameterize", backend)

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return F.reparameterize(mu, logvar, self.num_samples, backend=self.backend)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, backend={self.backend!r}"


class GaussianKL(nn.Module):
    """:func:`vaekernels.gaussian_kl` as a module: ``KL(N(mu, e^logvar) || prior)`` for mu, logvar
    ``[..., D]`` and a prior of None (N(0, I)), ``[D]``, ``[B, D]`` or mu's shape; the result's shape
    follows ``reduction`` (``"per_example"``: ``[...]``)."""

    def __init__(self, reduction: str = "per_example", free_bits: float = 0.0, *,
                 backend: Optional[str] = None) -> None:
        super().__init__()
        self.reduction = _checks.one_of("GaussianKL", "reduction", reduction,
                                        ("none", "per_example", "sum", "batchmean"))
        self.free_bits = _checks.nonnegative_float("GaussianKL", "free_bits", free_bits)
        self.backend = _backend_arg("GaussianKL", backend)

    def forward(self, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor] = None,
                prior_logvar: Optional[Tensor] = None) -> Tensor:
        return F.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction=self.reduction,
                             free_bits=self.free_bits, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, free_bits={self.free_bits}, backend={self.backend!r}"


class IWAEBound(nn.Module):
    """:func:`vaekernels.iwae_bound` as a module: ``(log_px_z [K, B], z [K, B, D], mu [B, D],
    logvar [B, D], prior_mu, prior_logvar)`` -> the bound ``[B]`` (``reduction="per_example"``) or
    0-d, and the normalized weights ``[K, B]`` too when ``return_weights``."""

    def __init__(self, alpha: float = 0.0, stl: bool = False, reduction: str = "per_example", *,
                 return_weights: bool = False, backend: Optional[str] = None) -> None:
        super().__init__()
        self.alpha = _checks.finite_float("IWAEBound", "alpha", alpha)
        self.stl = _checks.flag("IWAEBound", "stl", stl)
        self.reduction = _checks.one_of("IWAEBound", "reduction", reduction, F.IWAE_REDUCTIONS)
        self.return_weights = _checks.flag("IWAEBound", "return_weights", return_weights)
        self.backend = _backend_arg("IWAEBound", backend)

    def forward(self, log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor] = None,
                prior_logvar: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        return F.iwae_bound(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha=self.alpha, stl=self.stl,
                            reduction=self.reduction, return_weights=self.return_weights, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, stl={self.stl}, reduction={self.reduction!r}, "
                f"return_weights={self.return_weights}, backend={self.backend!r}")


class Loss(NamedTuple):
    """A VAE loss, each a 0-d tensor averaged over the batch (nats per example).

    total:          what to minimize.  ``elbo``: ``reconstruction + beta * kl`` (the negative ELBO
                    for beta = 1, free_bits = 0).  ``iwae``: the negative bound, ``-mean_b bound_b``.
    reconstruction: ``-log p(x|z)``.  ``elbo``: for the one sample z.  ``iwae``: averaged over the K
                    samples, detached (a diagnostic).
    kl:             ``KL(q(z|x) || p(z))``.  ``elbo``: as it enters total, i.e. with free bits
                    ``sum_d max(free_bits, kl_d)``.  ``iwae``: the plain KL, detached (a diagnostic:
                    ``reconstruction + kl`` is the K-sample ELBO estimate, >= total).
    """

    total: Tensor
    reconstruction: Tensor
    kl: Tensor


class VAE(nn.Module):
    """A variational auto-encoder ``x -> encoder -> GaussianLatent -> z -> decoder -> p(x|z)``.

    Args:
        encoder: maps x ``[B, *S]`` to features ``[B, F]``.
        decoder: maps z ``[N, D]`` to ``[N, *S]``: the logits of p(x|z) (``"bernoulli"``) or its mean
            (``"gaussian"``).  Samples and examples are flattened into N before the decoder is called.
        latent_dim: D.
        features: F, the encoder's output width; None takes ``out_features`` of the last ``nn.Linear``
            in ``encoder.modules()`` (pass it when the encoder does not end in one).
        likelihood: ``"bernoulli"``: ``log p(x|z) = sum x * l - softplus(l)`` over ``*S`` with logits
            l; x may be binary or in [0, 1] (continuous targets: the binary cross-entropy, which is
            then not a normalized density).  ``"gaussian"``: ``sum log N(x; mean, scale^2)``.
        prior: ``"standard"``: N(0, I).  ``"learned"``: N(prior_mu, e^prior_logvar) with parameters
            ``prior_mu``, ``prior_logvar`` ``[D]`` (initialized to N(0, I)).
        gaussian_scale: the Gaussian decoder's standard deviation, one for every element of x:
            ``"learned"`` (the parameter ``log_scale``, initialized to 0: scale 1) or a fixed float > 0
            (the buffer ``log_scale``).  Ignored by the Bernoulli likelihood.
        backend: the backend of every vaekernels op the model calls (None: the default choice,
            honouring ``vaekernels.use_backend``); the attribute ``backend`` may be set later.

    Calling the model (``model(x)``, which DistributedDataParallel wraps) is ``elbo(x, ...)``, or
    ``iwae(x, num_samples, ...)`` when ``num_samples`` is given.  The decoder likelihood is plain
    torch in every backend; the noise comes from torch's generator (``torch.manual_seed``).
    ``torch.compile(model, fullgraph=True)`` traces it when ``backend`` is named (with None, the
    ``use_backend`` lookup breaks the graph).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, *, features: Optional[int] = None,
                 likelihood: str = "bernoulli", prior: str = "standard",
                 gaussian_scale: Union[str, float] = "learned", backend: Optional[str] = None) -> None:
        super().__init__()
        op = "VAE"
        latent_dim = _checks.positive_int(op, "latent_dim", latent_dim)
        if features is None:
            linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"{op}: the encoder has no nn.Linear to take the feature width from; pass features=")
            features = linears[-1].out_features
        features = _checks.positive_int(op, "features", features)
        self.likelihood = _checks.one_of(op, "likelihood", likelihood, ("bernoulli", "gaussian"))
        self.prior = _checks.one_of(op, "prior", prior, ("standard", "learned"))
        self.backend = _backend_arg(op, backend)
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.latent = GaussianLatent(features, latent_dim)
        self.decoder = decoder
        if prior == "learned":
            self.prior_mu = nn.Parameter(torch.zeros(latent_dim))
            self.prior_logvar = nn.Parameter(torch.zeros(latent_dim))
        if likelihood == "gaussian":
            if gaussian_scale == "learned":
                self.log_scale = nn.Parameter(torch.zeros(()))
            else:
                scale = _checks.nonnegative_float(op, "gaussian_scale", gaussian_scale)
                if scale == 0.0:
                    raise ValueError(f"{op}: gaussian_scale must be 'learned' or a float > 0, got {gaussian_scale!r}")
                self.register_buffer("log_scale", torch.tensor(math.log(scale)))

    # ------------------------------------------------------------------ pieces
    def prior_params(self) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(prior_mu, prior_logvar), each ``[D]``, or (None, None) for the standard prior."""
        if self.prior == "learned":
            return self.prior_mu, self.prior_logvar
        return None, None

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """x ``[B, *S]`` -> (mu, logvar) of q(z|x), each ``[B, D]``."""
        return self.latent(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """z ``[..., D]`` -> the decoder's output ``[..., *S]`` (logits or Gaussian mean)."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        return out.reshape(*lead, *out.shape[1:])

    def log_px_z(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) summed over the data dims: x ``[B, *S]``, decoder output ``[..., B, *S]`` -> ``[..., B]``."""
        if out.shape[out.dim() - x.dim():] != x.shape:
            raise ValueError(f"VAE: the decoder returned {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
                             f"expected [..., {', '.join(map(str, x.shape))}]")
        if self.likelihood == "bernoulli":
            lp = x * out - tF.softplus(out)  # x log sigmoid(l) + (1 - x) log sigmoid(-l), stable
        else:
            lp = -0.5 * (_LOG_2PI + 2 * self.log_scale + ((x - out) * torch.exp(-self.log_scale)) ** 2)
        return lp.flatten(out.dim() - x.dim() + 1).sum(-1)

    def output_mean(self, out: Tensor) -> Tensor:
        """The mean of p(x|z) from the decoder's output: sigmoid(logits) or the Gaussian mean."""
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    # ------------------------------------------------------------------ objectives
    def forward(self, x: Tensor, num_samples: Optional[int] = None, **kwargs) -> Loss:
        """The training loss: ``elbo(x, **kwargs)``, or ``iwae(x, num_samples, **kwargs)``."""
        if num_samples is None:
            return self.elbo(x, **kwargs)
        return self.iwae(x, num_samples, **kwargs)

    def elbo(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> Loss:
        """The (beta-)ELBO with one reparameterized sample per example, x ``[B, *S]`` -> :class:`Loss`.

        ``total = mean_b(-log p(x_b|z_b)) + beta * KL`` with the KL in closed form
        (:func:`vaekernels.gaussian_kl`, batch mean, free bits per latent dim: Kingma et al. 2016)."""
        beta = _checks.nonnegative_float("VAE.elbo", "beta", beta)
        mu, logvar = self.encode(x)
        z = F.reparameterize(mu, logvar, backend=self.backend)
        reconstruction = -self.log_px_z(x, self.decode(z)).mean()
        prior_mu, prior_logvar = self.prior_params()
        kl = F.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction="batchmean", free_bits=free_bits,
                           backend=self.backend)
        return Loss(reconstruction + beta * kl, reconstruction, kl)

    def _bound(self, x: Tensor, mu: Tensor, logvar: Tensor, k: int, alpha: float, stl: bool) -> Tuple[Tensor, Tensor]:
        """(bound [B], log p(x|z_k) [k, B]) with k fresh samples per example."""
        z = F.reparameterize(mu, logvar, k, backend=self.backend)
        log_px_z = self.log_px_z(x, self.decode(z))
        prior_mu, prior_logvar = self.prior_params()
        bound = F.iwae_bound(log_px_z, z, mu, logvar, prior_mu, prior_logvar, alpha=alpha, stl=stl,
                             backend=self.backend)
        return bound, log_px_z

    def iwae(self, x: Tensor, num_samples: int, alpha: float = 0.0, stl: bool = False) -> Loss:
        """The importance-weighted (alpha = 0; Burda et al. 2016) or Renyi (Li & Turner 2016) bound with
        K = ``num_samples`` samples per example, x ``[B, *S]`` -> :class:`Loss` with
        ``total = -mean_b bound_b`` (:func:`vaekernels.iwae_bound`); ``stl``: sticking the landing."""
        k = _checks.positive_int("VAE.iwae", "num_samples", num_samples)
        mu, logvar = self.encode(x)
        bound, log_px_z = self._bound(x, mu, logvar, k, alpha, stl)
        with torch.no_grad():
            reconstruction = -log_px_z.mean()
            kl = F.gaussian_kl(mu, logvar, *self.prior_params(), reduction="batchmean", backend=self.backend)
        return Loss(-bound.mean(), reconstruction, kl)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int, *, chunk_size: Optional[int] = None) -> Tensor:
        """The importance-sampled estimate of log p(x) (the IWAE bound, alpha = 0, with K =
        ``num_samples``), x ``[B, *S]`` -> ``[B]`` in nats, without gradients.

        The K samples are drawn ``chunk_size`` at a time (default: about 65536 decoder rows per
        pass) and the chunks' bounds combined exactly: ``logsumexp_c(bound_c + log K_c) - log K``.
        A consistent estimator that approaches log p(x) from below as K grows; its mean over a test
        set +- the standard error is the usual VAE evaluation.  The module's mode is left as it is."""
        k = _checks.positive_int("VAE.log_likelihood", "num_samples", num_samples)
        chunk = _checks.positive_int("VAE.log_likelihood", "chunk_size", chunk_size, allow_none=True)
        if chunk is None:
            chunk = max(1, _LL_ROWS // max(1, x.shape[0]))
        mu, logvar = self.encode(x)
        parts = []
        for start in range(0, k, chunk):
            kc = min(chunk, k - start)
            parts.append(self._bound(x, mu, logvar, kc, 0.0, False)[0] + math.log(kc))
        return torch.logsumexp(torch.stack(parts), 0) - math.log(k)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """n draws z ~ p(z), decoded to the mean of p(x|z): ``[n, *S]`` (probabilities for Bernoulli)."""
        n = _checks.positive_int("VAE.sample", "n", n)
        ref = self.latent.fc_mu.weight
        prior_mu, prior_logvar = self.prior_params()
        zeros = torch.zeros(self.latent_dim, dtype=ref.dtype, device=ref.device)
        z = F.reparameterize(zeros if prior_mu is None else prior_mu, zeros if prior_logvar is None else prior_logvar,
                             n, generator=generator, backend=self.backend)
        return self.output_mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x ``[B, *S]`` -> the mean of p(x|z) at the posterior mean z = mu(x): ``[B, *S]``."""
        return self.output_mean(self.decode(self.encode(x)[0]))
