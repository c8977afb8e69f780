"""Property tests (hypothesis): every public op on every kernel backend against the float64
``reference`` backend, forward values AND gradients.

Each example draws a dtype the backend computes in, a shape (0- and 1-sized dims, odd sizes, up to
a few hundred along the last dim off the Triton interpreter), a memory layout per input
(contiguous, transposed, sliced with a step, expanded with stride 0), value ranges (|mu| up to
~100, logvar up to +-60, log-weights spread to 1e4, -inf entries), the op's options (priors of
every shape, reduction, free bits, alpha, STL, dim, keepdim, num_samples, seed) and a random
non-unit upstream gradient.

The oracle is the reference backend in float64 on the *rounded* inputs (the values the kernel
reads, as float64), so the rounding of the inputs to float16/bfloat16 is not counted as error.
The error bounds are a running-error analysis of each formula, not fitted constants:

* every elementary step of the kernel's arithmetic costs at most ``ULPS`` units of roundoff u of
  the size of its terms (u = 2^-24: float32 arithmetic for float32/float16/bfloat16 inputs;
  2^-53 for float64);
* ``exp(x)`` of a rounded argument is off by a relative ``(ULPS + |x|) u`` (an exp2-based exp
  rounds ``x log2 e``), which is what large |logvar| costs;
* a sum of n terms is off by ``n u`` times the sum of their absolute values (the worst case of any
  summation order), a sum whose terms cancel included;
* storing a result in float16/bfloat16 rounds it once more: ``TOL[dtype]["rtol"]`` (two units of
  roundoff of the dtype) of its size, plus one subnormal step per rounded piece summed;
* the float64 oracle gets the same budget in 2^-53 of the terms of its naive formulas (where
  they cancel, as at a collapsed posterior, that is the float64 comparison's dominant error);
* the kernels' documented choices where they set the error: e^d - 1 - d as expm1(d) - d beyond a
  series (csrc/cpu/kl_math.h), and the IWAE backward's sums over K taken before the factor
  e^-logvar (a term below the normal range is lost, then scaled by up to e^60).
Inputs stay where the float32 arithmetic can represent the terms (``assume``): a log-density term
of 1e52, or e^(logvar - prior_logvar) past e^80, overflows float32 on the way to a result that
may fit, which is float32, not a kernel bug.

Where the exact result leaves the output dtype's range the kernel must return an infinity of the
right sign (either, within the bound's width of the boundary); where the oracle is -inf, +inf or
NaN the kernel must give exactly that.  Examples per op: ``max_examples`` of the hypothesis
profile (200 in the "ci" profile of conftest.py) on the compiled backends, half of it (100) on
Triton: under the interpreter a call is ~30x slower.

Bugs these properties found, each now a regular test: test_mixed_prior_gradient_is_summed_before_rounding
(gaussian_kl in float16/bfloat16 with prior shapes that differ rounded the expanded prior's
per-example gradients before summing them: NaN; vaekernels/functional.py now runs that call in
float32) and test_iwae_weights_are_normalized (the cpu kernels' weights un-normalized for alphas
whose 1 - alpha is not a power of two -- gcc fused (1 - alpha) log w - L into one fma; every kernel
now takes the weights exp(r - L) of the rounded r = (1 - alpha) log w its log-sum-exp saw).
"""
import math

import pytest
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import vaekernels as vk

from conftest import ALL_CASES, KERNEL_CASES, TOL, dtypes_for, require


ULPS = 8  # roundoff units per elementary step (the suite's ULP8: kernels measure at about 1)
U64 = 2.0**-53
STREAM_ULP = 1e-6  # |eps - eps_ref| / max(1, |eps|) between the kernels' normals and the reference's
LOG_2PI = math.log(2 * math.pi)
LV_WIDE = 60.0  # "large |logvar|": e^60 stays inside float32, e^60 * (100)^2 too
HALF = (torch.float16, torch.bfloat16)
INF = math.inf


def examples(device, backend):
    """max_examples for a backend: the profile's on compiled kernels, half of it on Triton (under the
    interpreter ~30x slower a call; on a GPU a compile per new specialization)."""
    base = settings().max_examples
    return max(10, base // 2) if backend == "triton" else base


def interp(device, backend):
    return device == "cpu" and backend == "triton"


def run_property(body, device, backend):
    """Run ``body(data, device, backend)`` as a hypothesis test with this backend's example count."""
    require(backend, device)
    test = settings(max_examples=examples(device, backend))(given(data=st.data())(body))
    test(device=device, backend=backend)


# ----------------------------------------------------------------------------- error model
def cdt(dtype):
    """The dtype the kernels compute (and return reductions) in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit(dtype):
    """Unit roundoff of the kernels' arithmetic for inputs of ``dtype``."""
    return torch.finfo(cdt(dtype)).eps / 2


def spacing(dtype):
    """One subnormal step of ``dtype``: the absolute error of a rounding near 0."""
    fi = torch.finfo(dtype)
    return fi.smallest_normal * fi.eps


def store(dtype, mag, count=1, compute=torch.float32):
    """Error of storing a result of size ``mag``, computed in ``compute``, in ``dtype`` (a sum of
    ``count`` rounded pieces): TOL's two units of roundoff for float16/bfloat16, as much for float32
    from float64 arithmetic; a result stored in its arithmetic's precision is counted in ULPS."""
    if dtype in HALF:
        rt = TOL[dtype]["rtol"]
    else:
        rt = torch.finfo(dtype).eps if torch.finfo(dtype).eps > torch.finfo(compute).eps else 0.0
    return (rt * mag if rt else 0.0) + count * spacing(dtype)


def f64(t):
    return None if t is None else t.detach().cpu().double()


def leaf64(t):
    return None if t is None else f64(t).requires_grad_(True)


def zeros_if_none(got, like):
    return torch.zeros_like(like) if got is None else got


def check(got, want, bound, what):
    """|got - want| <= bound elementwise (float64, on the CPU), with the rules of the module docstring
    for results outside got's range and for non-finite oracles."""
    assert got is not None, f"{what}: no result"
    g, w = f64(got), f64(want)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    b = torch.as_tensor(bound, dtype=torch.float64).expand_as(w)
    fin = torch.isfinite(w)
    assert not bool((b.isnan() & fin).any()), f"{what}: the error bound is NaN (a test bug)"
    big = torch.finfo(got.dtype).max
    over = fin & (w.abs() - b > big)  # the exact result is past the range: +-inf
    inf_ok = torch.isinf(g) & (torch.sign(g) == torch.sign(w))
    # within the bound of a boundary: that infinity too
    edge = fin & ((torch.isposinf(g) & (w + b > big)) | (torch.isneginf(g) & (w - b < -big)))
    same = (g == w) | (g.isnan() & w.isnan())
    ok = torch.where(fin, (g - w).abs() <= b, same)
    ok = torch.where(over, inf_ok, ok) | edge
    if not bool(ok.all()):
        bad = ~ok
        i = int(torch.nonzero(bad.flatten())[0])
        idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), w.shape)) if w.dim() else ()
        ratio = ((g - w).abs() / b.clamp(min=1e-300))[fin & bad]
        worst = f"{ratio.max().item():.3g}" if ratio.numel() else "-"
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {w.numel()} off; first at {idx}: got {g.flatten()[i].item()!r}, "
            f"want {w.flatten()[i].item()!r} +- {b.flatten()[i].item():.3g} (worst error/bound {worst})")


