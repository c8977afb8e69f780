"""vaekernels.nn: the op modules, the VAE's objectives against hand-written math, the naive twin
(fused backend vs ``backend="reference"``: same losses and gradients), the backend flag, an exact
log-likelihood on a linear-Gaussian model, and the migration from PyTorch's VAE example."""
import copy
import math

import pytest
import torch
import torch.nn.functional as tF
from torch import nn

import vaekernels as vk
from vaekernels import functional

from conftest import KERNEL_CASES, require

P, H, D, B = 10, 16, 3, 13  # data dim, hidden width, latent dim, batch


def make_vae(likelihood="bernoulli", prior="standard", backend=None, device="cpu"):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, H), nn.Tanh())
    decoder = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, P))
    model = vk.nn.VAE(encoder, decoder, D, likelihood=likelihood, prior=prior, backend=backend)
    with torch.no_grad():
        if prior == "learned":  # away from N(0, I), so the prior's gradients are not trivial
            model.prior_mu.normal_(0.0, 0.5)
            model.prior_logvar.normal_(0.0, 0.5)
        if likelihood == "gaussian":
            model.log_scale.fill_(-0.3)
    return model.to(device)


def make_x(likelihood, device="cpu", n=B):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, P, generator=g) < 0.4).float() if likelihood == "bernoulli" else torch.randn(n, P, generator=g)
    return x.to(device)


def gaussian_log_density(z, mu, logvar):
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(-1)


