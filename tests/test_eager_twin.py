"""Every op has two paths to the same kernels: the torch.library custom op (under torch.compile,
FakeTensor, functorch, tensor subclasses) and, for plain eager calls, its autograd.Function twin
(ops/_common.eager_twin), which skips the custom-op dispatch.  They must agree bit for bit, in
values and gradients, and the dispatch must pick the right one."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from vaekernels.ops import gaussian_kl, gaussian_log_prob, iwae_bound, log_mean_exp, reparameterize

from conftest import KERNEL_CASES, require


def _cases(device):
    """(op module, custom op, inputs builder -> (differentiable leaves, full argument list))."""
    g = torch.Generator().manual_seed(7)

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    def leaves(*ts):
        return [t.clone().requires_grad_(True) for t in ts]

    def rep(backend):
        # |mu| >> sigma: the twin's cpu backward regenerates eps as the custom op does (reading eps
        # back from z instead, where that is exact enough, is tested in test_reparameterize).
        mu, lv = leaves(r(5, 9, scale=100.0), r(5, 9) - 4)
        return [mu, lv], [mu, lv, torch.tensor(31, device=device), 3, backend]

    def kl(backend):
        mu, lv, pm, plv = leaves(r(6, 10), r(6, 10), r(10), r(10))
        return [mu, lv, pm, plv], [mu, lv, pm, plv, "sum", 0.1, backend]

    def iwae(backend):
        lpx, z, mu, lv, pm = leaves(r(4, 3, scale=3.0), r(4, 3, 7), r(3, 7), r(3, 7), r(7))
        return [lpx, z, mu, lv, pm], [lpx, z, mu, lv, pm, None, 0.5, False, backend]

    def lme(backend):
        (x,) = leaves(r(3, 40, 5, scale=4.0))
        return [x], [x, 1, backend]

    def glp(backend):
        z, mu, lv = leaves(r(4, 3, 7), r(3, 7), r(3, 7))
        return [z, mu, lv], [z, mu, lv, backend]

    return [(reparameterize, reparameterize.reparameterize, rep), (gaussian_kl, gaussian_kl.gaussian_kl, kl),
            (iwae_bound, iwae_bound.iwae_bound, iwae), (log_mean_exp, log_mean_exp.log_mean_exp, lme),
            (gaussian_log_prob, gaussian_log_prob.gaussian_log_prob, glp)]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("op_index", range(5), ids=["reparameterize", "gaussian_kl", "iwae_bound", "log_mean_exp",
                                                   "gaussian_log_prob"])
@pytest.mark.parametrize("device,backend", KERNEL_CASES)
def test_eager_twin_and_custom_op_agree_bitwise(device, backend, op_index):
    require(backend, device)
    results, grad_fns = [], []
    for twin in (True, False):
        module, custom_op, build = _cases(device)[op_index]  # the same inputs for both
        fn = module.run if twin else custom_op
        ls, args = build(backend)
        out = _first(fn(*args))
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(device)  # non-unit gradient
        grads = torch.autograd.grad(out, ls, g)
        results.append((out.detach(), *grads))
        grad_fns.append(type(out.grad_fn).__name__)
    assert grad_fns[0] != grad_fns[1], f"both calls took the same path ({grad_fns[0]})"
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("op_index", range(5))
def test_dispatch_mode_takes_the_custom_op(op_index):
    """Under FakeTensor (a dispatch mode: what torch.compile traces with) run() uses the custom op,
    whose fake implementation gives the shapes without running a kernel."""
    module, custom_op, build = _cases("cpu")[op_index]
    _, args = build("cpu")
    expected = _first(custom_op(*args)).shape
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in plain]
        got = _first(module.run(*fake)).shape
    assert got == expected
