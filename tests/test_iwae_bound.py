"""iwae_bound on every backend against a float64 oracle built from torch.distributions.Normal.log_prob
and torch.logsumexp: alpha, STL, priors, -inf and huge log-weights, K = 1 and K = 5000, weights,
autograd, custom-op, compile, memory, determinism and input checks."""
import math

import pytest
import torch
from torch.distributions import Normal

import vaekernels as vk

from conftest import ALL_CASES, KERNEL_CASES, TOL, assert_within, dtypes_for, require


ALPHAS = (0.0, 0.5, 1.0, -1.0)
PRIORS = ("none", "D", "BD", "mixed")  # mixed: prior_mu [D], prior_logvar [B, D]
SHAPES = [(5, 3, 7), (4, 2, 33)]  # (K, B, D): odd D, not a multiple of any vector width
# float32 arithmetic: 8 ulp of the size of the terms summed (the kernels measure at about 1 ulp).
RTOL32 = 8 * 2.0**-24
INF = math.inf


def randn(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def make(k, b, d, prior="none", dtype=torch.float32, device="cpu", seed=0, lpx_scale=3.0):
    """(log_px_z, z, mu, logvar, prior_mu, prior_logvar): z drawn from q, log_px_z around -50."""
    mu, lv = randn((b, d), seed + 1), randn((b, d), seed + 2, 0.5)
    z = mu + torch.exp(0.5 * lv) * randn((k, b, d), seed + 3)
    lpx = randn((k, b), seed, lpx_scale) - 50
    pm = randn((d,) if prior in ("D", "mixed") else (b, d), seed + 4, 0.5) if prior != "none" else None
    plv = randn((b, d) if prior in ("BD", "mixed") else (d,), seed + 5, 0.5) if prior != "none" else None
    return [None if t is None else t.to(dtype).to(device) for t in (lpx, z, mu, lv, pm, plv)]


def f64(ts, grad=False):
    return [None if t is None else t.detach().cpu().double().requires_grad_(grad) for t in ts]


def oracle_lw(lpx, z, mu, lv, pm, plv, stl=False):
    """float64 log-weights [K, B] from Normal.log_prob (log q with mu, logvar detached for STL)."""
    zero = torch.zeros((), dtype=torch.float64)
    q_mu, q_lv = (mu.detach(), lv.detach()) if stl else (mu, lv)
    log_q = Normal(q_mu, torch.exp(0.5 * q_lv)).log_prob(z).sum(-1)
    prior = Normal(zero if pm is None else pm, torch.exp(0.5 * (zero if plv is None else plv)))
    return lpx + prior.log_prob(z).sum(-1) - log_q


def oracle_bound(lw, alpha):
    if alpha == 1.0:
        return lw.mean(0)
    return (torch.logsumexp((1 - alpha) * lw, 0) - math.log(lw.shape[0])) / (1 - alpha)


def tolerances(ins, alpha, g):
    """float64 error bounds for float32 arithmetic: the log-weights are good to RTOL32 of the size of
    their terms, the bound to the largest of those (plus the sum over K), a weight to its own size
    times (1 - alpha) times the bound's error; gradients follow through |terms|."""
    lpx, z, mu, lv, pm, plv = f64(ins)
    k = z.shape[0]
    iq = torch.exp(-lv)
    ip = torch.ones(()) if plv is None else torch.exp(-plv)
    u, v = z - mu, z - (0 if pm is None else pm)
    plv0 = 0 if plv is None else plv
    lw_scale = lpx.abs().nan_to_num(0.0, 0.0, 0.0) + (math.log(2 * math.pi) + lv.abs() + abs(plv0) + u * u * iq + v * v * ip).sum(-1)
    bound_tol = RTOL32 * (lw_scale.amax(0) + math.sqrt(k) * (1 + (alpha == 1.0) * lw_scale.amax(0)))
    return dict(lw_scale=lw_scale, bound=bound_tol, u=u.abs() * iq, v=v.abs() * ip, uu=u * u * iq, vv=v * v * ip,
                w_rel=abs(1 - alpha) * 2 * bound_tol + RTOL32, g=g.abs())


def check_backward(ins, got_grads, g, alpha, dtype, stl=False, what="", naive=False):
    """Gradients of sum_b g_b bound_b against float64 autograd of the oracle, with tolerances that
    follow each formula's terms.  The fused kernels round a gradient to its dtype once; torch
    autograd of the naive code (``naive``) rounds each path's part (as large as the terms)."""
    leaves = f64(ins, grad=True)
    lw = oracle_lw(*leaves, stl=stl)
    bound = oracle_bound(lw, alpha)
    w = torch.autograd.grad(bound, lw, g, retain_graph=True)[0] / g  # d bound / d lw = the weights
    wanted = [t for t in leaves if t is not None]
    refs = torch.autograd.grad((bound * g).sum(), wanted, allow_unused=True)
    tol = tolerances(ins, alpha, g)
    c_abs = (g * w).abs()
    c_tol = g.abs() * (w * tol["w_rel"] + 1e-7)
    dt, ft = TOL[dtype], TOL[ins[1].dtype]

    def bound_of(ref, terms, dims):  # sum over dims of (c error x |f| + c x arithmetic on |f|) + storage rounding
        t = c_tol[..., None] * terms + (2 * RTOL32 + naive * ft["rtol"]) * c_abs[..., None] * terms
        return (t.sum(dims) if dims else t) + ft["rtol"] * ref.abs() + ft["atol"]

    lpx, z, mu, lv, pm, plv = ins
    names = ["log_px_z", "z", "mu", "logvar", "prior_mu", "prior_logvar"]
    it = iter(refs)
    for name, t, got in zip(names, ins, got_grads):
        if t is None:
            continue
        ref = next(it)
        if name == "log_px_z":
            bound_t = c_tol + dt["rtol"] * ref.abs()
        elif name == "z":
            bound_t = bound_of(ref, tol["u"] + tol["v"], ())
        elif name in ("mu", "logvar") and stl:
            assert got is None or bool((got == 0).all()), f"{what}: STL leaves no direct gradient on {name}"
            continue
        elif name == "mu":
            bound_t = bound_of(ref, tol["u"], (0,))
        elif name == "logvar":
            bound_t = bound_of(ref, 0.5 * (1 + tol["uu"]), (0,))
        elif name == "prior_mu":
            bound_t = bound_of(ref, tol["v"].expand(z.shape), (0,) if t.dim() == 2 else (0, 1))
        else:
            bound_t = bound_of(ref, 0.5 * (1 + tol["vv"]).expand(z.shape), (0,) if t.dim() == 2 else (0, 1))
        assert got is not None, f"{what}: no gradient for {name}"
        assert got.dtype == t.dtype and got.shape == t.shape
        assert_within(got, ref, bound_t, f"{what} d{name}")


def run(ins, alpha, backend, g=None, stl=False, reduction="per_example"):
    """(bound, weights, gradients of sum_b g_b bound_b) from vk.iwae_bound."""
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in ins]
    bound, w = vk.iwae_bound(*leaves, alpha=alpha, stl=stl, reduction=reduction, return_weights=True,
                             backend=backend)
    if g is not None:
        (bound * g.to(bound.device, bound.dtype)).sum().backward()
    return bound, w, [None if t is None else t.grad for t in leaves]