# ----------------------------------------------------------------------------- inputs
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")


def sizes(device, backend, big):
    """A dimension: mostly 0..9 (0, 1 and odd sizes included); sometimes up to ``big`` off the
    interpreter (vector widths, blocks and chunk boundaries of the compiled kernels)."""
    small = st.integers(0, 9)
    return small if interp(device, backend) else st.one_of(small, small, st.integers(10, big))


def shape_of(data, device, backend, min_dims, max_dims, name, last_big=300):
    """A shape whose last dim may be large and whose other dims stay small."""
    nd = data.draw(st.integers(min_dims, max_dims), label=f"{name} ndim")
    lead = [data.draw(st.integers(0, 9), label=f"{name} dim {i}") for i in range(nd - 1)]
    last = [data.draw(sizes(device, backend, last_big), label=f"{name} last dim")] if nd else []
    return tuple(lead + last)


def values(data, gen, shape, kinds, name):
    """float64 values of ``shape`` from ``gen``, of a drawn kind (scale / range)."""
    kind = data.draw(st.sampled_from(kinds), label=f"{name} values")
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return {
        "unit": r,
        "tiny": 1e-3 * r,
        "large": 30 * r,
        "zero": 0 * r,
        "wide": LV_WIDE * (2 * u - 1),  # logvar: e^logvar from 1e-26 to 1e26
        "spread": 1e4 * r,  # log-weights / log_mean_exp: exp over/underflows float32 everywhere
        "shifted": r - 90,  # exp underflows float32 everywhere
    }[kind]


def with_minus_inf(data, gen, vals, name):
    """Some entries -inf (none, a few, all): -inf log-likelihoods are legal and must give 0 gradients."""
    frac = data.draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]), label=f"{name} -inf fraction")
    if frac == 0.0:
        return vals
    return vals.masked_fill(torch.rand(vals.shape, generator=gen) < frac, -INF)


def place(data, vals, dtype, device, name):
    """``vals`` (float64, logical values) rounded to ``dtype`` on ``device`` in a drawn layout: the
    tensor the op gets (requires grad; its gradient is taken with respect to this very view)."""
    layout = data.draw(st.sampled_from(LAYOUTS), label=f"{name} layout")
    shape, nd = tuple(vals.shape), vals.dim()
    if layout == "transposed" and nd >= 2:
        perm = data.draw(st.permutations(range(nd)), label=f"{name} permutation")
        base = vals.permute(perm).contiguous().to(dtype).to(device).requires_grad_(True)
        return base.permute([perm.index(i) for i in range(nd)])
    if layout == "sliced" and nd >= 1:
        d = data.draw(st.integers(0, nd - 1), label=f"{name} sliced dim")
        big = list(shape)
        big[d] = 2 * shape[d] + 1
        idx = tuple(slice(1, None, 2) if i == d else slice(None) for i in range(nd))
        base = torch.zeros(big, dtype=dtype, device=device)
        base[idx] = vals.to(dtype).to(device)
        return base.requires_grad_(True)[idx]
    if layout == "expanded" and nd >= 1:
        mask = data.draw(st.lists(st.booleans(), min_size=nd, max_size=nd), label=f"{name} stride-0 dims")
        idx = tuple(slice(0, 1) if m else slice(None) for m in mask)
        return vals[idx].contiguous().to(dtype).to(device).requires_grad_(True).expand(shape)
    return vals.to(dtype).to(device).requires_grad_(True)


def upstream(gen, shape, dtype, device):
    """A random non-unit upstream gradient, rounded to the output's dtype."""
    g = 1.7 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.3
    return g.to(dtype).to(device)


def generator(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="value seed"))


def grads(out, inputs, g):
    """d(out . g)/d inputs, None for an input out does not depend on."""
    present = [t for t in inputs if t is not None]
    if not out.requires_grad:
        return [None] * len(inputs)
    got = iter(torch.autograd.grad(out, present, g, allow_unused=True))
    return [None if t is None else next(got) for t in inputs]


