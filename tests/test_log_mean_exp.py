"""log_mean_exp on every backend against float64 torch.logsumexp - log n: every dim, -inf / +inf /
NaN, a +-1e4 spread, autograd, custom-op, compile and input checks."""
import math

import pytest
import torch

import vaekernels as vk

from conftest import ALL_CASES, KERNEL_CASES, TOL, assert_within, dtypes_for, require


ULP8 = 8 * 2.0**-24  # float32 arithmetic: 8 ulp of the terms' size (measured at about 1)
INF = math.inf


def randn(shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def oracle(x, dim):
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def check(x, dim, backend, g_seed=1):
    """Value and gradient (non-unit upstream gradient) against float64 autograd of the oracle."""
    leaf = x.clone().requires_grad_(True)
    out = vk.log_mean_exp(leaf, dim, backend=backend)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert out.dtype == cdt and out.shape == tuple(s for i, s in enumerate(x.shape) if i != dim % x.dim())
    g = randn(out.shape, g_seed, 1.0)
    out.backward(g.to(out))
    ref_x = x.detach().cpu().double().requires_grad_(True)
    ref = oracle(ref_x, dim)
    ref.backward(g)
    scale = x.detach().cpu().double().abs().amax(dim) + math.log(x.shape[dim]) + 1  # |x - max| terms, log n
    rtol = 1e-12 if x.dtype == torch.float64 else ULP8
    assert_within(out, ref.detach(), rtol * scale, f"{x.dtype} value")
    # d out / d x_j = softmax_j: relative error about that of exp(x_j - out), i.e. |x_j - out| * rtol
    gabs = g.abs().unsqueeze(dim)
    soft = ref_x.grad.abs() / gabs.clamp(min=1e-300)
    fi = torch.finfo(x.dtype)  # a gradient stored in float16 may be subnormal: its spacing there
    bound = gabs * soft * 4 * rtol * scale.unsqueeze(dim) + TOL[x.dtype]["rtol"] * ref_x.grad.abs() + fi.smallest_normal * fi.eps
    assert_within(leaf.grad, ref_x.grad, bound, f"{x.dtype} grad")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("shape,dim", [((7,), 0), ((5, 33), 1), ((5, 33), 0), ((3, 70, 4), 1), ((2, 3, 5), -1),
                                       ((300,), 0), ((37, 64), 1), ((70, 40), 1), ((21, 256), 1), ((19, 257), 1),
                                       ((300, 8), 1), ((70, 31), 1), ((2100, 1), 1)],
                         ids=str)
def test_matches_float64_oracle(device, backend, shape, dim):
    require(backend, device)
    for dtype in dtypes_for(backend, device):
        check(randn(shape, len(shape) + dim).to(dtype).to(device), dim, backend)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_huge_spread_and_long_rows(device, backend):
    require(backend, device)
    check(randn((3, 40), 2, 1e4).float().to(device), 1, backend)  # exp over/underflows float32 everywhere
    check(randn((2, 5000), 3).float().to(device), 1, backend)
    check(randn((5000, 3), 4).float().to(device), 0, backend)


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_all_minus_inf_is_minus_inf_with_zero_gradient(device, backend):
    """All -inf along dim: value -inf and gradient 0 (torch.logsumexp's gradient is NaN there);
    some -inf: those get gradient 0; +inf and NaN propagate."""
    require(backend, device)
    for dim in (0, 1):
        x = torch.tensor([[-INF, -INF, -INF], [1.0, -INF, 2.0], [INF, 1.0, 2.0], [math.nan, 1.0, 2.0]])
        x = (x if dim == 1 else x.t().contiguous()).to(device).requires_grad_(True)
        out = vk.log_mean_exp(x, dim, backend=backend)
        out.sum().backward()
        grad = x.grad if dim == 1 else x.grad.t()
        assert out[0].item() == -INF and out[2].item() == INF and math.isnan(out[3].item())
        torch.testing.assert_close(out[1].cpu().double(), torch.logsumexp(torch.tensor([1.0, 2.0]).double(), 0) - math.log(3))
        assert torch.equal(grad[0].cpu(), torch.zeros(3))
        assert grad[1, 1].item() == 0.0 and abs(grad[1].sum().item() - 1) < 1e-6
        assert math.isnan(grad[2, 0].item()) and bool(torch.isnan(grad[3]).all())


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("n,dim", [(40, 1), (64, 1), (256, 1), (3000, 1), (40, 0)], ids=str)
def test_special_values_in_long_rows_and_column_blocks(device, backend, n, dim):
    """The -inf / +inf / NaN rules where the CPU kernels fold lanes (rows of at least 32, one
    chunk or several; up to 256 whole blocks of 4 / 8 / 16 rows reduced together, the rows left
    one by one) and where they walk blocks of 32 columns (dim 0; the last block partial): the
    special value anywhere in the row, NaN beside +inf still NaN."""
    require(backend, device)
    # dim 0: three blocks of 32 columns, the last partial; rows up to 256: two tiles of 32 rows
    # (blocks of rows) and 6 rows left; longer rows (chunks, one by one): 8 rows.
    rows = 70 if dim == 0 or n <= 256 else 8
    bases = (0, 37) if rows == 70 else (0,)  # in the first row block, and in the middle of a later one
    x = randn((rows, n), 11).float()
    special = []
    for r in bases:
        x[r] = -INF                                   # all -inf
        x[r + 1, n // 2] = INF                        # one +inf
        x[r + 2, n - 1] = math.nan                    # one NaN, at the end (a tail lane)
        x[r + 3, 0], x[r + 3, n - 1] = math.nan, INF  # NaN and +inf: NaN
        x[r + 4, n // 3] = INF
        x[r + 4, n - 2] = math.nan                    # +inf first, then NaN: NaN
        x[r + 5, : n // 2] = -INF                     # half -inf: finite
        special += [r, r + 1, r + 2, r + 3, r + 4]
    x[rows - 1, 5] = INF                              # the last row (dim 0: in the partial block)
    xin = (x if dim == 1 else x.t().contiguous()).to(device)
    out = vk.log_mean_exp(xin, dim, backend=backend).cpu()
    for r in bases:
        assert out[r].item() == -INF and out[r + 1].item() == INF
        assert math.isnan(out[r + 2].item()) and math.isnan(out[r + 3].item()) and math.isnan(out[r + 4].item())
    assert out[rows - 1].item() == INF
    finite = [r for r in range(rows - 1) if r not in special]
    ref = oracle(x.double(), 1)[finite]
    assert_within(out[finite], ref, ULP8 * (x[finite].double().abs().amax(1) + math.log(n) + 1), "finite rows")


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_keepdim_negative_dim_and_non_contiguous(device, backend):
    require(backend, device)
    x = randn((4, 6, 5), 9).float().to(device)
    out = vk.log_mean_exp(x, -2, keepdim=True, backend=backend)
    assert out.shape == (4, 1, 5)
    xt = x.transpose(0, 2)
    assert not xt.is_contiguous()
    torch.testing.assert_close(vk.log_mean_exp(xt, 1, backend=backend), vk.log_mean_exp(xt.contiguous(), 1, backend=backend))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    require(backend, "cpu")
    x = randn((3, 4, 5), 1, 1.0).requires_grad_(True)
    for dim in (0, 1, 2):
        assert torch.autograd.gradcheck(lambda t: vk.log_mean_exp(t, dim, backend=backend), (x,))


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_opcheck(device, backend):
    require(backend, device)
    x = randn((3, 4, 5), 1).float().to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.vaekernels.log_mean_exp.default, (x, 1, backend))
    out = torch.ops.vaekernels.log_mean_exp(x, 1, backend)
    torch.library.opcheck(torch.ops.vaekernels.log_mean_exp_backward.default,
                          (torch.randn_like(out), x.detach(), out.detach(), 1, backend))


@pytest.mark.parametrize("device,backend", [c for c in KERNEL_CASES if c.values[1] != "triton" or c.values[0] == "cuda"])
def test_compile_fullgraph_matches_eager(device, backend):
    require(backend, device)
    torch._dynamo.reset()

    def step(x):
        return (vk.log_mean_exp(x.tanh() * 5, 0, backend=backend) * torch.arange(3, device=x.device)).sum()

    x = randn((6, 3), 2).float().to(device)
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf)
        out.backward()
        results.append((out.detach(), leaf.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(3, 4)
    bad = [
        ((x, 2), {}, ValueError, "dim must be in [-2, 1] for shape (3, 4), got 2"),
        ((x, 1.0), {}, TypeError, "dim must be an int"),
        ((torch.zeros(3, 0), 1), {}, ValueError, "x has size 0 along dim 1"),
        ((torch.zeros(()), 0), {}, ValueError, "x must have at least 1 dimension(s)"),
        ((x.long(), 0), {}, TypeError, "x must be a floating tensor"),
        ((x, 0), {"keepdim": 1}, TypeError, "keepdim must be a bool"),
        ((x, 0), {"backend": "cuda"}, vk.BackendUnavailableError, "backend 'cuda' is unavailable"),
    ]
    for args, kwargs, exc, msg in bad:
        with pytest.raises(exc) as info:
            vk.log_mean_exp(*args, **kwargs)
        assert msg in str(info.value), (msg, str(info.value))
        assert str(info.value).startswith("log_mean_exp:")