def check_oracle(k, b, d, prior, alpha, dtype, device, backend):
    """Bound, weights and every gradient (non-unit upstream gradient) against the float64 oracle."""
    ins = make(k, b, d, prior, dtype, device, seed=k + d)
    g = randn((b,), 7) + 1.5
    bound, w, grads = run(ins, alpha, backend, g)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert bound.dtype == cdt and w.dtype == cdt and bound.shape == (b,) and w.shape == (k, b)
    lw = oracle_lw(*f64(ins))
    tol = tolerances(ins, alpha, g)
    what = f"{dtype} {(k, b, d)}"
    assert_within(bound, oracle_bound(lw, alpha), tol["bound"] + 1e-6, f"{what} bound")
    ref_w = torch.full_like(lw, 1 / k) if alpha == 1 else torch.softmax((1 - alpha) * lw, 0)
    assert_within(w, ref_w, ref_w * tol["w_rel"] + 1e-7, f"{what} weights")
    check_backward(ins, grads, g, alpha, dtype, what=what, naive=backend == "reference")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_matches_float64_oracle(device, backend, prior, alpha):
    """Every dtype, two shapes."""
    require(backend, device)
    for dtype in dtypes_for(backend, device):
        for k, b, d in SHAPES:
            check_oracle(k, b, d, prior, alpha, dtype, device, backend)


@pytest.mark.parametrize("prior", ("none", "BD"))
@pytest.mark.parametrize("alpha", (0.0, 1.0))
def test_cpu_blocks_and_sample_steps(prior, alpha):
    """The cpu kernels over 3 blocks of examples (32 a task) and samples taken 4 + 4 + 1 a step by
    the forward (kSamplesAtOnce): float32 and float64 against the oracle, as above."""
    for dtype in (torch.float32, torch.float64):
        check_oracle(9, 70, 37, prior, alpha, dtype, "cpu", "cpu")


