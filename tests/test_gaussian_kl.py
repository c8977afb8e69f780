"""gaussian_kl on every backend against a float64 oracle from torch.distributions, plus the
collapse regime, free bits, broadcast priors, autograd, custom-op, compile and input checks."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import vaekernels as vk
from vaekernels.ops import gaussian_kl as kl_op

from conftest import ALL_CASES, KERNEL_CASES, TOL, dtypes_for, require

REDUCTIONS = ("none", "per_example", "sum", "batchmean")
PRIORS = ("none", "D", "BD", "full", "mixed")  # mixed: prior_mu [D], prior_logvar [B, D]
KERNEL_RTOL = 1e-5  # the bound for the fused kernels (float32 arithmetic), value and gradients
NAIVE_RTOL = 1e-6  # the naive formula (reference backend) in float32, relative to its terms' size


def interp(device, backend):
    return backend == "triton" and device == "cpu"


def randn(shape, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return shift + scale * torch.randn(shape, generator=g, dtype=torch.float64)


def make(shape, prior, dtype, device, seed=0, grad=False):
    """mu, logvar and the prior of the kind ``prior`` for mu of ``shape``, in dtype on device."""
    shapes = {"none": (None, None), "D": (shape[-1:],) * 2, "BD": (shape[-2:],) * 2, "full": (shape,) * 2,
              "mixed": (shape[-1:], shape[-2:])}[prior]
    ts = [randn(shape, seed, 2.0), randn(shape, seed + 1)]
    ts += [None if s is None else randn(s, seed + 2 + i, 0.7 + 0.5 * i) for i, s in enumerate(shapes)]
    return [None if t is None else t.to(dtype).to(device).requires_grad_(grad) for t in ts]


def f64(t):
    return None if t is None else t.detach().cpu().double()


def oracle_elementwise(mu, logvar, pm, plv):
    """float64 KL[..., D] from torch.distributions.kl_divergence(Normal, Normal) (prior broadcast)."""
    zero = torch.zeros((), dtype=torch.float64)
    pm = zero if pm is None else pm
    plv = zero if plv is None else plv
    return kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(pm, torch.exp(0.5 * plv)))


def oracle(mu, logvar, pm, plv, reduction, free_bits=0.0):
    kl = oracle_elementwise(mu, logvar, pm, plv)
    n = math.prod(mu.shape[:-1])
    if free_bits > 0:
        col = kl.detach().reshape(n, mu.shape[-1]).mean(0)
        kl = torch.where(col < free_bits, free_bits, kl)
    if reduction == "none":
        return kl
    if reduction == "per_example":
        return kl.sum(-1)
    return kl.sum() if reduction == "sum" else kl.sum() / n


def terms(mu, logvar, pm, plv):
    """float64 per-element magnitudes: (|KL| itself, the naive formula's terms 0.5 (e^delta + 1 +
    |delta|) + 0.5 Delta^2 e^-plv, |dKL/dmu| = |Delta| e^-plv, 0.5 |expm1 delta|, the size of
    dKL/dplv's terms 0.5 (|expm1 delta| + Delta^2 e^-plv)) -- the scales error bounds are relative to."""
    kl = oracle_elementwise(mu, logvar, pm, plv)
    zero = torch.zeros((), dtype=torch.float64)
    pm = zero if pm is None else pm
    plv = zero if plv is None else plv
    delta, diff, ip = logvar - plv, mu - pm, torch.exp(-plv)
    q2 = diff**2 * ip
    naive = 0.5 * (delta.exp() + 1 + delta.abs()) + 0.5 * q2
    return kl.abs(), naive, diff.abs() * ip, 0.5 * delta.expm1().abs(), 0.5 * (delta.expm1().abs() + q2)


def reduce_scale(scale, reduction, n):
    """The scale of a reduced output: the reduction of the elementwise scales."""
    if reduction == "none":
        return scale
    if reduction == "per_example":
        return scale.sum(-1)
    return scale.sum() if reduction == "sum" else scale.sum() / n


def assert_within(got, ref, scale, rtol, what, atol=1e-30):
    err = (f64(got) - ref).abs()
    bound = rtol * scale + atol
    bad = err > bound
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {err.numel()} off, worst error/scale {(err / scale.clamp(min=1e-300)).max():.3g}")


