"""The CPU speed targets of issue 9, each as ratios measured side by side, round by round.

pytest-benchmark times one provider after another, so on a shared machine whose memory bandwidth
drifts within a minute (here: the same kernel's pass over 268 MB moved between 18 and 38 ms from
one process to the next) a case's ratio mixes two different machines.  Here every round times each
provider once, in a rotated order, on the same inputs; the ratio of a round is taken within the
round, and the table gives the median ratio over the rounds with its spread.

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456 \\
        PYTHONPATH=. python benchmarks/targets.py [--rounds N] [--md FILE]        (make targets)

Forward + backward, float32, the targets' sizes; the naive code is the benchmark suite's.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vaekernels as vk  # noqa: E402
from bench_gaussian_kl import naive as kl_naive  # noqa: E402
from bench_iwae_bound import eager as iwae_eager  # noqa: E402
from bench_log_mean_exp import eager as lme_eager  # noqa: E402
from bench_reparameterize import naive as rep_naive  # noqa: E402

SMALL, LARGE = (128, 32, 1), (4096, 256, 64)


def reparameterize_case(b, d, k, g):
    mu, lv = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g).clamp(-5, 3)
    grad = torch.randn(k, b, d, generator=g)
    return (mu, lv), grad, (lambda m, l: rep_naive(m, l, k)), (lambda m, l: vk.reparameterize(m, l, k, backend="cpu"))


def gaussian_kl_case(b, d, k, g):
    mu, lv = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g).clamp(-5, 3)
    return (mu, lv), torch.randn(b, generator=g), (lambda m, l: kl_naive(m, l, None, None)), (
        lambda m, l: vk.gaussian_kl(m, l, backend="cpu"))


def gaussian_kl_prior_case(b, d, k, g):
    mu, lv = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g).clamp(-5, 3)
    pm, plv = torch.randn(d, generator=g), torch.randn(d, generator=g).clamp(-3, 3)
    return (mu, lv, pm, plv), torch.randn(b, generator=g), kl_naive, (
        lambda m, l, pm, plv: vk.gaussian_kl(m, l, pm, plv, backend="cpu"))


def iwae_case(b, d, k, g):
    mu, lv = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g).clamp(-3, 3)
    z = mu + torch.exp(0.5 * lv) * torch.randn(k, b, d, generator=g)
    lpx = 10 * torch.randn(k, b, generator=g) - 100
    return (lpx, z, mu, lv), None, iwae_eager, (
        lambda lpx, z, mu, lv: vk.iwae_bound(lpx, z, mu, lv, reduction="sum", backend="cpu"))


def log_mean_exp_case(b, d, k, g):
    x = torch.randn(b * d, k, generator=g)
    return (x,), torch.randn(b * d, generator=g), (lambda x: lme_eager(x, -1)), (
        lambda x: vk.log_mean_exp(x, -1, backend="cpu"))


# (name, case, size, targets: (x eager, x compile) or None)
CASES = [
    ("reparameterize", reparameterize_case, LARGE, (8.0, 30.0)),
    ("gaussian_kl", gaussian_kl_case, (4096, 256, 1), (6.0, 1.5)),
    ("iwae_bound", iwae_case, LARGE, (12.0, 2.0)),
    ("reparameterize", reparameterize_case, SMALL, (1.0, None)),
    ("gaussian_kl", gaussian_kl_case, SMALL, (1.0, None)),
    ("gaussian_kl (learned prior)", gaussian_kl_prior_case, SMALL, (1.0, None)),
    ("iwae_bound", iwae_case, SMALL, (1.0, None)),
    ("log_mean_exp", log_mean_exp_case, SMALL, (1.0, None)),
]


def fwd_bwd(f, inputs, grad, reps=1):
    """Seconds per forward + backward, the mean of ``reps`` calls, each on fresh leaves of ``inputs``
    (made outside the timing)."""
    total = 0.0
    for _ in range(reps):
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        t0 = time.perf_counter()
        out = f(*leaves)
        out.backward(grad) if grad is not None else out.backward()
        total += time.perf_counter() - t0
    return total / reps


def measure(case, size, rounds):
    g = torch.Generator().manual_seed(0)
    inputs, grad, naive, ours = case(*size, g)
    compiled = torch.compile(naive)
    providers = {"eager": naive, "compile": compiled, "vk_cpu": ours}
    for f in providers.values():  # warm-up: compiles, first-call costs, the allocator's pages
        fwd_bwd(f, inputs, grad)
    # A round times each provider over at least ~20 ms (several calls of a fast case: one call of
    # 0.1 ms jitters by 2x here).
    reps = {n: max(1, round(0.02 / fwd_bwd(f, inputs, grad, 3))) for n, f in providers.items()}
    names = list(providers)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % 3:] + names[:r % 3]:  # rotated order: no provider always first
            times[n].append(fwd_bwd(providers[n], inputs, grad, reps[n]))
    ratios = {n: [times[n][r] / times["vk_cpu"][r] for r in range(rounds)] for n in ("eager", "compile")}
    return times, ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--md", help="write the markdown table here too")
    ap.add_argument("--quick", action="store_true", help="the small cases, 2 rounds: a smoke test (make test)")
    ap.add_argument("--only", metavar="OP", help="only the cases of this op, e.g. reparameterize")
    args = ap.parse_args()
    cases = [c for c in CASES if c[2] == SMALL] if args.quick else CASES
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
        if not cases:
            ap.error(f"--only: no case of op {args.only!r}; the ops: {sorted({c[0] for c in CASES})}")
    if args.quick:
        args.rounds = 2
    steady = os.environ.get("MALLOC_MMAP_THRESHOLD_") == "1073741824"
    lines = [f"Targets of issue 9, {datetime.date.today()}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"{'steady-state' if steady else 'DEFAULT (not steady-state!)'} allocator, {args.rounds} interleaved "
             "rounds of forward + backward; ratio = baseline / vaekernels within a round, median [min - max].", "",
             "| op | (B, D, K) | vk ms | eager ms | compile ms | × eager | × compile | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, case, size, target in cases:
        torch._dynamo.reset()
        times, ratios = measure(case, size, args.rounds)
        med = {n: 1e3 * statistics.median(v) for n, v in times.items()}
        r = {n: (statistics.median(v), min(v), max(v)) for n, v in ratios.items()}
        met = r["eager"][0] >= target[0] and (target[1] is None or r["compile"][0] >= target[1])
        want = f"≥ {target[0]:g}× eager" + (f", ≥ {target[1]:g}× compile" if target[1] else "")
        lines.append(f"| {name} | {size} | {med['vk_cpu']:.3f} | {med['eager']:.3f} | {med['compile']:.3f} | "
                     f"{r['eager'][0]:.2f} [{r['eager'][1]:.2f} - {r['eager'][2]:.2f}] | "
                     f"{r['compile'][0]:.2f} [{r['compile'][1]:.2f} - {r['compile'][2]:.2f}] | {want} | "
                     f"{'yes' if met else 'no'} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
