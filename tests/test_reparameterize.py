"""reparameterize on every backend against a float64 oracle, plus autograd, custom-op, compile,
memory, reproducibility, statistics and input-checking tests."""
import math

import pytest
import torch

import vaekernels as vk
from vaekernels.reference import reparameterize as ref_impl

from conftest import ALL_CASES, KERNEL_CASES, TOL, dtypes_for, require

SHAPES = [(1,), (7,), (33,), (4097,), (3, 5), (2, 3, 7)]
STREAM_ULP = 1e-6  # |eps - eps_ref| / max(1, |eps|) allowed between backends (a few ulp)


def interp(backend, device):
    return backend == "triton" and device == "cpu"


def inputs(shape, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).to(device)
    logvar = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).to(device)
    return mu, logvar


def oracle(mu, logvar, seed, k):
    """float64 z and eps from the plain-torch formula, on CPU."""
    mu, logvar = mu.detach().cpu().double(), logvar.detach().cpu().double()
    eps = vk.normal_noise((k, *mu.shape), seed, backend="reference").double()
    return mu + torch.exp(0.5 * logvar) * eps, eps


def assert_close(got, ref, dtype, scale, what):
    """|got - ref| <= rtol * scale + atol, with the dtype's rounding and the stream's few ulp."""
    tol = TOL[dtype]
    bound = tol["rtol"] * scale + tol["atol"]
    err = (got.detach().cpu().double() - ref).abs()
    bad = err > bound
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} of {err.numel()} off, max error {err.max().item():.3g}"


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [None, 1, 3])
def test_forward_matches_float64_oracle(device, backend, shape, k):
    require(backend, device)
    for dtype in dtypes_for(backend, device):
        mu, logvar = inputs(shape, dtype, device, seed=len(shape))
        z = vk.reparameterize(mu, logvar, k, seed=1234, backend=backend)
        assert z.shape == ((k,) if k else ()) + shape and z.dtype == dtype and z.device.type == device
        ref, eps = oracle(mu, logvar, 1234, k or 1)
        ref = ref if k else ref[0]
        eps = eps if k else eps[0]
        sigma = torch.exp(0.5 * logvar.cpu().double())
        scale = ref.abs() + sigma * eps.abs() + sigma * STREAM_ULP / TOL[dtype]["rtol"] * eps.abs().clamp(min=1)
        assert_close(z, ref, dtype, scale, f"z {dtype}")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (5, 13)], ids=str)
