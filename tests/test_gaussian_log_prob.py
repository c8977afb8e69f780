"""gaussian_log_prob on every backend against float64 torch.distributions.Normal(...).log_prob summed
over the last dim: broadcasting over sample dims, gradients, custom-op, compile, memory and input checks."""
import math

import pytest
import torch
from torch.distributions import Normal

import vaekernels as vk

from conftest import ALL_CASES, KERNEL_CASES, TOL, assert_within, dtypes_for, require


ULP8 = 8 * 2.0**-24  # float32 arithmetic: 8 ulp of the terms' size (measured at about 1)
# (z shape, mu shape): mu, logvar broadcast over z's leading sample dims
# The last: 35 blocks of 32 examples, so the cpu forward walks all 10 samples of a task, 4 + 4 + 2
# a step (kSamplesAtOnce, csrc/cpu/common.h).
CASES = [((7,), (7,)), ((5, 3, 33), (3, 33)), ((5, 3, 33), (33,)), ((2, 3, 4, 9), (4, 9)), ((40, 2, 5), (2, 5)),
         ((10, 1100, 7), (1100, 7))]


def randn(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def make(z_shape, mu_shape, dtype, device, seed=0):
    mu, lv = randn(mu_shape, seed + 1), randn(mu_shape, seed + 2, 0.7)
    z = mu + torch.exp(0.5 * lv) * randn(z_shape, seed + 3)
    return [t.to(dtype).to(device) for t in (z, mu, lv)]


def oracle(z, mu, lv):
    return Normal(mu, torch.exp(0.5 * lv)).log_prob(z).sum(-1)


def check(ins, backend, naive):
    z, mu, lv = ins
    leaves = [t.clone().requires_grad_(True) for t in ins]
    out = vk.gaussian_log_prob(*leaves, backend=backend)
    cdt = torch.float64 if z.dtype == torch.float64 else torch.float32
    assert out.dtype == cdt and out.shape == z.shape[:-1]
    g = randn(out.shape, 5) + 0.5
    out.backward(g.to(out))
    ref_in = [t.detach().cpu().double().requires_grad_(True) for t in ins]
    ref = oracle(*ref_in)
    ref.backward(g)
    zd, md, ld = (t.detach() for t in ref_in)
    iv, u = torch.exp(-ld), zd - md
    rtol = 1e-12 if z.dtype == torch.float64 else ULP8
    terms = math.log(2 * math.pi) + ld.abs() + u * u * iv  # [..., D]
    assert_within(out, ref.detach(), rtol * terms.sum(-1) + 1e-12, f"{z.dtype} value")
    # gradients: float32 arithmetic on |terms|, then one rounding to the dtype (each naive autograd
    # path rounds its own part, as large as the terms)
    ft = TOL[z.dtype]
    extra = ft["rtol"] if naive else 0.0
    cu = g.unsqueeze(-1).abs() * u.abs() * iv
    lead = tuple(range(z.dim() - mu.dim()))

    def red(t):
        return t.sum(lead) if lead else t

    bounds = [cu * (2 * rtol + extra), red(cu) * (2 * rtol + extra), red(g.unsqueeze(-1).abs() * 0.5 * (1 + u * u * iv)) * (2 * rtol + extra)]
    for leaf, r, b, name in zip(leaves, ref_in, bounds, ("z", "mu", "logvar")):
        assert leaf.grad.dtype == leaf.dtype
        assert_within(leaf.grad, r.grad, b + ft["rtol"] * r.grad.abs() + ft["atol"], f"{z.dtype} d{name}")


@pytest.mark.parametrize("device,backend", ALL_CASES)
@pytest.mark.parametrize("z_shape,mu_shape", CASES, ids=str)
def test_matches_float64_oracle(device, backend, z_shape, mu_shape):
    require(backend, device)
    for dtype in dtypes_for(backend, device):
        check(make(z_shape, mu_shape, dtype, device), backend, naive=backend == "reference")


def test_cpu_backward_sample_steps():
    """The cpu backward takes 4 samples a step in one pass over the dims (kBwdSamples,
    csrc/cpu/common.h): 11 samples = 4 + 4 + 3, D = 37 = two 16-float vectors and a tail, 35 blocks
    of 32 examples."""
    require("cpu", "cpu")
    for dtype in (torch.float32, torch.float64):
        check(make((11, 1100, 37), (1100, 37), dtype, "cpu", seed=6), "cpu", naive=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cpu_backward_streams_large_grad_z(dtype):
    """grad_z of at least build_info()["stream_min_bytes"] (32 MiB) is written with streaming stores
    (plain ones where a row is not aligned: rows of 4000 bytes): the output and every gradient
    bitwise what calls on slices of the batch under the threshold give.  (A slice of fewer than 32
    blocks of 32 examples splits its samples and adds the partial sums of mu's and logvar's
    gradients in another order: there only the output and grad_z are compared.)"""
    from vaekernels import backends
    require("cpu", "cpu")
    size = torch.empty(0, dtype=dtype).element_size()
    s, d, whole_blocks = 8, 4000 // size, 1024
    assert s * whole_blocks * d * size < backends.module("cpu").build_info()["stream_min_bytes"]
    n = 2 * whole_blocks + 37
    ins = make((s, n, d), (n, d), dtype, "cpu", seed=9)
    g = randn((s, n), 10).to(ins[0].dtype if dtype == torch.float64 else torch.float32)

    def run(z, mu, lv, g):
        leaves = [t.clone().requires_grad_(True) for t in (z, mu, lv)]
        out = vk.gaussian_log_prob(*leaves, backend="cpu")
        out.backward(g)
        return [out.detach()] + [t.grad for t in leaves]

    whole = run(*ins, g)
    for n0 in (0, whole_blocks, 2 * whole_blocks):
        sl = slice(n0, min(n, n0 + whole_blocks))
        part = run(ins[0][:, sl].contiguous(), ins[1][sl], ins[2][sl], g[:, sl])
        assert torch.equal(part[0], whole[0][:, sl]) and torch.equal(part[1], whole[1][:, sl]), n0
        if sl.stop - sl.start == whole_blocks:
            assert torch.equal(part[2], whole[2][sl]) and torch.equal(part[3], whole[3][sl]), n0


@pytest.mark.parametrize("device,backend", ALL_CASES)
def test_non_contiguous_and_empty(device, backend):
    require(backend, device)
    z, mu, lv = make((6, 4, 5), (4, 5), torch.float32, device)
    zt = z.transpose(0, 1).contiguous().transpose(0, 1)
    assert not zt.is_contiguous()
    torch.testing.assert_close(vk.gaussian_log_prob(zt, mu.t().contiguous().t(), lv, backend=backend),
                               vk.gaussian_log_prob(z, mu, lv, backend=backend))
    for zs, ms in (((0, 4, 5), (4, 5)), ((3, 0, 5), (0, 5)), ((3, 4, 0), (4, 0))):
        z, mu, lv = (t.requires_grad_(True) for t in make(zs, ms, torch.float32, device))
        out = vk.gaussian_log_prob(z, mu, lv, backend=backend)
        assert out.shape == zs[:-1]
        out.sum().backward()
        assert torch.equal(mu.grad, torch.zeros_like(mu)) and lv.grad.shape == lv.shape


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    require(backend, "cpu")
    for zs, ms in (((3, 2, 4), (2, 4)), ((3, 2, 4), (4,))):
        ins = [t.requires_grad_(True) for t in make(zs, ms, torch.float64, "cpu")]
        assert torch.autograd.gradcheck(lambda *a: vk.gaussian_log_prob(*a, backend=backend), ins)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_opcheck(device, backend):
    require(backend, device)
    z, mu, lv = (t.requires_grad_(True) for t in make((3, 4, 5), (4, 5), torch.float32, device))
    torch.library.opcheck(torch.ops.vaekernels.gaussian_log_prob.default, (z, mu, lv, backend))
    torch.library.opcheck(torch.ops.vaekernels.gaussian_log_prob_backward.default,
                          (torch.randn(3, 4, device=device), z.detach(), mu.detach(), lv.detach(), backend))


@pytest.mark.parametrize("device,backend", [c for c in KERNEL_CASES if c.values[1] != "triton" or c.values[0] == "cuda"])
def test_compile_fullgraph_matches_eager(device, backend):
    require(backend, device)
    torch._dynamo.reset()

    def step(z, mu, lv):
        return (vk.gaussian_log_prob(z, mu, lv, backend=backend) - vk.gaussian_log_prob(z, 0 * mu, 0 * lv,
                                                                                            backend=backend)).mean()

    ins = make((4, 6, 8), (6, 8), torch.float32, device)
    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        leaves = [t.clone().requires_grad_(True) for t in ins]
        out = fn(*leaves)
        out.backward()
        results.append((out.detach(), *(t.grad for t in leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_backward_keeps_inputs_only(device, backend):
    require(backend, device)
    leaves = [t.requires_grad_(True) for t in make((8, 16, 32), (16, 32), torch.float32, device)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        vk.gaussian_log_prob(*leaves, backend=backend)
    assert {t.data_ptr() for t in saved} <= {t.data_ptr() for t in leaves}


def test_bad_inputs_raise_clear_errors():
    z, mu, lv = make((3, 4, 5), (4, 5), torch.float32, "cpu")
    bad = [
        ((z, mu[:, :4], lv[:, :4]), ValueError, "z has shape (3, 4, 5) but mu has (4, 4); mu and logvar must be z's trailing"),
        ((z[0, 0], mu, lv), ValueError, "z has shape (5,) but mu has (4, 5)"),
        ((z, mu, lv[0]), ValueError, "logvar has shape (5,) but mu has (4, 5)"),
        ((z.double(), mu, lv), TypeError, "z has dtype torch.float64 but mu has torch.float32"),
        ((z, mu[0, 0], lv[0, 0]), ValueError, "mu must have at least 1 dimension(s)"),
        ((z, mu.int(), lv), TypeError, "mu must be a floating tensor"),
    ]
    for args, exc, msg in bad:
        with pytest.raises(exc) as info:
            vk.gaussian_log_prob(*args)
        assert msg in str(info.value), (msg, str(info.value))
        assert str(info.value).startswith("gaussian_log_prob:")