def kl_bound(backend, dtype, kl_scale, naive_scale):
    """(scale, rtol) for the KL value computed by ``backend`` from inputs of ``dtype``."""
    if dtype == torch.float64:
        return naive_scale, 1e-12  # the float64 oracle itself cancels: good to ~1e-16 of the terms
    if backend == "reference":
        return naive_scale, NAIVE_RTOL
    return kl_scale, KERNEL_RTOL  # outputs are float32 for every input dtype


def grad_rtol(backend, dtype):
    """Gradients come back in the input dtype: float16/bfloat16 round them (once: a mixed prior's is
    summed in float32 first), so the dtype's tolerance; float32 the arithmetic's; float64 the oracle's."""
    if dtype == torch.float64:
        return 1e-12
    if dtype != torch.float32:
        return TOL[dtype]["rtol"]
    return NAIVE_RTOL if backend == "reference" else KERNEL_RTOL


def _pad(grads, leaves):
    """The gradients of the given leaves, with None where a leaf is absent."""
    it = iter(grads)
    return [None if t is None else next(it) for t in leaves]


SHAPES = [(1,), (7,), (33,), (3, 5), (2, 3, 7), (4, 4097)]


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("prior", PRIORS)
def test_forward_matches_float64_oracle(device, backend, shape, prior):
    require(backend, device)
    if prior in ("BD", "mixed") and len(shape) < 2:
        pytest.skip("a [B, D] prior needs a batch")
    if interp(device, backend) and shape[-1] > 1000 and prior != "none":
        pytest.skip("kept small under the Triton interpreter")
    for dtype in dtypes_for(backend, device):
        mu, lv, pm, plv = make(shape, prior, dtype, device, seed=len(shape))
        ins = [f64(t) for t in (mu, lv, pm, plv)]
        kl_s, naive_s, *_ = terms(*ins)
        n = math.prod(shape[:-1])
        for reduction in REDUCTIONS:
            out = vk.gaussian_kl(mu, lv, pm, plv, reduction=reduction, backend=backend)
            ref = oracle(*ins, reduction)
            want = torch.float64 if dtype == torch.float64 else torch.float32
            assert out.shape == ref.shape and out.dtype == want and out.device.type == device
            scale, rtol = kl_bound(backend, dtype, kl_s, naive_s)
            assert_within(out, ref, reduce_scale(scale, reduction, n), rtol, f"{reduction} {dtype}")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("shape", [(7,), (5, 13), (2, 3, 33)], ids=str)
@pytest.mark.parametrize("prior", PRIORS)
def test_backward_matches_float64_oracle(device, backend, shape, prior):
    """Non-unit upstream gradient, every reduction; prior gradients come back in the prior's shape."""
    require(backend, device)
    if prior in ("BD", "mixed") and len(shape) < 2:
        pytest.skip("a [B, D] prior needs a batch")
    for dtype in dtypes_for(backend, device):
        leaves = make(shape, prior, dtype, device, seed=3, grad=True)
        ins = [f64(t) for t in leaves]
        given = [t for t in leaves if t is not None]
        for reduction in REDUCTIONS:
            ref_leaves = [None if t is None else t.clone().requires_grad_(True) for t in ins]
            ref = oracle(*ref_leaves, reduction)
            g = randn(ref.shape, 9)
            ref_grads = torch.autograd.grad(ref, [t for t in ref_leaves if t is not None], g)
            out = vk.gaussian_kl(*leaves, reduction=reduction, backend=backend)
            grads = torch.autograd.grad(out, given, g.to(out.dtype).to(device))
            # Scales: |g| times each gradient's terms, broadcast to mu's shape, summed to a prior's.
            n = math.prod(shape[:-1])
            gb = g.abs()
            if reduction == "per_example":
                gb = gb[..., None]
            elif reduction in ("sum", "batchmean"):
                gb = gb / (n if reduction == "batchmean" else 1)
            _, _, gmu_s, glv_s, gplv_s = terms(*ins)
            if backend == "reference" or dtype == torch.float64:  # the naive form cancels: terms' size
                glv_s = 0.5 * (ins[1] - (0 if ins[3] is None else ins[3])).exp() + 0.5
                gplv_s = glv_s + gplv_s
            scales = [gmu_s, glv_s, gmu_s, gplv_s]
            rtol = grad_rtol(backend, dtype)
            names = ("mu", "logvar", "prior_mu", "prior_logvar")
            for name, t, got, want, scale in zip(names, leaves, _pad(grads, leaves), _pad(ref_grads, leaves), scales):
                if t is None:
                    continue
                assert got.shape == t.shape and got.dtype == t.dtype, name
                # float16 gradients below 2^-14 are subnormal: steps of 2^-24.
                atol = 2.0**-24 if dtype == torch.float16 else 1e-30
                assert_within(got, want, (gb * scale).sum_to_size(t.shape), rtol, f"d{name} {reduction} {dtype}", atol)