# ----------------------------------------------------------------------------- reparameterize
def _reparameterize(data, device, backend):
    dtype = data.draw(st.sampled_from(dtypes_for(backend, device)), label="dtype")
    shape = shape_of(data, device, backend, 0, 3, "mu")
    k = data.draw(st.one_of(st.none(), st.integers(1, 4)), label="num_samples")
    seed = data.draw(st.integers(-(2**63), 2**64 - 1), label="seed")
    gen = generator(data)
    mu = place(data, values(data, gen, shape, ["unit", "large", "tiny", "zero"], "mu"), dtype, device, "mu")
    lv = place(data, values(data, gen, shape, ["unit", "wide", "zero"], "logvar"), dtype, device, "logvar")

    z = vk.reparameterize(mu, lv, k, seed=seed, backend=backend)
    assert z.dtype == dtype and z.device.type == device and tuple(z.shape) == ((k,) if k else ()) + shape
    mu64, lv64 = leaf64(mu), leaf64(lv)
    ref = vk.reparameterize(mu64, lv64, k, seed=seed, backend="reference")
    kk = k or 1
    eps = vk.normal_noise((kk, *shape), seed, backend="reference").double()  # the noise ref used
    u, m, l, sig = unit(dtype), mu64.detach(), lv64.detach(), torch.exp(0.5 * lv64.detach())
    ek = eps if k else eps[0]
    # z = mu + sigma eps: exp at 0.5 logvar, one product, one sum; the stream's few ulp of eps
    bound = (u * ULPS * (m.abs() + sig * ek.abs() * (1 + 0.5 * l.abs())) + sig * STREAM_ULP * ek.abs().clamp(min=1)
             + store(dtype, m.abs() + sig * ek.abs()))
    check(z, ref, bound, f"z {dtype}")

    g = upstream(gen, z.shape, dtype, device)
    got = grads(z, [mu, lv], g)
    want = torch.autograd.grad(ref, [mu64, lv64], f64(g))
    gk = f64(g) if k else f64(g)[None]
    # dmu = sum_k g_k;  dlogvar = 0.5 sigma sum_k g_k eps_k
    mag = gk.abs().sum(0)
    check(zeros_if_none(got[0], mu), want[0], u * (ULPS + kk) * mag + store(dtype, mag), f"dmu {dtype}")
    ge = (gk.abs() * eps.abs()).sum(0)
    mag = 0.5 * sig * ge
    bound = (u * (ULPS + kk + 0.5 * l.abs()) * mag + 0.5 * sig * STREAM_ULP * (gk.abs() * eps.abs().clamp(min=1)).sum(0)
             + store(dtype, mag))
    check(zeros_if_none(got[1], lv), want[1], bound, f"dlogvar {dtype}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_reparameterize_properties(device, backend):
    run_property(_reparameterize, device, backend)


def _normal_noise(data, device, backend):
    shape = shape_of(data, device, backend, 0, 3, "noise", last_big=2000)
    seed = data.draw(st.integers(-(2**63), 2**64 - 1), label="seed")
    eps = vk.normal_noise(shape, seed, device=device, backend=backend)
    ref = vk.normal_noise(shape, seed, backend="reference")
    assert eps.dtype == torch.float32 and tuple(eps.shape) == shape
    check(eps, ref, STREAM_ULP * f64(ref).abs().clamp(min=1), "normal_noise")
    # exactly the eps reparameterize uses for an output of that shape
    zero = torch.zeros(shape, device=device)
    assert torch.equal(vk.reparameterize(zero, zero, seed=seed, backend=backend), eps)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_normal_noise_properties(device, backend):
    run_property(_normal_noise, device, backend)


# ----------------------------------------------------------------------------- gaussian_kl
KL_REDUCTIONS = ("none", "per_example", "sum", "batchmean")


def _gaussian_kl(data, device, backend):
    dtype = data.draw(st.sampled_from(dtypes_for(backend, device)), label="dtype")
    shape = shape_of(data, device, backend, 1, 3, "mu")
    prior_shapes = {None: None, "D": shape[-1:], "BD": shape[-2:], "full": shape}
    kinds = [None, "D", "full"] + (["BD"] if len(shape) >= 2 else [])
    pm_kind = data.draw(st.sampled_from(kinds), label="prior_mu shape")
    plv_kind = data.draw(st.sampled_from(kinds), label="prior_logvar shape")
    reduction = data.draw(st.sampled_from(KL_REDUCTIONS), label="reduction")
    gen = generator(data)
    pm = None if pm_kind is None else values(data, gen, prior_shapes[pm_kind], ["unit", "large", "zero"], "prior_mu")
    plv = None if plv_kind is None else values(data, gen, prior_shapes[plv_kind], ["unit", "wide", "zero"],
                                               "prior_logvar")
    zero = torch.zeros((), dtype=torch.float64)
    pmb = (zero if pm is None else pm).expand(shape)
    plvb = (zero if plv is None else plv).expand(shape)
    # "collapse": the posterior within ~1e-3 of the prior, where the naive formula cancels
    mu_kind = data.draw(st.sampled_from(["unit", "large", "tiny", "zero", "collapse"]), label="mu values")
    r = torch.randn(shape, generator=gen, dtype=torch.float64)
    mu = {"unit": r, "large": 30 * r, "tiny": 1e-3 * r, "zero": 0 * r, "collapse": pmb + 1e-3 * r}[mu_kind]
    # logvar - prior_logvar within +-60 (e^60 fits float32 with room for sums over the batch)
    lv_kind = data.draw(st.sampled_from(["unit", "wide", "collapse"]), label="logvar values")
    lv = plvb + (1e-3 if lv_kind == "collapse" else 1.0) * torch.randn(shape, generator=gen, dtype=torch.float64)
    if lv_kind == "wide":
        lv = plvb + LV_WIDE * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1)
    ins = [place(data, v, dtype, device, n) if v is not None else None
           for v, n in ((mu, "mu"), (lv, "logvar"), (pm, "prior_mu"), (plv, "prior_logvar"))]
    ins64 = [leaf64(t) for t in ins]
    m, l = f64(ins[0]), f64(ins[1])
    pmb = (zero if ins[2] is None else f64(ins[2])).expand(shape)
    plvb = (zero if ins[3] is None else f64(ins[3])).expand(shape)
    n, d = math.prod(shape[:-1]), shape[-1]
    # (a stride-0 layout may put logvar and prior_logvar further apart than drawn: past 80 e^delta
    # and the gradients' sums come near the float32 range, where intermediates may overflow)
    assume(bool(((l - plvb).abs() <= 80).all()))

    # free bits: off, or a lambda between two column means (never within 1e-3 of one: the clamp is a
    # step, a column on it may go either way)
    kl_el = vk.gaussian_kl(m, l, f64(ins[2]), f64(ins[3]), reduction="none", backend="reference")
    col = kl_el.reshape(n, d).mean(0)
    fb_pick = data.draw(st.sampled_from(["off", "off", "between"]), label="free bits")
    free_bits = 0.0
    if fb_pick == "between" and n > 0 and d > 0:
        s = col.sort().values
        cand = [float(s[0]) / 2, 2 * float(s[-1]) + 1e-3] + [float(a + b) / 2 for a, b in zip(s[:-1], s[1:])]
        free_bits = cand[data.draw(st.integers(0, len(cand) - 1), label="free bits lambda")]
        assume(free_bits > 0 and bool(((col - free_bits).abs() > 1e-3 * free_bits).all()))
    note(f"free_bits={free_bits!r}")

    out = vk.gaussian_kl(*ins, reduction=reduction, free_bits=free_bits, backend=backend)
    ref = vk.gaussian_kl(*ins64, reduction=reduction, free_bits=free_bits, backend="reference")
    odt = cdt(dtype)
    assert out.dtype == odt and out.device.type == device

    u = unit(dtype)
    delta, diff, ip = l - plvb, m - pmb, torch.exp(-plvb)
    f = 0.5 * (torch.expm1(delta) - delta)  # >= 0: 0.5 phi(delta), phi = e^delta - 1 - delta
    q = 0.5 * diff**2 * ip  # >= 0
    # The kernels compute phi by a series near 0 (no cancellation) and as expm1(delta) - delta beyond
    # (|delta| > ln 2 / 2 on cpu, 0.5 in Triton: kl_math.h), an error on the size of those two terms.
    f_scale = torch.where(delta.abs() > 0.3, 0.5 * (torch.expm1(delta).abs() + delta.abs()), f)
    naive = 1 + l.abs() + plvb.abs() + delta.exp() + 2 * q  # the reference formula's terms
    clamped = (col < free_bits).expand(shape) if free_bits > 0 else torch.zeros(shape, dtype=torch.bool)
    mag = torch.where(clamped, free_bits, f + q)
    err = torch.where(clamped, u * ULPS * free_bits,
                      u * ULPS * ((1 + delta.abs()) * f_scale + (1 + plvb.abs()) * q) + U64 * ULPS * naive)
    ua = u + U64
    if reduction == "none":
        bound = err
    elif reduction == "per_example":
        bound = err.sum(-1) + ua * d * mag.sum(-1)
    else:
        bound = err.sum() + ua * n * d * mag.sum()
        bound = bound / n if reduction == "batchmean" else bound
    check(out, ref, bound + spacing(odt), f"kl {reduction} {dtype}")

    g = upstream(gen, out.shape, odt, device)
    got = grads(out, ins, g)
    want = grads(ref, ins64, f64(g))
    gg = f64(g)
    big_g = gg.unsqueeze(-1) if reduction == "per_example" else gg / n if reduction == "batchmean" else gg
    big_g = big_g.expand(shape).masked_fill(clamped, 0.0).abs()  # |d out / d KL[..., d]|
    em1 = 0.5 * torch.expm1(delta).abs()
    mag_mu = big_g * diff.abs() * ip
    err_mu = ua * ULPS * (1 + plvb.abs()) * mag_mu
    mag_lv = big_g * em1
    err_lv = u * ULPS * (1 + delta.abs()) * mag_lv + U64 * ULPS * big_g * 0.5 * (1 + delta.exp())
    mag_plv = big_g * (em1 + q)
    err_plv = (u * ULPS * ((1 + delta.abs()) * em1 + (1 + plvb.abs()) * q) * big_g
               + U64 * ULPS * big_g * (0.5 * (1 + delta.exp()) + q))
    names = ("mu", "logvar", "prior_mu", "prior_logvar")
    mixed = ins[2] is not None and ins[3] is not None and ins[2].shape != ins[3].shape
    for name, t, gt, wt, mg, er in zip(names, ins, got, want, (mag_mu, mag_lv, mag_mu, mag_plv),
                                       (err_mu, err_lv, err_mu, err_plv)):
        if t is None:
            continue
        count = mg.numel() // max(1, t.numel()) if mg.numel() else 1
        mg_t, er_t = mg.sum_to_size(t.shape), er.sum_to_size(t.shape)
        bound = er_t + ua * count * mg_t + store(dtype, mg_t, count)
        assert gt is None or (gt.dtype == dtype and gt.shape == t.shape), name
        check(zeros_if_none(gt, t), zeros_if_none(wt, f64(t)), bound, f"d{name} {reduction} {dtype}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_gaussian_kl_properties(device, backend):
    run_property(_gaussian_kl, device, backend)


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("small", ("prior_mu", "prior_logvar"))
def test_mixed_prior_gradient_is_summed_before_rounding(device, backend, dtype, small):
    """A [D] prior beside a [B, D] one, in float16/bfloat16: the [D] prior's gradient is a sum over B
    whose terms cancel, so it must be summed before it is rounded to 16 bits (functional.py runs such
    a call in float32).  Summed after rounding it is NaN in float16 (a term past 65504 is inf) and
    off by up to half a bfloat16 ulp of the terms (256) in bfloat16.
    prior_mu [D]: dKL/dprior_mu = -sum_b g_b (mu_b - pm) e^-plv_b = -(3 - 3.003) e^10 = 66.08, terms +-66079.
    prior_logvar [D] (mu = pm): dKL/dplv = -0.5 sum_b g_b expm1(lv_b - plv) = 0.0005 expm1(12) = 81.4,
    terms +-81377."""
    require(backend, device, dtype)
    kw = dict(dtype=dtype, device=device)
    if small == "prior_mu":
        mu, lv = torch.tensor([[3.0], [-3.0]], **kw), torch.zeros(2, 1, **kw)
        pm, plv = torch.zeros(1, **kw, requires_grad=True), torch.full((2, 1), -10.0, **kw)
        g, leaf = torch.tensor([[1.0], [1.001]], device=device), pm
    else:
        mu, lv, pm = torch.zeros(2, 1, **kw), torch.zeros(2, 1, **kw), torch.zeros(2, 1, **kw)
        plv = torch.full((1,), -12.0, **kw, requires_grad=True)
        g, leaf = torch.tensor([[1.0], [-1.001]], device=device), plv
    out = vk.gaussian_kl(mu, lv, pm, plv, reduction="none", backend=backend)
    assert out.dtype == torch.float32
    (got,) = torch.autograd.grad(out, [leaf], g)
    assert got.dtype == dtype and got.shape == leaf.shape
    m, l, p, q = (f64(t) for t in (mu, lv, pm, plv))
    if small == "prior_mu":
        terms = -(f64(g) * (m - p) * torch.exp(-q))
    else:
        terms = -0.5 * f64(g) * torch.expm1(l - q) - 0.5 * f64(g) * (m - p) ** 2 * torch.exp(-q)
    want = terms.sum(0)
    assert bool(torch.isfinite(want).all()) and float(want.abs().max()) < torch.finfo(dtype).max
    # float32 terms of size |terms| (each off by ULPS u32 (1 + |plv|): the exp at plv), their float32
    # sum, one rounding to dtype
    u32 = unit(torch.float32)
    mag = terms.abs().sum(0)
    bound = u32 * (ULPS * (1 + q.abs().amax()) + 2) * mag + store(dtype, want.abs())
    check(got, want, bound, f"d{small} {dtype}")


# ----------------------------------------------------------------------------- iwae_bound
IWAE_REDUCTIONS = ("per_example", "sum", "batchmean")
# Any alpha the op accepts (any finite float): IWAE (0) and the ELBO (1), the usual range, near 1 (where
# (L - log K) / (1 - alpha) cancels), and any finite float (the example then assumes that the compute
# dtype's range holds (1 - alpha) log w).
ALPHAS = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-5.0, 5.0), st.floats(0.99, 1.01),
                   st.floats(allow_nan=False, allow_infinity=False))