def test_backward_matches_float64_oracle(device, backend, shape):
    """Non-unit upstream gradient; dmu = sum_k g_k, dlogvar = sum_k g_k eps_k sigma / 2."""
    require(backend, device)
    k = 5
    for dtype in dtypes_for(backend, device):
        mu, logvar = inputs(shape, dtype, device, seed=3)
        mu.requires_grad_(True)
        logvar.requires_grad_(True)
        g = torch.randn((k, *shape), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        z = vk.reparameterize(mu, logvar, k, seed=99, backend=backend)
        z.backward(g.to(dtype).to(device))
        gd = g.to(dtype).double()
        _, eps = oracle(mu, logvar, 99, k)
        sigma = torch.exp(0.5 * logvar.detach().cpu().double())
        ref_dmu = gd.sum(0)
        ref_dlv = (gd * eps).sum(0) * 0.5 * sigma
        assert_close(mu.grad, ref_dmu, dtype, gd.abs().sum(0), f"dmu {dtype}")
        scale = (gd.abs() * eps.abs().clamp(min=1)).sum(0) * 0.5 * sigma * (1 + STREAM_ULP / TOL[dtype]["rtol"])
        assert_close(logvar.grad, ref_dlv, dtype, scale, f"dlogvar {dtype}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_samples_agree_with_reference_sample_for_sample(device, backend):
    """Same seed, same inputs: the fused backend and the naive one give the same z."""
    require(backend, device)
    mu, logvar = inputs((9, 31), torch.float32, device)
    for seed in (0, 2**40 + 5, -1):
        z = vk.reparameterize(mu, logvar, 4, seed=seed, backend=backend).cpu()
        zr = vk.reparameterize(mu.cpu(), logvar.cpu(), 4, seed=seed, backend="reference")
        torch.testing.assert_close(z, zr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_non_contiguous_inputs_use_logical_order(device, backend):
    require(backend, device)
    base_mu, base_lv = inputs((33, 10), torch.float32, device)
    cases = [
        (base_mu.t(), base_lv.t()),  # transposed
        (base_mu[1::2], base_lv[::2][:16]),  # strided rows
        (base_mu[:, 3], base_lv[:, 5]),  # a column
        (base_mu[:1].expand(6, 10), base_lv[:1].expand(6, 10)),  # stride 0
    ]
    for mu, lv in cases:
        assert not mu.is_contiguous() and not lv.is_contiguous()
        z = vk.reparameterize(mu, lv, 3, seed=5, backend=backend)
        zc = vk.reparameterize(mu.contiguous(), lv.contiguous(), 3, seed=5, backend=backend)
        assert torch.equal(z, zc)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_non_contiguous_gradients(device, backend):
    require(backend, device)
    mu0, lv0 = inputs((12, 7), torch.float32, device)
    mu = mu0.t().requires_grad_(True)
    lv = lv0.t().requires_grad_(True)
    g = torch.randn(2, 12, 7, device=device).transpose(1, 2)  # non-contiguous upstream gradient
    vk.reparameterize(mu, lv, 2, seed=11, backend=backend).backward(g)
    mu_c = mu.detach().contiguous().requires_grad_(True)
    lv_c = lv.detach().contiguous().requires_grad_(True)
    vk.reparameterize(mu_c, lv_c, 2, seed=11, backend=backend).backward(g.contiguous())
    torch.testing.assert_close(mu.grad, mu_c.grad)
    torch.testing.assert_close(lv.grad, lv_c.grad)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_many_samples_and_empty_batches(device, backend):
    require(backend, device)
    mu, lv = inputs((2, 3), torch.float32, device)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    k = 1000 if not interp(backend, device) else 200
    z = vk.reparameterize(mu, lv, k, seed=3, backend=backend)
    ref, _ = oracle(mu, lv, 3, k)
    torch.testing.assert_close(z.detach().cpu().double(), ref, rtol=1e-5, atol=1e-5)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.full_like(mu, float(k)))

    for shape in [(0, 5), (4, 0), (0,)]:
        mu = torch.zeros(shape, device=device, requires_grad=True)
        lv = torch.zeros(shape, device=device, requires_grad=True)
        z = vk.reparameterize(mu, lv, 4, backend=backend)
        assert z.shape == (4, *shape)
        z.sum().backward()
        assert mu.grad.shape == shape and lv.grad.shape == shape


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    require(backend, "cpu")
    mu, lv = inputs((3, 5), torch.float64, "cpu")
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    fn = lambda m, l: vk.reparameterize(m, l, 4, seed=17, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, lv))
    assert torch.autograd.gradgradcheck(fn, (mu, lv)) if backend == "reference" else True


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_opcheck(device, backend):
    require(backend, device)
    mu, lv = inputs((4, 6), torch.float32, device)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    seed = torch.tensor(123, dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.vaekernels.reparameterize.default, (mu, lv, seed, 3, backend))
    g = torch.randn(3, 4, 6, device=device)
    torch.library.opcheck(torch.ops.vaekernels.reparameterize_backward.default, (g, lv.detach(), seed, backend))


@pytest.mark.parametrize("device,backend", [c for c in KERNEL_CASES if c.values[1] != "triton" or c.values[0] == "cuda"])
def test_compile_fullgraph_matches_eager(device, backend):
    """Sampling + a loss + backward under torch.compile(fullgraph=True): no graph break, same numbers."""
    require(backend, device)
    torch._dynamo.reset()

    def step(mu, lv, seed):
        z = vk.reparameterize(mu, lv, 4, seed=seed, backend=backend)
        return (z.tanh() * torch.arange(z.shape[-1], device=z.device)).sum()

    def step_drawn(mu, lv):  # the seed drawn from torch's generator inside the graph
        return vk.reparameterize(mu, lv, 2, backend=backend).square().sum()

    mu, lv = inputs((8, 16), torch.float32, device)
    grads = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        m, l = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
        seed = torch.tensor(77, device=device)
        loss = fn(m, l, seed)
        loss.backward()
        grads.append((loss.detach(), m.grad, l.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    compiled = torch.compile(step_drawn, fullgraph=True)
    torch.manual_seed(5)
    first = compiled(mu, lv)
    torch.manual_seed(5)
    assert torch.equal(compiled(mu, lv), first)  # torch.manual_seed governs the compiled draw
    assert not torch.equal(compiled(mu, lv), first)  # and consecutive calls differ


def _grads(z_fn, mu, lv, g):
    """dmu, dlogvar of (z_fn(mu, lv) * g).sum() through z_fn's graph, on fresh leaves."""
    mu, lv = mu.detach().requires_grad_(True), lv.detach().requires_grad_(True)
    torch.autograd.backward(z_fn(mu, lv), g)
    return mu.grad, lv.grad


def _oracle_grads(mu, lv, g, seed, k):
    _, eps = oracle(mu, lv, seed, k)
    sigma = torch.exp(0.5 * lv.double())
    gd = g.double()
    scale = (gd.abs() * eps.abs().clamp(min=1)).sum(0) * 0.5 * sigma * (1 + STREAM_ULP / TOL[mu.dtype]["rtol"])
    return gd.sum(0), (gd * eps).sum(0) * 0.5 * sigma, gd.abs().sum(0), scale


STREAM_N = 262147  # odd: the rows of z start at every alignment (streaming stores need aligned vectors)


def _stream_rows(itemsize):
    """Rows of STREAM_N elements that make z reach the streaming threshold of the cpu kernels."""
    from vaekernels import backends
    min_bytes = backends.module("cpu").build_info()["stream_min_bytes"]
    return -(-min_bytes // (STREAM_N * itemsize))


@pytest.fixture(scope="module")
def stream_eps():
    """The reference stream's normals for the largest such z (2-byte elements): eps of flat element
    e of z is normal(e) whatever z's dtype."""
    return vk.normal_noise((_stream_rows(2), STREAM_N), 21, backend="reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cpu_forward_streams_large_z(dtype, stream_eps):
    """z of at least build_info()["stream_min_bytes"] (32 MiB) is written with streaming stores
    (plain ones where a vector is not aligned): every element against the float64 oracle."""
    k = _stream_rows(torch.empty(0, dtype=dtype).element_size())
    mu, lv = inputs((STREAM_N,), dtype, "cpu", seed=3)
    z = vk.reparameterize(mu, lv, k, seed=21, backend="cpu")
    mu64, sigma = mu.double(), torch.exp(0.5 * lv.double())
    for j in range(k):
        eps = stream_eps[j].double()
        ref = mu64 + sigma * eps
        scale = ref.abs() + sigma * eps.abs() + sigma * STREAM_ULP / TOL[dtype]["rtol"] * eps.abs().clamp(min=1)
        assert_close(z[j], ref, dtype, scale, f"z row {j} of {k} ({dtype})")


@pytest.fixture
def read_back_always(monkeypatch):
    """The cpu backward reads eps back from z of any size (by default from 2^16 elements)."""
    from vaekernels.ops import reparameterize as op
    monkeypatch.setattr(op, "READ_BACK_MIN", 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,k", [((3, 5), 6), ((40, 37), 6), ((7, 1000), 6), ((70, 150), 7), ((300, 131), 5)],
                         ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_cpu_backward_reads_eps_back_from_z(dtype, shape, k, layout, monkeypatch):
    """In plain eager, the cpu backward reads eps back from z, (z - mu) / sigma, in the blocks of
    64 columns whose |mu| <= 16 sigma (here most of them; the rest regenerate eps) -- within the
    oracle's tolerance, and not bitwise what the custom op (always regenerating) gives.  Small z
    only when READ_BACK_MIN allows it (the last two shapes are above the default; the last has
    two column tiles of the backward, and a last step of 1 row after 4)."""
    from vaekernels.ops import reparameterize as op
    if k * math.prod(shape) < op.READ_BACK_MIN:
        monkeypatch.setattr(op, "READ_BACK_MIN", 0)
    mu, lv = inputs(shape, dtype, "cpu", seed=11)
    mu = mu / 3  # |mu| ~ 1, sigma ~ 1
    if layout == "transposed":  # the same values, non-contiguous: the read-back uses the kernel's copy
        mu = mu.t().contiguous().t()
    g = torch.randn((k, *shape), generator=torch.Generator().manual_seed(4), dtype=dtype)
    twin = _grads(lambda m, l: vk.reparameterize(m, l, k, seed=5, backend="cpu"), mu, lv, g)
    custom = _grads(lambda m, l: op.reparameterize(m, l, torch.tensor(5), k, "cpu"), mu, lv, g)
    ref_dmu, ref_dlv, dmu_scale, dlv_scale = _oracle_grads(mu, lv, g, 5, k)
    assert torch.equal(twin[0], custom[0])  # dmu does not involve eps
    assert_close(twin[1], ref_dlv, dtype, dlv_scale, f"dlogvar read back {dtype}")
    assert_close(custom[1], ref_dlv, dtype, dlv_scale, f"dlogvar regenerated {dtype}")
    assert not torch.equal(twin[1], custom[1]), "the eager twin did not read eps back from z"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backward_regenerates_where_sigma_is_small_against_mu(dtype, read_back_always):
    """Columns with |mu| >> sigma (there (z - mu) / sigma would have lost every digit of eps) take
    regenerated eps, also in a tile whose other blocks read eps back from z; the blocks are 64
    columns from column 0."""
    k, n = 4, 300
    mu, lv = torch.randn(n, dtype=dtype) / 3, torch.randn(n, dtype=dtype)
    # sigma = 1 and z - mu would keep only ~4 bits of eps (float32: ulp(1e6) = 1/16; float64: ulp(1e14))
    mu[64:128], lv[64:128] = (1e6 if dtype == torch.float32 else 1e14), 0.0
    mu[200] = 20.0  # one column of the block 192-255 beyond 16 sigma
    lv[200] = 0.0
    g = torch.randn((k, n), generator=torch.Generator().manual_seed(8), dtype=dtype)
    dmu, dlv = _grads(lambda m, l: vk.reparameterize(m, l, k, seed=3, backend="cpu"), mu, lv, g)
    ref_dmu, ref_dlv, dmu_scale, dlv_scale = _oracle_grads(mu, lv, g, 3, k)
    assert_close(dmu, ref_dmu, dtype, dmu_scale, "dmu")
    assert_close(dlv, ref_dlv, dtype, dlv_scale, "dlogvar")


def test_cpu_backward_after_z_changed_or_dropped(read_back_always):
    """An in-place change of z after the forward (which eager torch allows), or z no longer alive,
    makes the backward regenerate eps: the same bits as the custom op path."""
    from vaekernels.ops import reparameterize as op
    k, shape = 3, (20, 50)
    mu, lv = inputs(shape, torch.float32, "cpu", seed=2)
    g = torch.randn((k, *shape), generator=torch.Generator().manual_seed(6))

    def changed(fn):
        def run(m, l):
            z = fn(m, l)
            z.mul_(2.0)  # a new version of z; its gradient is now 2 g
            return z
        return run

    def dropped(fn):
        def run(m, l):
            return fn(m, l) * 1.0  # the product keeps no reference to z; z dies here
        return run

    def twin(m, l):
        return vk.reparameterize(m, l, k, seed=9, backend="cpu")

    def custom(m, l):
        return op.reparameterize(m, l, torch.tensor(9), k, "cpu")

    for wrap in (changed, dropped):
        a, b = _grads(wrap(twin), mu, lv, g), _grads(wrap(custom), mu, lv, g)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), wrap.__name__
    _, ref_dlv, _, dlv_scale = _oracle_grads(mu, lv, 2 * g, 9, k)
    assert_close(_grads(changed(twin), mu, lv, g)[1], ref_dlv, torch.float32, dlv_scale, "dlogvar after z.mul_(2)")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_backward_keeps_no_sample_sized_tensor(device, backend):
    """Saved for backward: logvar and the 0-d seed only (eager torch keeps eps: K*B*D)."""
    require(backend, device)
    mu, lv = inputs((64, 32), torch.float32, device)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = vk.reparameterize(mu, lv, 16, seed=1, backend=backend)
    assert sum(saved) <= lv.numel() * lv.element_size() + 8, saved
    assert max(saved) < z.numel() * z.element_size()


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_seed_generator_and_manual_seed(device, backend):
    require(backend, device)
    mu, lv = inputs((5, 8), torch.float32, device)
    torch.manual_seed(0)
    a = vk.reparameterize(mu, lv, 2, backend=backend)
    b = vk.reparameterize(mu, lv, 2, backend=backend)
    torch.manual_seed(0)
    a2 = vk.reparameterize(mu, lv, 2, backend=backend)
    assert torch.equal(a, a2) and not torch.equal(a, b)
    gen = torch.Generator(device=device).manual_seed(42)
    c = vk.reparameterize(mu, lv, 2, generator=gen, backend=backend)
    gen.manual_seed(42)
    assert torch.equal(c, vk.reparameterize(mu, lv, 2, generator=gen, backend=backend))
    # seed as an int, a tensor, and the same 64 bits written signed or unsigned
    s = vk.reparameterize(mu, lv, 2, seed=(1 << 64) - 1, backend=backend)
    assert torch.equal(s, vk.reparameterize(mu, lv, 2, seed=-1, backend=backend))
    assert torch.equal(s, vk.reparameterize(mu, lv, 2, seed=torch.tensor(-1), backend=backend))


@pytest.mark.parametrize("device,backend", [pytest.param("cpu", "cpu", id="cpu-cpu")] + KERNEL_CASES[2:3])
def test_sample_and_call_correlations(device, backend):
    """Between samples k and k+1 of one call and between two consecutive calls, the noise is
    uncorrelated within 5 standard errors (10^6 pairs)."""
    require(backend, device)
    n = 1 << 20
    zero = torch.zeros(n, device=device)
    z = vk.reparameterize(zero, zero, 2, backend=backend).double()
    z2 = vk.reparameterize(zero, zero, 1, backend=backend).double()[0]
    se = 1 / math.sqrt(n)
    assert abs((z[0] * z[1]).mean().item()) < 5 * se
    assert abs((z[1] * z2).mean().item()) < 5 * se
    assert abs((z[0] * z2).mean().item()) < 5 * se
    for row in (z[0], z[1], z2):
        assert abs(row.mean().item()) < 5 * se and abs(row.var().item() - 1) < 5 * math.sqrt(2) * se


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_extreme_values(device, backend):
    require(backend, device)
    mu = torch.tensor([0.0, float("nan"), 1.0, 2.0, -3.0], device=device)
    lv = torch.tensor([float("nan"), 0.0, 200.0, -200.0, float("-inf")], device=device)
    z = vk.reparameterize(mu, lv, 3, seed=1, backend=backend)
    assert torch.isnan(z[:, :2]).all()
    assert torch.isinf(z[:, 2]).all()  # sigma overflows float32: |z| = inf, never NaN
    assert torch.equal(z[:, 3], torch.full((3,), 2.0, device=device))  # sigma underflows to 0
    assert torch.equal(z[:, 4], torch.full((3,), -3.0, device=device))


def test_bad_inputs_raise_clear_errors():
    mu = torch.zeros(4, 8)
    bad = [
        ((mu, torch.zeros(4, 7)), {}, ValueError, "logvar has shape (4, 7) but mu has (4, 8)"),
        ((mu, torch.zeros(4, 8, dtype=torch.float64)), {}, TypeError, "logvar has dtype torch.float64"),
        ((mu.long(), mu.long()), {}, TypeError, "mu must be a floating tensor"),
        ((mu.bool(), mu), {}, TypeError, "mu must be a floating tensor"),
        (([1.0], mu), {}, TypeError, "mu must be a torch.Tensor, got list"),
        ((mu, mu, 0), {}, ValueError, "num_samples must be >= 1, got 0"),
        ((mu, mu, 2.0), {}, TypeError, "num_samples must be a positive int"),
        ((mu, mu, True), {}, TypeError, "num_samples must be a positive int"),
        ((mu, mu), {"seed": 1.5}, TypeError, "seed must be an int"),
        ((mu, mu), {"seed": 1 << 64}, ValueError, "seed must be in [-2**63, 2**64)"),
        ((mu, mu), {"seed": torch.tensor([1, 2])}, TypeError, "seed tensor must be a 0-d int64"),
        ((mu, mu), {"seed": 1, "generator": torch.Generator()}, ValueError, "pass seed or generator"),
        ((mu, mu), {"generator": 3}, TypeError, "generator must be a torch.Generator"),
        ((mu, mu), {"backend": "cudnn"}, ValueError, "backend must be one of"),
        ((mu, mu), {"backend": "cuda"}, vk.BackendUnavailableError, "cuda backend runs on CUDA tensors"),
        ((mu.half(), mu.half()), {"backend": "cuda"}, vk.BackendUnavailableError, "backend 'cuda' is unavailable"),
    ]
    for args, kwargs, exc, msg in bad:
        with pytest.raises(exc) as info:
            vk.reparameterize(*args, **kwargs)
        assert msg in str(info.value), (msg, str(info.value))
        assert str(info.value).startswith("reparameterize:")


def test_backend_choice_call_block_env(monkeypatch):
    mu = torch.zeros(3, 4)
    calls = []
    real = ref_impl.reparameterize

    def spy(*args):
        calls.append("reference")
        return real(*args)

    monkeypatch.setattr(ref_impl, "reparameterize", spy)
    vk.reparameterize(mu, mu, backend="reference")
    assert calls == ["reference"]
    with vk.use_backend("reference"):
        vk.reparameterize(mu, mu)
        with vk.use_backend(None):  # an inner block restores the default choice
            vk.reparameterize(mu, mu)
    assert calls == ["reference"] * 2
    monkeypatch.setenv("VAEKERNELS_BACKEND", "reference")
    vk.reparameterize(mu, mu)
    assert calls == ["reference"] * 3
    monkeypatch.setenv("VAEKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        vk.reparameterize(mu, mu)
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        with vk.use_backend("gpu"):
            pass