class Capture:
    """Records the decoder's inputs (z) and the latent head's outputs (mu, logvar) of a VAE."""

    def __init__(self, model):
        self.z, self.q = [], []
        self.handles = [
            model.decoder.register_forward_pre_hook(lambda m, a: self.z.append(a[0].detach().clone())),
            model.latent.register_forward_hook(lambda m, a, out: self.q.append(tuple(t.detach().clone() for t in out))),
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def hand_log_px_z(model, x, z):
    """log p(x|z) by hand: [..., B] for z [..., B, D]."""
    out = model.decoder(z.reshape(-1, D)).reshape(*z.shape[:-1], P)
    if model.likelihood == "bernoulli":
        return -tF.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    s = model.log_scale
    return (-0.5 * (math.log(2 * math.pi) + 2 * s + (x - out) ** 2 / torch.exp(2 * s))).sum(-1)


# ----------------------------------------------------------------------------- the pieces
def test_gaussian_latent_shapes():
    head = vk.nn.GaussianLatent(7, 4)
    mu, logvar = head(torch.randn(2, 5, 7))
    assert mu.shape == logvar.shape == (2, 5, 4) and mu.is_contiguous() and logvar.is_contiguous()


def test_op_modules_are_the_functional_ops():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    pm, plv = torch.randn(4, generator=g), torch.randn(4, generator=g)

    torch.manual_seed(3)
    z = vk.nn.Reparameterize(6)(mu, logvar)
    torch.manual_seed(3)
    assert torch.equal(z, vk.reparameterize(mu, logvar, 6))

    kl = vk.nn.GaussianKL("batchmean", free_bits=0.1, backend="reference")(mu, logvar, pm, plv)
    assert torch.equal(kl, vk.gaussian_kl(mu, logvar, pm, plv, reduction="batchmean", free_bits=0.1,
                                          backend="reference"))

    lpx = torch.randn(6, 5, generator=g)
    bound, weights = vk.nn.IWAEBound(alpha=0.5, stl=True, return_weights=True)(lpx, z, mu, logvar, pm, plv)
    ref_bound, ref_weights = vk.iwae_bound(lpx, z, mu, logvar, pm, plv, alpha=0.5, stl=True, return_weights=True)
    assert torch.equal(bound, ref_bound) and torch.equal(weights, ref_weights)
    assert "backend='reference'" in repr(vk.nn.GaussianKL(backend="reference"))


# ----------------------------------------------------------------------------- objectives by hand
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_elbo_is_the_hand_written_elbo(likelihood, prior):
    model, x = make_vae(likelihood, prior), make_x(likelihood)
    with Capture(model) as cap:
        loss = model.elbo(x, beta=0.7)
    (z,), ((mu, logvar),) = cap.z, cap.q
    reconstruction = -hand_log_px_z(model, x, z).mean()
    pm, plv = model.prior_params()
    pm = torch.zeros(D) if pm is None else pm.detach()
    plv = torch.zeros(D) if plv is None else plv.detach()
    kl = (0.5 * (plv - logvar + (logvar.exp() + (mu - pm) ** 2) / plv.exp() - 1)).sum(-1).mean()
    torch.testing.assert_close(loss.reconstruction, reconstruction)
    torch.testing.assert_close(loss.kl, kl)
    torch.testing.assert_close(loss.total, reconstruction + 0.7 * kl)
    assert isinstance(loss, vk.nn.Loss) and loss.total.requires_grad


def test_elbo_free_bits_floor_each_latent_dim():
    model, x = make_vae(), make_x("bernoulli")
    lam = 10.0  # above every dim's KL at initialization: each dim contributes lam, no KL gradient
    loss = model.elbo(x, free_bits=lam)
    torch.testing.assert_close(loss.kl, torch.tensor(lam * D))
    loss.kl.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("alpha,stl", [(0.0, False), (0.5, True)])
def test_iwae_is_the_hand_written_bound(alpha, stl):
    model, x = make_vae(prior="learned"), make_x("bernoulli")
    k = 5
    with Capture(model) as cap:
        loss = model(x, k, alpha=alpha, stl=stl)
    (z,), ((mu, logvar),) = cap.z, cap.q
    z = z.view(k, B, D)
    lpx = hand_log_px_z(model, x, z)
    lw = lpx + gaussian_log_density(z, model.prior_mu.detach(), model.prior_logvar.detach()) \
        - gaussian_log_density(z, mu, logvar)
    bound = (torch.logsumexp((1 - alpha) * lw, 0) - math.log(k)) / (1 - alpha)
    torch.testing.assert_close(loss.total, -bound.mean())
    torch.testing.assert_close(loss.reconstruction, -lpx.mean())
    kl = vk.gaussian_kl(mu, logvar, model.prior_mu.detach(), model.prior_logvar.detach(), reduction="batchmean")
    torch.testing.assert_close(loss.kl, kl)
    assert loss.total.requires_grad and not loss.reconstruction.requires_grad and not loss.kl.requires_grad


def test_log_likelihood_combines_chunks_exactly():
    model, x = make_vae(prior="learned"), make_x("bernoulli")
    k = 23
    with Capture(model) as cap:
        ll = model.log_likelihood(x, k, chunk_size=7)  # chunks of 7, 7, 7, 2 samples
    assert ll.shape == (B,) and not ll.requires_grad
    assert [z.shape[0] for z in cap.z] == [7 * B, 7 * B, 7 * B, 2 * B]
    z = torch.cat([zc.view(-1, B, D) for zc in cap.z])
    (mu, logvar), = cap.q
    with torch.no_grad():
        lw = hand_log_px_z(model, x, z) + gaussian_log_density(z, model.prior_mu, model.prior_logvar) \
            - gaussian_log_density(z, mu, logvar)
    torch.testing.assert_close(ll, torch.logsumexp(lw, 0) - math.log(k))


@pytest.mark.parametrize("prior", ["standard", "learned"])
def test_log_likelihood_is_exact_when_q_is_the_true_posterior(prior):
    """A linear-Gaussian VAE, x = W z + b + scale * noise, with orthogonal columns of W so the true
    posterior is a diagonal Gaussian linear in x.  With q set to it every importance weight equals
    p(x), so log_likelihood (and the IWAE bound for any K) is log N(x; W m + b, W S W^T + scale^2 I)."""
    torch.manual_seed(0)
    p, d = 6, 3
    decoder = nn.Linear(d, p).double()
    model = vk.nn.VAE(nn.Identity(), decoder, d, features=p, likelihood="gaussian", prior=prior,
                      gaussian_scale=0.7).double()
    scale = model.log_scale.exp().item()  # 0.7 as the float32 buffer holds it
    w = torch.linalg.qr(torch.randn(p, d, dtype=torch.float64))[0] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    b = torch.randn(p, dtype=torch.float64)
    m = torch.randn(d, dtype=torch.float64) * 0.5 if prior == "learned" else torch.zeros(d, dtype=torch.float64)
    s = torch.rand(d, dtype=torch.float64) + 0.5 if prior == "learned" else torch.ones(d, dtype=torch.float64)
    post_var = 1 / (1 / s + (w * w).sum(0) / scale**2)  # W^T W is diagonal
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
        # post_mean = post_var * (m / s + W^T (x - b) / scale^2)
        model.latent.fc_mu.weight.copy_(post_var[:, None] * w.t() / scale**2)
        model.latent.fc_mu.bias.copy_(post_var * (m / s - w.t() @ b / scale**2))
        model.latent.fc_logvar.weight.zero_()
        model.latent.fc_logvar.bias.copy_(post_var.log())
        if prior == "learned":
            model.prior_mu.copy_(m)
            model.prior_logvar.copy_(s.log())
    x = torch.randn(9, p, dtype=torch.float64) * 2
    cov = w @ torch.diag(s) @ w.t() + scale**2 * torch.eye(p, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(w @ m + b, cov)
    exact = marginal.log_prob(x)
    torch.testing.assert_close(model.log_likelihood(x, 50, chunk_size=16), exact, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(-model.iwae(x, 3).total, exact.mean(), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the naive twin
@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("likelihood,prior", [("bernoulli", "standard"), ("gaussian", "learned")])
@pytest.mark.parametrize("objective", [dict(), dict(beta=0.5, free_bits=0.05), dict(num_samples=4),
                                       dict(num_samples=4, alpha=0.5, stl=True)], ids=["elbo", "beta-freebits", "iwae",
                                                                                     "renyi-stl"])
def test_naive_twin_gives_the_same_losses_and_gradients(device, backend, likelihood, prior, objective):
    """Same weights, same seed: the fused backend and backend="reference" agree in float32."""
    require(backend, device)
    fused = make_vae(likelihood, prior, backend=backend, device=device)
    naive = copy.deepcopy(fused)
    naive.backend = "reference"
    x = make_x(likelihood, device)
    losses = []
    for model in (fused, naive):
        torch.manual_seed(7)
        loss = model(x, **objective)
        loss.total.backward()
        losses.append(loss)
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(fused.named_parameters(), naive.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")


def test_naive_twin_log_likelihood_sample_and_reconstruct():
    fused = make_vae("bernoulli", "learned")
    naive = copy.deepcopy(fused)
    naive.backend = "reference"
    x = make_x("bernoulli")
    outs = []
    for model in (fused, naive):
        torch.manual_seed(11)
        outs.append((model.log_likelihood(x, 300, chunk_size=64), model.sample(5), model.reconstruct(x)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_backend_flag_and_use_backend(monkeypatch):
    """backend=None follows vaekernels.use_backend; an explicit backend wins over the block."""
    calls = []
    for op in ("reparameterize", "gaussian_kl", "iwae_bound"):
        ref_module = getattr(functional, f"_{op}_ref")
        original = getattr(ref_module, op)
        monkeypatch.setattr(ref_module, op, lambda *a, _f=original, _op=op, **k: calls.append(_op) or _f(*a, **k))
    model, x = make_vae(), make_x("bernoulli")
    model(x)
    model(x, 2)
    assert calls == []  # the default on CPU tensors is the cpu backend
    with vk.use_backend("reference"):
        model(x)
        model(x, 2)
    assert calls == ["reparameterize", "gaussian_kl", "reparameterize", "iwae_bound", "gaussian_kl"]
    calls.clear()
    model.backend = "cpu"
    with vk.use_backend("reference"):
        model(x, 2)
    assert calls == []
    model.backend = "reference"
    model.sample(2)
    assert calls == ["reparameterize"]


@pytest.mark.parametrize("backend", [
    "cpu",
    pytest.param(None, id="default"),
])
def test_compile_fullgraph_matches_eager(backend):
    """torch.compile(fullgraph=True) traces the whole VAE (ELBO and IWAE) without a graph break."""
    torch._dynamo.reset()
    model, x = make_vae(prior="learned", backend=backend), make_x("bernoulli")
    model(x, 2)  # loads the backend modules eagerly: an import inside a compiled region is a graph break
    compiled = torch.compile(model, fullgraph=True)
    for objective in (dict(), dict(num_samples=3)):
        results = []
        for fn in (model, compiled):
            model.zero_grad()
            torch.manual_seed(4)
            loss = fn(x, **objective)
            loss.total.backward()
            results.append([loss.total.detach()] + [p.grad.clone() for p in model.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- generation
def test_sample_draws_from_the_learned_prior():
    model = make_vae(prior="learned")
    with torch.no_grad():
        model.prior_logvar.fill_(-40.0)  # sigma = 2e-9: every draw is prior_mu
    samples = model.sample(4)
    expected = torch.sigmoid(model.decoder(model.prior_mu)).detach()
    assert samples.shape == (4, P) and not samples.requires_grad
    torch.testing.assert_close(samples, expected.expand(4, P))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    std = make_vae()
    assert torch.equal(std.sample(3, generator=g1), std.sample(3, generator=g2))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_reconstruct_decodes_the_posterior_mean(likelihood):
    model, x = make_vae(likelihood), make_x(likelihood)
    out = model.decoder(model.encode(x)[0]).detach()
    expected = torch.sigmoid(out) if likelihood == "bernoulli" else out
    torch.testing.assert_close(model.reconstruct(x), expected)


def test_decoder_may_return_images():
    """Any data shape: x [B, 1, 2, 5], decoder output [N, 1, 2, 5]."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(P, H))
    decoder = nn.Sequential(nn.Linear(D, P), nn.Unflatten(1, (1, 2, 5)))
    model = vk.nn.VAE(encoder, decoder, D)
    x = make_x("bernoulli").view(B, 1, 2, 5)
    assert model(x).total.shape == () and model(x, 3).total.shape == ()
    assert model.log_likelihood(x, 10).shape == (B,)
    assert model.sample(2).shape == (2, 1, 2, 5) and model.reconstruct(x).shape == x.shape


# ----------------------------------------------------------------------------- checks
def test_input_checks():
    enc, dec = nn.Linear(P, H), nn.Linear(D, P)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        vk.nn.VAE(enc, dec, D, likelihood="poisson")
    with pytest.raises(ValueError, match="prior must be one of"):
        vk.nn.VAE(enc, dec, D, prior="vamp")
    with pytest.raises(ValueError, match="backend must be one of"):
        vk.nn.VAE(enc, dec, D, backend="fused")
    with pytest.raises(ValueError, match="gaussian_scale"):
        vk.nn.VAE(enc, dec, D, likelihood="gaussian", gaussian_scale=0.0)
    with pytest.raises(ValueError, match="pass features="):
        vk.nn.VAE(nn.Tanh(), dec, D)
    with pytest.raises(ValueError, match="the decoder returned"):
        vk.nn.VAE(enc, nn.Linear(D, P + 1), D).elbo(make_x("bernoulli"))
    model, x = make_vae(), make_x("bernoulli")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        model.iwae(x, 0)
    with pytest.raises(TypeError, match="VAE.log_likelihood: num_samples must be a positive int"):
        model.log_likelihood(x, 10.0)
    with pytest.raises(ValueError, match="beta must be a finite float >= 0"):
        model.elbo(x, beta=-1.0)
    with pytest.raises(ValueError, match="free_bits must be a finite float >= 0"):
        model.elbo(x, free_bits=-0.1)


# ----------------------------------------------------------------------------- migration (docs/migration.md)
def pytorch_example_reparameterize(mu, logvar, eps):
    """PyTorch examples/vae/main.py, VAE.reparameterize, with eps given instead of torch.randn_like."""
    std = torch.exp(0.5 * logvar)
    return mu + eps * std


def pytorch_example_kld(mu, logvar):
    """PyTorch examples/vae/main.py, loss_function."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


@pytest.mark.parametrize("backend", [None, "reference"])
def test_migration_lines_give_the_same_kl_z_and_gradients(backend):
    g = torch.Generator().manual_seed(0)
    mu0, logvar0 = torch.randn(128, 20, generator=g), torch.randn(128, 20, generator=g)
    upstream = torch.randn(128, 20, generator=g)

    def run(fn):
        mu, logvar = mu0.clone().requires_grad_(True), logvar0.clone().requires_grad_(True)
        z, kld = fn(mu, logvar)
        ((z * upstream).sum() + 0.3 * kld).backward()
        return z.detach(), kld.detach(), mu.grad, logvar.grad

    seed = 2024
    eps = vk.normal_noise(mu0.shape, seed)  # exactly the noise reparameterize draws with this seed
    theirs = run(lambda mu, lv: (pytorch_example_reparameterize(mu, lv, eps), pytorch_example_kld(mu, lv)))
    ours = run(lambda mu, lv: (vk.reparameterize(mu, lv, seed=seed, backend=backend),
                               vk.gaussian_kl(mu, lv, reduction="sum", backend=backend)))
    for a, b, what in zip(ours, theirs, ("z", "KLD", "mu.grad", "logvar.grad")):
        torch.testing.assert_close(a, b, msg=lambda m: f"{what}: {m}")