def near_1e3(shape, seed):
    """Offsets of magnitude 0.5e-3 ... 2e-3, either sign.  Bounded away from 0: where both offsets
    of an element are ~1e-7 the KL is ~1e-12 and the float64 oracle itself (var_ratio - 1 -
    log var_ratio) keeps only ~4 digits."""
    g = torch.Generator().manual_seed(seed)
    size = 0.5e-3 * 4 ** torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(shape, generator=g) < 0.5, -size, size)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("prior", ["none", "D", "BD"])
def test_collapse_regime_1e5_relative(device, backend, prior):
    """|mu - prior_mu|, |logvar - prior_logvar| ~ 1e-3 in float32: value and every gradient within
    1e-5 relative of float64, where the naive formula (reference backend) loses most of its digits."""
    require(backend, device)
    shape = (64, 48) if not interp(device, backend) else (8, 48)
    pm = randn(shape[-1:] if prior == "D" else shape, 20) if prior != "none" else torch.zeros(())
    plv = randn(shape[-1:] if prior == "D" else shape, 21, 2.0) if prior != "none" else torch.zeros(())
    mu = (pm + near_1e3(shape, 22)).float()
    lv = (plv + near_1e3(shape, 23)).float()
    priors = (pm.float(), plv.float()) if prior != "none" else (None, None)
    ins = [f64(t) for t in (mu, lv, *priors)]
    ref = oracle(*ins, "none")
    naive = vk.gaussian_kl(mu, lv, *priors, reduction="none", backend="reference")
    naive_err = ((f64(naive) - ref).abs() / ref).max().item()
    assert naive_err > 1e-2, naive_err  # the textbook formula: most digits gone
    leaves = [None if t is None else t.to(device).requires_grad_(True) for t in (mu, lv, *priors)]
    given = [t for t in leaves if t is not None]
    ref_leaves = [None if t is None else t.clone().requires_grad_(True) for t in ins]
    for reduction in ("none", "per_example"):
        out = vk.gaussian_kl(*leaves, reduction=reduction, backend=backend)
        ref = oracle(*ref_leaves, reduction)
        assert_within(out, ref.detach(), ref.detach().abs(), KERNEL_RTOL, f"KL {reduction}")
        g = randn(ref.shape, 24, shift=1.0)
        grads = torch.autograd.grad(out, given, g.float().to(device))
        ref_grads = torch.autograd.grad(ref, [t for t in ref_leaves if t is not None], g)
        _, _, gmu_s, _, gplv_s = terms(*ins)
        gb = g.abs()[..., None] if reduction == "per_example" else g.abs()
        for i, (got, want) in enumerate(zip(grads, ref_grads)):
            # Relative to itself, except where a sum may cancel: dKL/dprior_logvar = -0.5 (expm1(delta)
            # + Delta^2 e^-plv) and a broadcast prior's gradients (sums over the batch), whose bounds
            # are relative to the size of their terms.
            if i == 3:
                scale = (gb * gplv_s).sum_to_size(want.shape)
            elif i == 2 and prior == "D":
                scale = (gb * gmu_s).sum_to_size(want.shape)
            else:
                scale = want.abs()
            assert_within(got, want, scale, KERNEL_RTOL, f"gradient {i} {reduction}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_ordinary_range_1e5_relative(device, backend):
    """|mu| <= 10, logvar in [-20, 10] (prior alike), float32: value and gradients within 1e-5."""
    require(backend, device)
    shape = (32, 40)
    u = [torch.rand(shape, generator=torch.Generator().manual_seed(30 + i), dtype=torch.float64) for i in range(4)]
    mu, lv, pm, plv = (20 * u[0] - 10), (30 * u[1] - 20), (20 * u[2] - 10), (30 * u[3] - 20)
    for priors in ((None, None), (pm, plv)):
        ts = [None if t is None else t.float() for t in (mu, lv, *priors)]
        ins = [f64(t) for t in ts]
        leaves = [None if t is None else t.to(device).requires_grad_(True) for t in ts]
        out = vk.gaussian_kl(*leaves, reduction="none", backend=backend)
        ref_leaves = [None if t is None else t.clone().requires_grad_(True) for t in ins]
        ref = oracle(*ref_leaves, "none")
        assert_within(out, ref.detach(), ref.detach().abs(), KERNEL_RTOL, "KL")
        given = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, given, torch.ones_like(out))
        ref_grads = torch.autograd.grad(ref, [t for t in ref_leaves if t is not None], torch.ones_like(ref))
        gplv_s = terms(*ins)[4]
        for i, (got, want) in enumerate(zip(grads, ref_grads)):
            assert_within(got, want, gplv_s if i == 3 else want.abs(), KERNEL_RTOL, f"gradient {i}")