def _iwae_bound(data, device, backend):
    dtype = data.draw(st.sampled_from(dtypes_for(backend, device)), label="dtype")
    k = data.draw(st.integers(1, 6) if interp(device, backend) else st.one_of(st.integers(1, 6), st.integers(7, 40)),
                  label="K")
    b = data.draw(st.integers(0, 9), label="B")
    d = data.draw(sizes(device, backend, 100), label="D")
    lpx_dtype = data.draw(st.sampled_from(sorted({dtype, torch.float32, torch.float64}, key=str)),
                          label="log_px_z dtype")  # any floating dtype: converted to the compute dtype
    pm_kind = data.draw(st.sampled_from([None, "D", "BD"]), label="prior_mu shape")
    plv_kind = data.draw(st.sampled_from([None, "D", "BD"]), label="prior_logvar shape")
    alpha = data.draw(ALPHAS, label="alpha")
    stl = data.draw(st.booleans(), label="stl")
    reduction = data.draw(st.sampled_from(IWAE_REDUCTIONS), label="reduction")
    gen = generator(data)
    pshape = {None: None, "D": (d,), "BD": (b, d)}
    lpx = with_minus_inf(data, gen, values(data, gen, (k, b), ["unit", "large", "spread"], "log_px_z") - 50, "log_px_z")
    pm = None if pm_kind is None else values(data, gen, pshape[pm_kind], ["unit", "zero"], "prior_mu")
    plv = None if plv_kind is None else values(data, gen, pshape[plv_kind], ["unit", "wide", "zero"], "prior_logvar")
    mu = values(data, gen, (b, d), ["unit", "large", "zero"], "mu")
    lv = values(data, gen, (b, d), ["unit", "wide", "zero"], "logvar")
    ins = [None if v is None else place(data, v, dt, device, name)
           for v, dt, name in ((lpx, lpx_dtype, "log_px_z"), (mu, dtype, "mu"), (lv, dtype, "logvar"),
                               (pm, dtype, "prior_mu"), (plv, dtype, "prior_logvar"))]
    # z from q as the op's inputs are (a layout may have changed mu's, logvar's values), spread out
    spread = data.draw(st.sampled_from([1.0, 3.0]), label="z spread")
    eps = torch.randn((k, b, d), generator=gen, dtype=torch.float64)
    z = f64(ins[1]) + spread * torch.exp(0.5 * f64(ins[2])) * eps
    ins.insert(1, place(data, z, dtype, device, "z"))
    u, ua = unit(dtype), unit(dtype) + U64
    lpx64, z64, m, l = (f64(t) for t in ins[:4])
    zero = torch.zeros((), dtype=torch.float64)
    pmb = (zero if ins[4] is None else f64(ins[4])).expand(b, d)
    plvb = (zero if ins[5] is None else f64(ins[5])).expand(b, d)
    uq, vp = z64 - m, z64 - pmb  # [K, B, D]
    iq, ip = torch.exp(-l), torch.exp(-plvb)
    a, c = uq**2 * iq, vp**2 * ip  # the squared distances' terms of log q and log p
    live = torch.isfinite(lpx64)
    # The float32 arithmetic's domain: log-density terms that fit in it (z ~ 1e13 from logvar = 60
    # against a prior with logvar = -60 gives 1e52: log w is -inf in float32, which the doc allows).
    assume(float(torch.cat([a.flatten(), c.flatten()]).amax()) * max(d, 1) < 1e30 if a.numel() else True)
    lpx_abs = lpx64.abs().masked_fill(~live, 0.0)
    # |log w_k| <= lw_mag: lpx + sum_D of log p - log q's terms
    lw_mag = lpx_abs + 0.5 * (2 * LOG_2PI + l.abs() + plvb.abs() + a + c).sum(-1)
    odt = cdt(dtype)
    # ... and r = (1 - alpha) log w in it too (alpha = 1e37 against log w = -50 is inf in float32)
    top = float(lw_mag.masked_fill(~live, 0.0).amax()) if lw_mag.numel() else 0.0
    assume(alpha == 1.0 or abs(1 - alpha) * max(1.0, top) < 1e-3 * torch.finfo(odt).max)

    ins64 = [leaf64(t) for t in ins]

    bound, w = vk.iwae_bound(*ins, alpha=alpha, stl=stl, reduction="per_example", return_weights=True, backend=backend)
    red = vk.iwae_bound(*ins, alpha=alpha, stl=stl, reduction=reduction, backend=backend)
    ref_b, ref_w = vk.iwae_bound(*ins64, alpha=alpha, stl=stl, return_weights=True, backend="reference")
    ref_red = vk.iwae_bound(*ins64, alpha=alpha, stl=stl, reduction=reduction, backend="reference")
    assert bound.dtype == odt and w.dtype == odt and red.dtype == odt and tuple(w.shape) == (k, b)

    # log w_k: lpx + sum_D of log p - log q, each term rounded (exp at -logvar: |logvar| u)
    lw_err = ua * ((ULPS + d) * lw_mag + ULPS * 0.5 * (a * l.abs() + c * plvb.abs()).sum(-1))
    lw_err = lw_err.masked_fill(~live, 0.0)
    lw_max = lw_mag.masked_fill(~live, 0.0).amax(0) if k else torch.zeros(b)
    # units of roundoff of |r_k| in r_k = fl(fl(1 - alpha) lw_k): none when 1 - alpha is a power of two
    # (both exact), else the product's ULPS and one for 1 - alpha in the compute dtype
    r_units = 0 if alpha == 1.0 or math.frexp(abs(1 - alpha))[0] == 0.5 else ULPS + 1
    if alpha == 1.0:
        b_err = lw_err.mean(0) + ua * (ULPS + k) * lw_max
    else:
        # max_k of the log-weights' errors (the log-sum-exp is 1-Lipschitz in the max norm), the
        # log-sum-exp's own rounding and the division's; and unless 1 - alpha is a power of two (then
        # r_k = (1 - alpha) lw_k is exact) the rounding of r_k = fl(fl(1 - alpha) lw_k) -- the product's
        # ULPS and one unit for 1 - alpha in the compute dtype, of |r_k| -- through the log-sum-exp and
        # divided by 1 - alpha, and one unit of |bound| <= max_k |lw_k| (a mean of the lw_k) for the
        # division by fl(1 - alpha)
        b_err = (lw_err.amax(0) + ua * ULPS * (2 * lw_max + (k + math.log(k) + 1) / abs(1 - alpha))
                 + ua * (r_units + 1 if r_units else 0) * lw_max)
    check(bound, ref_b, b_err + spacing(odt), f"bound {dtype} alpha={alpha}")
    bsum = b_err.sum() + ua * b * f64(ref_b).abs().masked_fill(~torch.isfinite(f64(ref_b)), 0).sum()
    check(red, ref_red, (bsum / b if reduction == "batchmean" else bsum) + spacing(odt), f"bound {reduction} {dtype}")
    # weights softmax_k((1 - alpha) lw): a perturbation e_k of each r_k = (1 - alpha) lw_k moves
    # x_k = r_k - lse by at most e = e_k + max_j e_j, so w_k = e^x_k within [e^(x_k - e), e^min(0, x_k + e)]
    # (from x_k in float64, so a weight that underflows keeps its bound)
    wr = f64(ref_w)
    dead = ~torch.isfinite(f64(ref_b)) if b else torch.zeros(0, dtype=torch.bool)
    if alpha == 1.0:
        w_bound = ua * ULPS * wr
    else:
        lw64 = lpx64 + 0.5 * (l - plvb + a - c).sum(-1)  # log p - log q (log 2 pi cancels)
        r = (1 - alpha) * lw64
        lse = torch.logsumexp(r, 0)
        x = (r - lse).masked_fill(dead.expand(k, b), -INF).nan_to_num(-INF)
        r_abs = (abs(1 - alpha) * lw_mag + lse.abs()).masked_fill(~live | dead, 0.0)
        e = abs(1 - alpha) * (lw_err + lw_err.amax(0)) + ua * (ULPS * (1 + r_abs) + k)
        # r_k's own rounding (r_units of |r_k|), in r_k and through the log-sum-exp (at most the largest)
        r_mag = (abs(1 - alpha) * lw_mag).masked_fill(~live | dead, 0.0)
        e = e + ua * r_units * (r_mag + r_mag.amax(0))
        # got and the oracle both in [e^(x - e), min(1, e^(x + e))] (e includes the oracle's error: its
        # log-sum-exp too is rounded at |lse|, 1e16 and more when a prior's logvar is -40)
        hi, lo = torch.exp((x + e).clamp(max=0)), torch.exp(x - e)
        w_bound = torch.maximum(hi - wr, wr - lo).clamp(min=0) + ua * ULPS * x.exp()
    w_bound = w_bound + spacing(odt)
    check(w, wr, w_bound, f"weights {dtype} alpha={alpha}")

    g = upstream(gen, red.shape, odt, device)
    got = grads(red, ins, g)
    want = grads(ref_red, ins64, f64(g))
    gg = f64(g)
    big_g = (gg / b if reduction == "batchmean" else gg).expand(b) if reduction != "per_example" else gg
    cw = big_g.abs() * wr  # |d out / d lw_k| [K, B]
    # its error: the weight's, then c's rounding at the size the kernel's c may have (c may be subnormal)
    cw_err = big_g.abs() * w_bound + ua * ULPS * big_g.abs() * (wr + w_bound) + spacing(odt)
    cw_tot = cw + cw_err

    def grad_bound(t, f_mag, f_err, lost):
        """sum over what broadcasts to t of (c's error |f| + c's largest size f's error + what underflow
        loses), the sum's own error."""
        terms = (cw_err[..., None] * f_mag + cw_tot[..., None] * f_err + lost).sum_to_size(t.shape)
        mag = (cw_tot[..., None] * f_mag).sum_to_size(t.shape)
        count = (cw[..., None] * f_mag).numel() // max(1, t.numel()) if f_mag.numel() else 1
        return terms + ua * count * mag + store(t.dtype, mag, count)

    A, P = uq.abs() * iq, vp.abs() * ip
    fa = ua * ULPS * (1 + l.abs())
    fp = ua * ULPS * (1 + plvb.abs())
    one = torch.ones((k, b, d), dtype=torch.float64)
    # The kernels keep sums over K of c (z - mu) and c (z - mu)^2 and multiply by e^-logvar after
    # (backward keeps only the [K, B] weights): a term below the compute dtype's normal range is
    # lost, and the loss (up to its smallest normal per term) is then scaled by e^-logvar.
    tiny = torch.finfo(odt).smallest_normal
    lost_q, lost_p = tiny * iq * one, tiny * ip * one
    bounds = {
        "log_px_z": cw_err + store(ins[0].dtype, cw_tot, compute=odt),
        "z": grad_bound(ins[1], A + P, fa * A + fp * P, lost_q + lost_p),
        "mu": grad_bound(ins[2], A * one, fa * A, lost_q),
        "logvar": grad_bound(ins[3], 0.5 * (1 + a), ua * ULPS * 0.5 * (1 + a * (1 + l.abs())),
                             0.5 * lost_q * (1 + uq.abs())),
        "prior_mu": None if ins[4] is None else grad_bound(ins[4], P * one, fp * P, lost_p),
        "prior_logvar": None if ins[5] is None else grad_bound(ins[5], 0.5 * (1 + c),
                                                                ua * ULPS * 0.5 * (1 + c * (1 + plvb.abs())),
                                                                0.5 * lost_p * (1 + vp.abs())),
    }
    names = ("log_px_z", "z", "mu", "logvar", "prior_mu", "prior_logvar")
    for name, t, gt, wt in zip(names, ins, got, want):
        if t is None:
            continue
        gt, wt = zeros_if_none(gt, t), zeros_if_none(wt, f64(t))
        assert gt.dtype == t.dtype and gt.shape == t.shape, name
        if stl and name in ("mu", "logvar"):  # no direct gradient: only through z, which is an input here
            assert bool((f64(gt) == 0).all()) and bool((wt == 0).all()), f"STL leaves no gradient on {name}"
            continue
        check(gt, wt, bounds[name], f"d{name} {dtype} alpha={alpha} {reduction}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_iwae_bound_properties(device, backend):
    run_property(_iwae_bound, device, backend)


def _iwae_weights_are_normalized(data, device, backend):
    """Any finite alpha != 1, log-weights from -50 to -1e10: the weights are a softmax, so none exceeds
    1 and they are finite, K = 1 gives 1, and they sum to 1 -- to the rounding of K terms and of the
    log-sum-exp L they are divided by (exp(r_k - L): a relative u |L|, which at |L| = 1e10 says nothing).
    The bound's gradient with respect to log_px_z (g times the weights) sums to g alike: the bound
    moves with a common shift of log w."""
    k = data.draw(st.integers(1, 8), label="K")
    b = data.draw(st.integers(1, 4), label="B")
    alpha = data.draw(st.floats(-3.0, 3.0).filter(lambda a: abs(1.0 - a) > 1e-3), label="alpha")
    level = data.draw(st.sampled_from([-50.0, -1e4, -1e6, -1e10]), label="log w level")
    gen = generator(data)
    lpx = (level + 3 * torch.randn((k, b), generator=gen, dtype=torch.float64)).float().to(device).requires_grad_(True)
    z, mu = torch.zeros(k, b, 0, device=device), torch.zeros(b, 0, device=device)  # D = 0: log w = log_px_z
    bound, w = vk.iwae_bound(lpx, z, mu, mu, alpha=alpha, return_weights=True, backend=backend)
    u = unit(torch.float32)
    w64 = f64(w)
    assert bool(torch.isfinite(w64).all()) and bool((w64 <= 1 + ULPS * u).all()), f"weights {w64.tolist()}"
    if k == 1:
        assert bool(((w64 - 1).abs() <= ULPS * u).all()), f"K = 1: weights {w64.tolist()}"
    lse = (1 - alpha) * f64(bound) + math.log(k)
    tol = (k + ULPS) * u + torch.expm1(ULPS * u * (lse.abs() + 1))
    assert bool(((w64.sum(0) - 1).abs() <= tol).all()), f"weights sum to {w64.sum(0).tolist()}"
    g = upstream(gen, (b,), torch.float32, device)
    (dlpx,) = torch.autograd.grad(bound, [lpx], g)
    assert bool(((f64(dlpx).sum(0) - f64(g)).abs() <= tol * f64(g).abs()).all()), "d bound / d shift != 1"


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_iwae_weights_are_normalized(device, backend):
    run_property(_iwae_weights_are_normalized, device, backend)


# ----------------------------------------------------------------------------- log_mean_exp
def _log_mean_exp(data, device, backend):
    dtype = data.draw(st.sampled_from(dtypes_for(backend, device)), label="dtype")
    shape = list(shape_of(data, device, backend, 1, 3, "x"))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    shape[dim] = max(1, shape[dim])  # the mean of no terms is an error (tests/test_log_mean_exp.py)
    keepdim = data.draw(st.booleans(), label="keepdim")
    gen = generator(data)
    vals = with_minus_inf(data, gen, values(data, gen, shape, ["unit", "large", "spread", "shifted", "tiny"], "x"), "x")
    x = place(data, vals, dtype, device, "x")
    x64 = leaf64(x)
    out = vk.log_mean_exp(x, dim, keepdim, backend=backend)
    ref = vk.log_mean_exp(x64, dim, keepdim, backend="reference")
    odt = cdt(dtype)
    assert out.dtype == odt and out.shape == ref.shape

    u = unit(dtype) + U64
    xa = f64(x).abs().masked_fill(~torch.isfinite(f64(x)), 0.0)
    n = shape[dim]
    # max-shift, a sum of n terms e^(x - max) <= n, its log
    err = u * (ULPS * (xa.amax(dim, keepdim=True) + math.log(n) + 1) + n)
    check(out, ref, (err if keepdim else err.squeeze(dim)) + spacing(odt), f"log_mean_exp {dtype}")

    g = upstream(gen, out.shape, odt, device)
    (got,) = grads(out, [x], g)
    (want,) = torch.autograd.grad(ref, [x64], f64(g))
    # grad * softmax: exp at x - out - log n, plus out's own error
    outa = f64(ref).abs().nan_to_num(0.0, 0.0, 0.0)
    outa = outa if keepdim else outa.unsqueeze(dim)  # err kept dim
    rel = u * ULPS * (xa + outa + math.log(n) + 1) + err
    wa = f64(want).abs()
    ga = f64(g).abs() if keepdim else f64(g).abs().unsqueeze(dim)  # a subnormal softmax's rounding, times g
    check(zeros_if_none(got, x), want, wa * torch.expm1(rel) + store(dtype, wa) + ga * spacing(odt), f"dx {dtype}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_log_mean_exp_properties(device, backend):
    run_property(_log_mean_exp, device, backend)


# ----------------------------------------------------------------------------- gaussian_log_prob
def _gaussian_log_prob(data, device, backend):
    dtype = data.draw(st.sampled_from(dtypes_for(backend, device)), label="dtype")
    mshape = shape_of(data, device, backend, 1, 2, "mu")
    sshape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=2), label="sample dims"))
    gen = generator(data)
    mu = values(data, gen, mshape, ["unit", "large", "zero"], "mu")
    lv = values(data, gen, mshape, ["unit", "wide", "zero"], "logvar")
    spread = data.draw(st.sampled_from([1.0, 3.0]), label="z spread")
    z = mu + spread * torch.exp(0.5 * lv) * torch.randn(sshape + mshape, generator=gen, dtype=torch.float64)
    ins = [place(data, v, dtype, device, name) for v, name in ((z, "z"), (mu, "mu"), (lv, "logvar"))]
    ins64 = [leaf64(t) for t in ins]
    u = unit(dtype) + U64
    zz, m, l = (f64(t) for t in ins)
    d = mshape[-1]
    iv = torch.exp(-l)
    uq = zz - m
    a = uq**2 * iv
    # The float32 arithmetic's domain: sums of terms that fit in it (a layout can put z ~ 1e13, drawn
    # with logvar = 60, against logvar = -60: 1e52, and sums of D terms near 3e38 overflow on the way)
    assume(float(a.amax()) * max(d, 1) < 1e30 if a.numel() else True)

    out = vk.gaussian_log_prob(*ins, backend=backend)
    ref = vk.gaussian_log_prob(*ins64, backend="reference")
    odt = cdt(dtype)
    assert out.dtype == odt and out.shape == ref.shape
    mag = 0.5 * (LOG_2PI + l.abs() + a)
    err = u * ((ULPS + d) * mag.sum(-1) + ULPS * 0.5 * (a * l.abs()).sum(-1))
    check(out, ref, err + spacing(odt), f"log_prob {dtype}")

    g = upstream(gen, out.shape, odt, device)
    got = grads(out, ins, g)
    want = torch.autograd.grad(ref, ins64, f64(g))
    ga = f64(g).abs()[..., None]
    A = ga * uq.abs() * iv  # |g (z - mu) e^-logvar|
    fa = u * ULPS * (1 + l.abs())
    L = ga * 0.5 * (1 + a)  # |g d/dlogvar|'s terms
    le = ga * u * ULPS * 0.5 * (1 + a * (1 + l.abs()))
    n_s = max(1, math.prod(sshape))
    bounds = [fa * A + store(dtype, A),
              (fa * A).sum_to_size(mshape) + u * n_s * A.sum_to_size(mshape) + store(dtype, A.sum_to_size(mshape)),
              le.sum_to_size(mshape) + u * n_s * L.sum_to_size(mshape) + store(dtype, L.sum_to_size(mshape))]
    for name, t, gt, wt, bd in zip(("z", "mu", "logvar"), ins, got, want, bounds):
        gt = zeros_if_none(gt, t)
        assert gt.dtype == t.dtype and gt.shape == t.shape, name
        check(gt, wt, bd, f"d{name} {dtype}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_gaussian_log_prob_properties(device, backend):
    run_property(_gaussian_log_prob, device, backend)
