"""One full VAE training step -- zero_grad, loss, backward, Adam step -- of ``vk.nn.VAE`` with the
fused ops (``vk_<backend>``) against the same model on the naive twin (``backend="reference"``:
plain torch, eager) and that naive model under torch.compile.

The model: x ``[B, 256]`` binary, MLP encoder 256 -> 256 -> (mu, logvar) ``[B, D]``, decoder
D -> 256 -> 256 logits, Bernoulli likelihood, standard prior.  The loss is the ELBO for K = 1 and
the IWAE bound with K samples otherwise, (B, D, K) from benchmarks/conftest.SIZES; every provider
starts from the same weights.  The byte floor recorded is that of the latent ops alone (noise and
bound over the [K, B, D] samples), a lower bound for the step, not its roofline.
"""
import pytest
import torch
from torch import nn

import vaekernels as vk
from conftest import DEVICE, SIZES, compiled, providers, run, saved_bytes

X_DIM, HIDDEN = 256, 256


def make_model(d: int) -> vk.nn.VAE:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.ReLU())
    decoder = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, X_DIM))
    return vk.nn.VAE(encoder, decoder, d).to(DEVICE)


# small and typical: at the large size (K B = 262144 decoder rows) the decoder's matmuls take
# seconds a step and hide the latent ops, whose own large-size figures are in the op benchmarks.
@pytest.mark.parametrize("size", ["small", "typical"])
@pytest.mark.parametrize("provider", [p for p in providers(DEVICE) if p != "distributions"])
def bench_vae_step(benchmark, provider, size):
    b, d, k = SIZES[size]
    model = make_model(d)
    model.backend = "reference" if provider in ("eager", "compile") else provider[3:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs = [(torch.rand(b, X_DIM, device=DEVICE) < 0.3).float() for _ in range(3)]

    def loss_fn(x):
        return (model(x) if k == 1 else model(x, k)).total

    compile_s = None
    if provider == "compile":
        loss_fn, compile_s = compiled(loss_fn, lambda: (xs[0],), backward=True)
        model.zero_grad(set_to_none=True)

    state = {"i": 0}

    def setup():
        state["i"] += 1
        return (xs[state["i"] % len(xs)],)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        opt.step()

    n = b * d
    floor = (2 * n + k * n) * 4 + (k * n + 3 * n) * 4  # reparameterize fwd + bwd (the least of the latent ops)
    kept = saved_bytes(lambda: loss_fn(xs[0]))
    run(benchmark, step, setup, floor_bytes=floor, kept_bytes=kept, compile_s=compile_s, op="vae_step",
        provider=provider, mode="fwd+bwd", size=size, shape=f"B={b} D={d} K={k}",
        variant="ELBO" if k == 1 else f"IWAE K={k}")