def test_large_latent_dimension_cpu():
    """D = 16384: rows walked in chunks; the per-example sums stay within 1e-5 relative."""
    require("cpu", "cpu")
    mu, lv, pm, plv = make((3, 16384), "D", torch.float32, "cpu", seed=40)
    ins = [f64(t) for t in (mu, lv, pm, plv)]
    for prior in ((None, None), (pm, plv)):
        out = vk.gaussian_kl(mu, lv, *prior, backend="cpu")
        ref = oracle(*ins[:2], *[f64(t) for t in prior], "per_example")
        assert_within(out, ref, ref.abs(), KERNEL_RTOL, "per example")


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_half_inputs_do_not_overflow(device, backend):
    """float16/bfloat16 inputs are computed in float32 and the KL returned in float32: e^12 and a
    KL of 1.3e5 overflow float16, not float32."""
    require(backend, device)
    for dtype in dtypes_for(backend, device):
        if dtype in (torch.float32, torch.float64):
            continue
        mu = torch.tensor([[300.0, 1.0], [0.5, 250.0]], dtype=dtype, device=device)
        lv = torch.tensor([[12.0, 11.5], [-3.0, 0.0]], dtype=dtype, device=device)
        if dtype == torch.float16:
            assert torch.isinf(torch.exp(lv)).any()  # as naive float16 arithmetic does
        for reduction in REDUCTIONS:
            out = vk.gaussian_kl(mu, lv, reduction=reduction, backend=backend)
            ref = oracle(f64(mu), f64(lv), None, None, reduction)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
            assert_within(out, ref, ref.abs(), 1e-5 if backend != "reference" else 1e-6, reduction)


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_free_bits_match_oracle(device, backend, reduction):
    """kl_d = mean over the batch of KL[..., d]; below lambda the column is lambda, with no gradient."""
    require(backend, device)
    shape = (4, 6, 10)
    leaves = make(shape, "BD", torch.float32, device, seed=50, grad=True)
    ins = [f64(t) for t in leaves]
    col = oracle_elementwise(*ins).reshape(-1, shape[-1]).mean(0)
    lam = float(col.sort().values[4:6].mean())  # half the dims below lambda, none at it
    out = vk.gaussian_kl(*leaves, reduction=reduction, free_bits=lam, backend=backend)
    ref_leaves = [t.clone().requires_grad_(True) for t in ins]
    ref = oracle(*ref_leaves, reduction, free_bits=lam)
    scale = reduce_scale(oracle_elementwise(*ins).clamp(min=lam), reduction, 24)
    assert_within(out, ref.detach(), scale, KERNEL_RTOL if backend != "reference" else 1e-5, "value")
    g = randn(ref.shape, 51, shift=1.0)
    grads = torch.autograd.grad(out, leaves, g.float().to(device))
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    clamped = col < lam
    for got, want in zip(grads, ref_grads):
        if got.shape[-1] == shape[-1]:
            assert torch.equal(f64(got)[..., clamped], torch.zeros_like(f64(got)[..., clamped]))
        torch.testing.assert_close(f64(got), want, rtol=1e-4, atol=1e-5)
    if reduction == "batchmean":  # = sum_d max(lambda, kl_d)
        assert abs(out.item() - col.clamp(min=lam).sum().item()) <= 1e-5 * out.item()


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_free_bits_clamp_the_batch_mean_not_each_example(device, backend):
    """Dim 0: batch mean above lambda but most examples below it -> unchanged, full gradient.
    Dim 1: batch mean below lambda but one example above it -> lambda everywhere, no gradient.
    Clamping each example separately (the common mistake) would do the opposite in both."""
    require(backend, device)
    lam = 0.5
    mu = torch.tensor([[3.0, 0.1], [0.1, 1.1], [0.1, 0.1], [0.1, 0.1]], device=device, requires_grad=True)
    lv = torch.zeros(4, 2, device=device, requires_grad=True)
    kl = 0.5 * mu.detach().cpu().double() ** 2  # lv = 0: KL = mu^2 / 2
    assert kl[:, 0].mean() > lam and (kl[:, 0] < lam).sum() == 3
    assert kl[:, 1].mean() < lam and (kl[:, 1] > lam).sum() == 1
    out = vk.gaussian_kl(mu, lv, reduction="none", free_bits=lam, backend=backend)
    want = kl.clone()
    want[:, 1] = lam
    torch.testing.assert_close(f64(out), want, rtol=1e-6, atol=1e-7)
    per_example_clamp = kl.clamp(min=lam)
    assert not torch.allclose(f64(out), per_example_clamp)
    (gmu,) = torch.autograd.grad(out.sum(), [mu])
    torch.testing.assert_close(f64(gmu)[:, 0], f64(mu)[:, 0])  # every example of dim 0, even below lambda
    assert torch.equal(gmu[:, 1].cpu(), torch.zeros(4))  # no example of dim 1, even above lambda


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_non_contiguous_and_expanded_inputs(device, backend):
    require(backend, device)
    mu0, lv0, pm0, plv0 = make((10, 33), "full", torch.float32, device, seed=60)
    cases = [
        (mu0.t(), lv0.t(), None, None),  # transposed
        (mu0[::2], lv0[1::2], pm0[0], plv0[3]),  # strided rows, [D] priors that are views
        (mu0[:, 3:9], lv0[:, 1:7], pm0[:1, :6].expand(10, 6), plv0[2, :6].expand(10, 6)),  # expanded priors
        (mu0[:1].expand(6, 33), lv0[:1].expand(6, 33), pm0.t().contiguous().t()[:6], plv0[2:8]),  # stride 0
    ]
    for mu, lv, pm, plv in cases:
        ts = [mu, lv, pm, plv]
        leaves = [None if t is None else t.detach().requires_grad_(True) for t in ts]
        out = vk.gaussian_kl(*leaves, reduction="none", backend=backend)
        given = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, given, torch.ones_like(out))
        cont = [None if t is None else t.detach().contiguous().requires_grad_(True) for t in ts]
        out_c = vk.gaussian_kl(*cont, reduction="none", backend=backend)
        grads_c = torch.autograd.grad(out_c, [t for t in cont if t is not None], torch.ones_like(out_c))
        assert torch.equal(out, out_c)
        for a, b in zip(grads, grads_c):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_extreme_logvar_elementwise(device, backend):
    """KL = phi(logvar) / 2 and its gradient expm1(logvar) / 2 (mu = 0, no prior) at the edges of
    the kernels' exp: below -87 (the clamp; -inf), the k = 0 / 1 boundary near ln2 / 2, tiny
    values, the overflow at 88.72 and past it, +inf (NaN, like the textbook formula) and NaN of
    either sign -- against float64 rounded to float32."""
    require(backend, device)
    x = torch.tensor([-math.inf, -1e30, -1e7, -200.0, -104.0, -87.5, -87.0, -86.9, -20.0, -0.3466, -0.3467, -1e-30,
                      0.0, 1e-30, 1e-4, 0.3466, 0.3467, 1.0, 50.0, 88.0, 88.5, 88.7, 88.8, 1e30, math.inf])
    nan = torch.tensor([math.nan, -math.nan])
    lv = torch.cat([x, nan]).to(device).requires_grad_(True)
    out = vk.gaussian_kl(torch.zeros_like(lv), lv, reduction="none", backend=backend)
    (g,) = torch.autograd.grad(out, [lv], torch.ones_like(out))
    xd = x.double()
    phi = torch.where(xd.abs() < 1e-3, xd**2 / 2 + xd**3 / 6 + xd**4 / 24, torch.expm1(xd) - xd)
    for got, ref, what in ((2 * out[: len(x)].cpu(), phi.float(), "phi"), (2 * g[: len(x)].cpu(), torch.expm1(xd).float(), "expm1")):
        special = ~torch.isfinite(ref)
        assert torch.equal(got[special].isnan(), ref[special].isnan()), what
        assert torch.equal(got[special & ~ref.isnan()], ref[special & ~ref.isnan()]), what
        # 88.38 < x <= 88.72 uses the polynomial past its range (4e-5, documented); elsewhere ~1 ulp
        rtol = torch.where(x > 88.3, 5e-5, 2e-6)
        ok = (got[~special].double() - ref[~special].double()).abs() <= rtol[~special] * ref[~special].double().abs()
        assert bool(ok.all()), (what, x[~special][~ok], got[~special][~ok], ref[~special][~ok])
    assert bool(out[len(x):].isnan().all()) and bool(g[len(x):].isnan().all())


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_empty_batches(device, backend):
    require(backend, device)
    for shape in [(0, 5), (4, 0), (0,), (2, 0, 3)]:
        for reduction in REDUCTIONS:
            mu = torch.zeros(shape, device=device, requires_grad=True)
            lv = torch.zeros(shape, device=device, requires_grad=True)
            pm = torch.zeros(shape[-1:], device=device, requires_grad=True)
            out = vk.gaussian_kl(mu, lv, pm, reduction=reduction, free_bits=0.1, backend=backend)
            ref = oracle(f64(mu), f64(lv), f64(pm), None, reduction, free_bits=0.1)
            assert out.shape == ref.shape
            torch.testing.assert_close(f64(out), ref, equal_nan=True)
            gmu, glv, gpm = torch.autograd.grad(out.sum(), [mu, lv, pm], allow_unused=True)
            assert gmu.shape == shape and glv.shape == shape and gpm.shape == shape[-1:]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_float64(backend, reduction):
    require(backend, "cpu")
    leaves = make((3, 4, 5), "BD", torch.float64, "cpu", seed=70, grad=True)
    # free bits away from every column mean, so the clamp set is locally constant
    col = oracle_elementwise(*[f64(t) for t in leaves]).reshape(-1, 5).mean(0).sort().values
    lam = float((col[1] + col[2]) / 2)
    fn = lambda *ts: vk.gaussian_kl(*ts, reduction=reduction, free_bits=lam, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(leaves))
    if backend == "cpu":  # the custom op's own autograd too (eager calls take the fast path)
        op = lambda *ts: torch.ops.vaekernels.gaussian_kl.default(*ts, reduction, lam, backend)[0]  # noqa: E731
        assert torch.autograd.gradcheck(op, tuple(leaves))
    mixed = make((3, 4, 5), "mixed", torch.float64, "cpu", seed=71, grad=True)
    assert torch.autograd.gradcheck(lambda *ts: vk.gaussian_kl(*ts, reduction=reduction, backend=backend),
                                    tuple(mixed))


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_opcheck(device, backend):
    require(backend, device)
    mu, lv, pm, plv = make((3, 4, 6), "BD", torch.float32, device, seed=80, grad=True)
    op = torch.ops.vaekernels.gaussian_kl.default
    bwd = torch.ops.vaekernels.gaussian_kl_backward.default
    for args in [(mu, lv, None, None, "per_example", 0.0, backend), (mu, lv, pm, plv, "none", 0.0, backend),
                 (mu, lv, pm, None, "batchmean", 0.3, backend), (mu, lv, None, plv, "sum", 0.0, backend)]:
        torch.library.opcheck(op, args)
        out, col = op(*args)
        g = torch.randn(out.shape, device=device)
        torch.library.opcheck(bwd, (g, *(None if t is None else t.detach() for t in args[:4]), col, *args[4:]))


