"""Thread safety and determinism, bitwise, of every op (forward + backward) on every kernel backend.

* Four Python threads call an op at once (a barrier before every round, four rounds), each on its
  own inputs and seed: every output and gradient equals, bit for bit, the serial call's on the
  same inputs.  The compiled kernels release the GIL, so on the cpu backend the calls, each with
  its own OpenMP team (inputs above the kernels' serial threshold), really overlap.  Not under the
  Triton interpreter, which is not thread-safe itself (see the skip); Triton on a GPU is tested.
* The same inputs and seed give the same bits run after run (3 runs), reductions included: KL and
  IWAE sums and batch means with [D] and [B, D] priors, whose gradients are column sums, and
  log-densities broadcast over samples.  On a GPU this is the test that atomics would fail.
* The cpu backend's results do not depend on the number of threads; test_gaussian_kl.py and
  test_iwae_bound.py check that for their ops, here for the other ones.
"""
import threading

import pytest
import torch

import vaekernels as vk

from conftest import KERNEL_CASES, require


THREADS = 4
DEADLINE_S = 300  # a join that takes longer is a hang (a deadlock), not a slow machine


def interp(device, backend):
    return device == "cpu" and backend == "triton"


def randn(shape, seed, device, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (shift + scale * torch.randn(shape, generator=g, dtype=torch.float64)).float().to(device)


def sizes(device, backend):
    """(K, B, D): above the cpu kernels' serial threshold (K B D >= 32768: an OpenMP team per call);
    small under the Triton interpreter, whose cost is per program instance."""
    return (2, 6, 9) if interp(device, backend) else (4, 160, 67)


def leaves(ts):
    return [None if t is None else t.detach().requires_grad_(True) for t in ts]


def fwd_bwd(out, ins, seed, device):
    """(out, d(out . g)/d each input) for a fixed upstream gradient g."""
    present = [t for t in ins if t is not None]
    g = randn(out.shape, seed, device, 1.3, 0.2)
    return (out.detach(), *torch.autograd.grad(out, present, g))


# Each case: make(seed, device, backend) -> inputs; run(inputs, backend) -> tensors to compare.
def _make_latent(seed, device, backend, prior=None, lead=()):
    k, b, d = sizes(device, backend)
    shape = (*lead, b, d)
    pm = {None: None, "D": (d,), "BD": (b, d)}[prior]
    return [randn(shape, seed, device, 2.0), randn(shape, seed + 1, device),
            None if pm is None else randn(pm, seed + 2, device, 0.5),
            None if pm is None else randn((b, d) if prior == "D" else pm, seed + 3, device, 0.5)]


def _reparameterize(ins, backend, seed):
    mu, lv = leaves(ins[:2])
    k = 4 if backend != "triton" or ins[0].is_cuda else 2
    return fwd_bwd(vk.reparameterize(mu, lv, k, seed=seed, backend=backend), [mu, lv], seed, mu.device)


def _normal_noise(ins, backend, seed):
    return (vk.normal_noise((3, *ins[0].shape), seed, device=ins[0].device, backend=backend),)


def _kl(reduction, free_bits=0.05):
    def run(ins, backend, seed):
        ts = leaves(ins)
        out = vk.gaussian_kl(*ts, reduction=reduction, free_bits=free_bits, backend=backend)
        return fwd_bwd(out, ts, seed, ins[0].device)
    return run


def _make_iwae(seed, device, backend, prior="D"):
    k, b, d = sizes(device, backend)
    mu, lv = randn((b, d), seed, device), randn((b, d), seed + 1, device, 0.5)
    z = mu + torch.exp(0.5 * lv) * randn((k, b, d), seed + 2, device)
    pm = randn((d,) if prior == "D" else (b, d), seed + 3, device, 0.5)
    plv = randn((d,), seed + 4, device, 0.5)
    return [randn((k, b), seed + 5, device, 3.0, -50.0), z, mu, lv, pm, plv]


def _iwae(reduction, alpha=0.5, stl=False):
    def run(ins, backend, seed):
        ts = leaves(ins)
        bound, w = vk.iwae_bound(*ts, alpha=alpha, stl=stl, reduction=reduction, return_weights=True,
                                 backend=backend)
        present = [t for t in ts if not (stl and t is not None and (t is ts[2] or t is ts[3]))]
        return (w, *fwd_bwd(bound, present, seed, ins[0].device))
    return run


def _make_lme(seed, device, backend):
    k, b, d = sizes(device, backend)
    return [randn((b, k * d), seed, device, 4.0)]


def _lme(dim):
    def run(ins, backend, seed):
        (x,) = leaves(ins)
        return fwd_bwd(vk.log_mean_exp(x, dim, backend=backend), [x], seed, x.device)
    return run


def _make_log_prob(seed, device, backend, mu_shape="D"):
    k, b, d = sizes(device, backend)
    ms = (d,) if mu_shape == "D" else (b, d)
    return [randn((k, b, d), seed, device, 2.0), randn(ms, seed + 1, device), randn(ms, seed + 2, device, 0.5)]


def _log_prob(ins, backend, seed):
    ts = leaves(ins)
    return fwd_bwd(vk.gaussian_log_prob(*ts, backend=backend), ts, seed, ins[0].device)


CASES = {
    "reparameterize": (_make_latent, _reparameterize),
    "normal_noise": (_make_latent, _normal_noise),
    **{f"gaussian_kl-{r}-{p}": ((lambda p: lambda s, dv, be: _make_latent(s, dv, be, p, lead=(2,)))(p), _kl(r))
       for r in ("none", "per_example", "sum", "batchmean") for p in ("D", "BD")},
    "gaussian_kl-none-no_prior-no_free_bits": (_make_latent, _kl("none", 0.0)),
    **{f"iwae_bound-{r}": (_make_iwae, _iwae(r)) for r in ("per_example", "sum", "batchmean")},
    "iwae_bound-stl-BD_prior-alpha0": (lambda s, dv, be: _make_iwae(s, dv, be, "BD"), _iwae("sum", 0.0, True)),
    "iwae_bound-elbo": (_make_iwae, _iwae("batchmean", 1.0)),
    "log_mean_exp-dim0": (_make_lme, _lme(0)),
    "log_mean_exp-dim1": (_make_lme, _lme(1)),
    "gaussian_log_prob-D": (_make_log_prob, _log_prob),
    "gaussian_log_prob-BD": (lambda s, dv, be: _make_log_prob(s, dv, be, "BD"), _log_prob),
}


def assert_bitwise(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: result {i}"
        assert torch.equal(a, b), f"{what}: result {i} differs in {int((a != b).sum())} of {a.numel()} elements"


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("case", list(CASES))
def test_repeated_calls_are_bitwise_identical(case, device, backend):
    require(backend, device)
    make, run = CASES[case]
    ins = make(10, device, backend)
    first = run(ins, backend, 77)
    for repeat in range(2):
        assert_bitwise(run(ins, backend, 77), first, f"{case} repeat {repeat + 1}")


@pytest.mark.parametrize("device,backend", KERNEL_CASES)
@pytest.mark.parametrize("case", list(CASES))
def test_threads_match_serial_calls(case, device, backend):
    """4 threads x several rounds, a barrier before each: thread i's results are bitwise those of a
    serial call on its inputs (thread-local state shared by mistake would mix threads' numbers)."""
    require(backend, device)
    if interp(device, backend):
        # Not a vaekernels limitation: the interpreter swaps triton.language's builtins for its own
        # while it runs a kernel and swaps them back after, so a second thread's kernel fails
        # ("InterpreterError: ... `_semantic` argument must be provided outside of JIT functions").
        # The same kernels compiled on a GPU are tested (cuda-triton).
        pytest.skip("the Triton interpreter is not thread-safe (it patches triton.language while a kernel runs)")
    make, run = CASES[case]
    rounds = 4
    inputs = [make(100 + 10 * i, device, backend) for i in range(THREADS)]
    serial = [run(ins, backend, 500 + i) for i, ins in enumerate(inputs)]
    barrier = threading.Barrier(THREADS, timeout=DEADLINE_S)
    results = [[] for _ in range(THREADS)]
    errors = []

    def worker(i):
        try:
            for _ in range(rounds):
                barrier.wait()
                out = run(inputs[i], backend, 500 + i)
                if device == "cuda":
                    torch.cuda.synchronize()
                results[i].append(out)
        except BaseException as exc:  # noqa: BLE001 -- reported below, with the thread's index
            errors.append((i, exc))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert not any(t.is_alive() for t in threads), f"{case}: threads still running after {DEADLINE_S} s"
    assert not errors, f"{case}: thread {errors[0][0]} raised {errors[0][1]!r}"
    for i in range(THREADS):
        assert len(results[i]) == rounds
        for r, got in enumerate(results[i]):
            assert_bitwise(got, serial[i], f"{case} thread {i} round {r}")


# Thread-count independence of the ops that test_gaussian_kl.py / test_iwae_bound.py do not cover.
@pytest.mark.parametrize("case", ["reparameterize", "normal_noise", "log_mean_exp-dim0", "log_mean_exp-dim1",
                                  "gaussian_log_prob-D", "gaussian_log_prob-BD"])
def test_cpu_results_do_not_depend_on_thread_count(case):
    require("cpu", "cpu")
    make, run = CASES[case]
    ins = make(30, "cpu", "cpu")
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(run(ins, "cpu", 9))
    finally:
        torch.set_num_threads(before)
    for threads, out in zip((2, 3), outs[1:]):
        assert_bitwise(out, outs[0], f"{case} with {threads} threads")