@pytest.mark.parametrize("prior", ("none", "BD"))
@pytest.mark.parametrize("alpha", (0.0, 0.5))
def test_cpu_backward_steps_with_zero_weights(prior, alpha):
    """The cpu backward takes 4 samples a step (kBwdSamples; here 4 + 4 + 3) and leaves out of a step
    the samples whose weight is 0: -inf log-weights scattered over every position in a step, no
    example without a live sample.  Their rows are exact zeros, the rest against the oracle."""
    k, b, d = 11, 70, 37
    ins = make(k, b, d, prior, seed=4)
    kk, bb = torch.meshgrid(torch.arange(k), torch.arange(b), indexing="ij")
    dead = (kk * 7 + bb * 3) % 5 == 0
    assert not bool(dead.all(0).any()) and all(bool(dead[r::4].any()) for r in range(4))
    ins[0] = ins[0].masked_fill(dead, -INF)
    g = randn((b,), 12) - 0.5
    bound, w, grads = run(ins, alpha, "cpu", g)
    assert bool((w[dead] == 0).all()) and bool((grads[0][dead] == 0).all())
    assert bool((grads[1][dead] == 0).all()) and not bool(torch.signbit(grads[1][dead]).any())
    assert_within(bound, oracle_bound(oracle_lw(*f64(ins)), alpha), tolerances(ins, alpha, g)["bound"] + 1e-6, "bound")
    check_backward(ins, grads, g, alpha, torch.float32, what="scattered -inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cpu_backward_streams_large_grad_z(dtype):
    """grad_z of at least build_info()["stream_min_bytes"] (32 MiB) is written with streaming stores
    (plain ones where a row is not aligned: D = 1000 elements): the bound, the weights and the
    gradients of log_px_z, z, mu and logvar bitwise what calls on slices of the batch, each under the
    threshold, give (an example's arithmetic does not depend on the batch around it), zero-weight
    rows included.  (The [D] prior's gradients are sums over the batch.)"""
    from vaekernels import backends
    min_bytes = backends.module("cpu").build_info()["stream_min_bytes"]
    k, d = 8, 1000
    b = min_bytes // (k * d * torch.empty(0, dtype=dtype).element_size()) + 37
    ins = make(k, b, d, "D", dtype, seed=8)
    ins[0][3, ::5] = -INF
    g = randn((b,), 13) + 1
    whole = run(ins, 0.0, "cpu", g)
    for b0 in range(0, b, b // 4 + 1):
        sl = slice(b0, min(b, b0 + b // 4 + 1))
        part = [ins[0][:, sl], ins[1][:, sl].contiguous(), ins[2][sl], ins[3][sl], ins[4], ins[5]]
        bound, w, grads = run(part, 0.0, "cpu", g[sl])
        assert torch.equal(bound, whole[0][sl]) and torch.equal(w, whole[1][:, sl])
        for name, got, want in zip(("log_px_z", "z", "mu", "logvar"), grads, whole[2]):
            assert torch.equal(got, want[:, sl] if name in ("log_px_z", "z") else want[sl]), (name, b0)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_reductions(device, backend):
    require(backend, device)
    ins = make(4, 5, 6, "D", device=device)
    per, _, g_per = run(ins, 0.0, backend, torch.ones(5))
    for reduction, scale in (("sum", 1.0), ("batchmean", 1 / 5)):
        out, _, grads = run(ins, 0.0, backend, torch.ones(()), reduction=reduction)
        assert out.shape == ()
        torch.testing.assert_close(out, per.sum() * scale, rtol=1e-6, atol=1e-5)
        for a, b in zip(grads, g_per):
            if a is not None:
                torch.testing.assert_close(a, b * scale, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("alpha", ALPHAS + (2.0,))
def test_one_sample_is_the_elbo(device, backend, alpha):
    """K = 1: every alpha gives log w_1 = log p(x|z) + log p(z) - log q(z|x), weight 1."""
    require(backend, device)
    ins = make(1, 4, 9, "BD", device=device)
    g = randn((4,), 3) + 2
    bound, w, grads = run(ins, alpha, backend, g)
    lw = oracle_lw(*f64(ins))
    tol = tolerances(ins, 1.0, g)
    assert_within(bound, lw[0], tol["bound"] + 1e-6, "bound")
    assert torch.equal(w.cpu(), torch.ones(1, 4))
    check_backward(ins, grads, g, 1.0, torch.float32, what="K=1")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("alpha", (0.0, 1.0, -1.0))
def test_many_samples(device, backend, alpha):
    """K = 5000 samples: the online log-sum-exp over many blocks of K."""
    require(backend, device)
    ins = make(5000, 2, 3, "D", device=device, seed=5)
    g = torch.tensor([1.0, -0.5], dtype=torch.float64)
    bound, w, grads = run(ins, alpha, backend, g)
    lw = oracle_lw(*f64(ins))
    tol = tolerances(ins, alpha, g)
    assert_within(bound, oracle_bound(lw, alpha), tol["bound"] + 1e-6, "bound")
    torch.testing.assert_close(w.sum(0).cpu(), torch.ones(2), rtol=1e-5, atol=1e-5)
    check_backward(ins, grads, g, alpha, torch.float32, what="K=5000")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("alpha", ALPHAS + (2.0,))
def test_minus_inf_log_weights(device, backend, alpha):
    """A sample with log w = -inf has weight 0 and zero gradients; an example whose bound is -inf
    (all samples; for alpha >= 1 any) has weights 0 and every gradient 0 -- never NaN."""
    require(backend, device)
    k, b, d = 4, 4, 5
    ins = make(k, b, d, "BD", device=device)
    lpx = ins[0].clone()
    lpx[:, 0] = -INF  # every sample of example 0
    lpx[1, 1] = -INF  # one sample of example 1
    lpx[0, 2] = lpx[2, 2] = -INF  # two of example 2; example 3 untouched
    ins[0] = lpx
    g = randn((b,), 11) + 2
    bound, w, grads = run(ins, alpha, backend, g)
    dead = torch.tensor([True, alpha >= 1, alpha >= 1, False])
    assert bool((bound.cpu()[dead] == -INF).all()) and bool(torch.isfinite(bound.cpu()[~dead]).all())
    assert bool((w.cpu()[:, dead] == 0).all()) and bool((w.cpu()[lpx.cpu() == -INF] == 0).all())
    for t in grads:
        if t is not None:
            assert bool(torch.isfinite(t).all()), "gradients must be finite"
    for t in grads[:2]:  # d log_px_z, dz: zero on the -inf samples and on dead examples
        zero = (lpx.cpu() == -INF) | dead[None, :]
        assert bool((t.cpu()[zero] == 0).all())
    for t in grads[2:]:  # [B, D] gradients of a dead example
        assert bool((t.cpu()[dead] == 0).all())
    live = ~dead
    sub = [t[:, live] if i < 2 else t[live] for i, t in enumerate(ins)]
    lw = oracle_lw(*f64(sub))
    assert_within(bound[live.to(bound.device)], oracle_bound(lw, alpha), tolerances(sub, alpha, g[live])["bound"] + 1e-6,
                  "live bound")
    check_backward(sub, [t[:, live] if i < 2 else t[live] for i, t in enumerate(grads)], g[live], alpha,
                   torch.float32, what="live examples")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("alpha", (0.0, 0.5, -1.0))
def test_huge_and_tiny_weights(device, backend, alpha):
    """log-weights spread over +-1e4: exp of them over/underflows float32 everywhere, the bound and
    the weights must not."""
    require(backend, device)
    ins = make(8, 3, 4, device=device, lpx_scale=1e4)
    g = torch.ones(3, dtype=torch.float64)
    bound, w, grads = run(ins, alpha, backend, g)
    lw = oracle_lw(*f64(ins))
    tol = tolerances(ins, alpha, g)
    assert_within(bound, oracle_bound(lw, alpha), tol["bound"], "bound")
    assert bool(torch.isfinite(w).all()) and bool(((w.sum(0) - 1).abs() < 1e-5).all())
    check_backward(ins, grads, g, alpha, torch.float32, what="spread 1e4")


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_inf_and_nan_propagate(device, backend):
    require(backend, device)
    ins = make(3, 3, 4, device=device)
    lpx = ins[0].clone()
    lpx[0, 0] = INF
    lpx[1, 1] = math.nan
    ins[0] = lpx
    bound = vk.iwae_bound(*ins, backend=backend).cpu()
    assert bound[0] == INF and math.isnan(bound[1]) and math.isfinite(bound[2])


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_stl_matches_explicit_detach(device, backend):
    """STL: with z = mu + sigma eps, the gradient reaches mu and logvar only through z; the oracle
    is the float64 bound with log q evaluated at mu.detach(), logvar.detach()."""
    require(backend, device)
    k, b, d = 6, 3, 5
    lpx, _, mu, lv, _, _ = make(k, b, d, device=device)
    eps = randn((k, b, d), 21).to(torch.float32).to(device)

    def grads(fn, m, l):
        m, l = m.detach().clone().requires_grad_(True), l.detach().clone().requires_grad_(True)
        fn(m + torch.exp(0.5 * l) * eps.to(m.dtype), m, l).sum().backward()
        return m.grad, l.grad

    for stl in (True, False):
        got = grads(lambda z, m, l: vk.iwae_bound(lpx, z, m, l, stl=stl, backend=backend), mu, lv)
        ref = grads(lambda z, m, l: oracle_bound(oracle_lw(lpx.double().cpu(), z, m, l, None, None, stl=stl), 0.0),
                    mu.double().cpu(), lv.double().cpu())
        for a, r in zip(got, ref):
            assert_within(a, r, 2e-5 * (1 + r.abs()), f"stl={stl}")
    assert not torch.allclose(grads(lambda z, m, l: vk.iwae_bound(lpx, z, m, l, stl=True, backend=backend), mu, lv)[1],
                              grads(lambda z, m, l: vk.iwae_bound(lpx, z, m, l, backend=backend), mu, lv)[1])


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_non_contiguous_inputs(device, backend):
    require(backend, device)
    lpx, z, mu, lv, pm, plv = make(4, 6, 5, "BD", device=device)
    nc = [lpx.t().contiguous().t(), z.transpose(0, 1).contiguous().transpose(0, 1), mu.t().contiguous().t(),
          lv.t().contiguous().t(), pm.t().contiguous().t(), plv.t().contiguous().t()]
    assert not any(t.is_contiguous() for t in nc)
    g = randn((6,), 2)
    a = run(nc, 0.5, backend, g)
    c = run([lpx, z, mu, lv, pm, plv], 0.5, backend, g)
    torch.testing.assert_close(a[0], c[0])
    torch.testing.assert_close(a[1], c[1])
    for x, y in zip(a[2], c[2]):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_empty_batch_and_no_latent_dims(device, backend):
    require(backend, device)
    for k, b, d in ((3, 0, 4), (3, 2, 0)):
        ins = make(k, b, d, "D", device=device)
        bound, w, grads = run(ins, 0.0, backend, torch.ones(b))
        assert bound.shape == (b,) and w.shape == (k, b)
        if b:  # D = 0: log w = log_px_z
            torch.testing.assert_close(bound.double().cpu(), oracle_bound(ins[0].double().cpu(), 0.0))
            torch.testing.assert_close(grads[0], w)
        for t, x in zip(grads, ins):
            assert t.shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("prior", ("none", "mixed"))
@pytest.mark.parametrize("alpha", (0.0, 1.0, -1.0))
def test_gradcheck_float64(backend, prior, alpha):
    require(backend, "cpu")
    ins = [None if t is None else t.requires_grad_(True) for t in make(3, 2, 4, prior, torch.float64)]
    present = [t for t in ins if t is not None]

    def fn(*ts):
        it = iter(ts)
        args = [None if t is None else next(it) for t in ins]
        return vk.iwae_bound(*args, alpha=alpha, backend=backend)

    assert torch.autograd.gradcheck(fn, present)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("prior", ("none", "mixed"))
def test_opcheck(device, backend, prior):
    require(backend, device)
    lpx, z, mu, lv, pm, plv = make(3, 4, 5, prior, device=device)
    args = (lpx, z, mu.requires_grad_(True), lv.requires_grad_(True), pm, plv)
    torch.library.opcheck(torch.ops.vaekernels.iwae_bound.default, (*args, 0.5, False, backend))
    _, w = torch.ops.vaekernels.iwae_bound(*args, 0.5, False, backend)
    grad = torch.randn(4, device=device)
    torch.library.opcheck(torch.ops.vaekernels.iwae_bound_backward.default,
                          (grad, w, z, mu.detach(), lv.detach(), pm, plv, True, prior != "none", backend))


@pytest.mark.parametrize("device,backend", [c for c in KERNEL_CASES if c.values[1] != "triton" or c.values[0] == "cuda"])
def test_compile_fullgraph_matches_eager(device, backend):
    """A VAE-like step (sample, bound, batchmean, backward) under torch.compile(fullgraph=True)."""
    require(backend, device)
    torch._dynamo.reset()

    def step(lpx, mu, lv, eps):
        z = mu + torch.exp(0.5 * lv) * eps
        bound, w = vk.iwae_bound(lpx, z, mu, lv, alpha=0.5, stl=True, reduction="batchmean", return_weights=True,
                                 backend=backend)
        return -bound + 0.0 * w.sum()

    lpx, _, mu, lv, _, _ = make(5, 8, 16, device=device)
    eps = randn((5, 8, 16), 4).to(torch.float32).to(device)
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        m, l = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
        loss = fn(lpx, m, l, eps)
        loss.backward()
        results.append((loss.detach(), m.grad, l.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_backward_keeps_inputs_and_weights_only(device, backend):
    """Saved for backward: the inputs (z, mu, logvar, the priors) and the [K, B] weights -- nothing of
    z's size that is not z.  (Eager autograd of the naive code keeps several [K, B, D] tensors.)"""
    require(backend, device)
    lpx, z, mu, lv, pm, plv = make(8, 16, 32, "D", device=device)
    leaves = [t.requires_grad_(True) for t in (lpx, z, mu, lv, pm, plv)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        vk.iwae_bound(*leaves, backend=backend)
    inputs = {t.data_ptr() for t in leaves}
    extra = sum(t.numel() * t.element_size() for t in saved if t.data_ptr() not in inputs)
    assert extra <= 8 * 16 * 4, [tuple(t.shape) for t in saved]


def test_deterministic_across_thread_counts():
    """The cpu backend's results do not depend on the number of threads (bitwise)."""
    require("cpu", "cpu")
    ins = make(6, 300, 40, "D", seed=3)  # [D] prior: its gradient is a sum over the batch
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(run(ins, 0.5, "cpu", torch.ones(300)))
    finally:
        torch.set_num_threads(before)
    for other in outs[1:]:
        assert torch.equal(outs[0][0], other[0]) and torch.equal(outs[0][1], other[1])
        for a, b in zip(outs[0][2], other[2]):
            assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors():
    lpx, z, mu, lv, _, _ = make(3, 4, 5)
    bad = [
        ((lpx[:, :3], z, mu, lv), {}, ValueError, "z has shape (3, 4, 5) but log_px_z has (3, 3)"),
        ((lpx, z[0], mu, lv), {}, ValueError, "z must have shape [K, B, D], got (4, 5)"),
        ((lpx[0], z, mu, lv), {}, ValueError, "log_px_z must have shape [K, B], got (4,)"),
        ((lpx[:0], z[:0], mu, lv), {}, ValueError, "needs K >= 1 samples"),
        ((lpx, z, mu[:, :4], lv), {}, ValueError, "mu has shape (4, 4) but z has (3, 4, 5)"),
        ((lpx, z, mu, lv[:3]), {}, ValueError, "logvar has shape (3, 5) but mu has (4, 5)"),
        ((lpx, z, mu.double(), lv), {}, TypeError, "mu has dtype torch.float64 but z has torch.float32"),
        ((lpx, z.long(), mu, lv), {}, TypeError, "z must be a floating tensor"),
        ((lpx, z, mu, lv, torch.zeros(3, 5)), {}, ValueError, "prior_mu has shape (3, 5) but mu has (4, 5); expected (5,) or (4, 5)"),
        ((lpx, z, mu, lv, None, torch.zeros(4)), {}, ValueError, "prior_logvar has shape (4,)"),
        ((lpx, z, mu, lv), {"alpha": math.inf}, ValueError, "alpha must be a finite float"),
        ((lpx, z, mu, lv), {"alpha": "0"}, TypeError, "alpha must be a float"),
        ((lpx, z, mu, lv), {"alpha": 1e39}, ValueError, "alpha must have |1 - alpha| <= 3.403e+38 (the torch.float32"),
        ((lpx, z, mu, lv), {"stl": 1}, TypeError, "stl must be a bool"),
        ((lpx, z, mu, lv), {"reduction": "mean"}, ValueError, "reduction must be one of 'per_example', 'sum', 'batchmean'"),
        ((lpx, z, mu, lv), {"backend": "cuda"}, vk.BackendUnavailableError, "backend 'cuda' is unavailable"),
    ]
    for args, kwargs, exc, msg in bad:
        with pytest.raises(exc) as info:
            vk.iwae_bound(*args, **kwargs)
        assert msg in str(info.value), (msg, str(info.value))
        assert str(info.value).startswith("iwae_bound:")