@pytest.mark.parametrize("device,backend", [c for c in KERNEL_CASES if not interp(*c.values)])
def test_compile_fullgraph_matches_eager(device, backend):
    """KL with a learned [D] prior and free bits inside a loss, under torch.compile(fullgraph=True)."""
    require(backend, device)
    torch._dynamo.reset()

    def loss(mu, lv, pm, plv):
        kl = vk.gaussian_kl(mu.tanh(), lv, pm, plv, reduction="batchmean", free_bits=0.05, backend=backend)
        per = vk.gaussian_kl(mu, lv, backend=backend)
        return kl + (per * torch.arange(per.shape[0], device=per.device)).mean()

    base = make((16, 8), "D", torch.float32, device, seed=90)
    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        leaves = [t.clone().requires_grad_(True) for t in base]
        value = fn(*leaves)
        results.append((value.detach(), *torch.autograd.grad(value, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_backward_keeps_the_inputs_only(device, backend):
    require(backend, device)
    mu, lv, pm, plv = make((64, 32), "D", torch.float32, device, seed=95, grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vk.gaussian_kl(mu, lv, pm, plv, free_bits=0.1, backend=backend)
    inputs = sum(t.numel() * t.element_size() for t in (mu, lv, pm, plv))
    assert sum(saved) <= inputs + 32 * 4, saved  # the inputs and the D column means


def test_cpu_results_do_not_depend_on_thread_count():
    require("cpu", "cpu")
    threads = torch.get_num_threads()
    mu, lv, pm, plv = make((512, 96), "D", torch.float32, "cpu", seed=100, grad=True)
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            for reduction in REDUCTIONS:
                out = vk.gaussian_kl(mu, lv, pm, plv, reduction=reduction, free_bits=0.2, backend="cpu")
                results.append((t, reduction, out, *torch.autograd.grad(out.sum(), [mu, lv, pm, plv])))
    finally:
        torch.set_num_threads(threads)
    first = {r[1]: r for r in results if r[0] == 1}
    for r in results:
        for a, b in zip(r[2:], first[r[1]][2:]):
            assert torch.equal(a, b), (r[0], r[1])


def test_bad_inputs_raise_clear_errors():
    mu = torch.zeros(4, 8)
    bad = [
        ((mu, torch.zeros(4, 7)), {}, ValueError, "logvar has shape (4, 7) but mu has (4, 8)"),
        ((mu, mu.double()), {}, TypeError, "logvar has dtype torch.float64"),
        ((mu.long(), mu.long()), {}, TypeError, "mu must be a floating tensor"),
        ((torch.zeros(()), torch.zeros(())), {}, ValueError, "mu must have at least 1 dimension"),
        ((mu, mu, torch.zeros(7)), {}, ValueError,
         "prior_mu has shape (7,) but mu has (4, 8); expected (8,) or (4, 8)"),
        ((mu, mu, None, torch.zeros(2, 8)), {}, ValueError, "prior_logvar has shape (2, 8)"),
        ((mu, mu, mu.double()), {}, TypeError, "prior_mu has dtype torch.float64"),
        ((mu, mu, None, "x"), {}, TypeError, "prior_logvar must be a torch.Tensor"),
        ((mu, mu), {"reduction": "mean"}, ValueError,
         "reduction must be one of 'none', 'per_example', 'sum', 'batchmean'"),
        ((mu, mu), {"free_bits": -0.1}, ValueError, "free_bits must be a finite float >= 0"),
        ((mu, mu), {"free_bits": float("nan")}, ValueError, "free_bits must be a finite float >= 0"),
        ((mu, mu), {"free_bits": float("inf")}, ValueError, "free_bits must be a finite float >= 0"),
        ((mu, mu), {"free_bits": torch.tensor(0.1)}, TypeError, "free_bits must be a float"),
        ((mu, mu), {"free_bits": True}, TypeError, "free_bits must be a float"),
        ((mu, mu), {"backend": "gpu"}, ValueError, "backend must be one of"),
        ((mu, mu), {"backend": "cuda"}, vk.BackendUnavailableError, "backend 'cuda' is unavailable"),
    ]
    for args, kwargs, exc, msg in bad:
        with pytest.raises(exc) as info:
            vk.gaussian_kl(*args, **kwargs)
        assert msg in str(info.value), (msg, str(info.value))
        assert str(info.value).startswith("gaussian_kl:")
    with pytest.raises(ValueError, match="gaussian_kl: prior_mu has shape"):
        vk.gaussian_kl(torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), torch.zeros(2, 8))  # [B, D] must be mu's last two
    assert kl_op.REDUCTIONS == REDUCTIONS
