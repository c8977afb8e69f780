"""What only a GPU shows: more than 2^31 elements, and CUDA-graph capture and replay.
(Every other test runs the cuda and triton backends on a GPU too, through conftest's cases.)"""
import pytest
import torch

import vaekernels as vk
from vaekernels.reference import random as ref_random

from conftest import gpu, require

pytestmark = [pytest.mark.gpu, gpu]
GPU_BACKENDS = ["cuda", "triton"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_2_to_the_31_elements_bf16(backend):
    """K*B*D = 2^31 + 5 in bfloat16: int64 offsets everywhere.  The tail (elements past 2^31) is
    checked against the reference stream; mu = 0, logvar = 0 so z is the noise itself."""
    require(backend, "cuda", torch.bfloat16)
    n = 2**31 + 5
    free, _ = torch.cuda.mem_get_info()
    if free < 5 * n * 2:
        pytest.skip(f"needs {5 * n * 2 / 2**30:.0f} GiB of free GPU memory")
    mu = torch.zeros(n, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    lv = torch.zeros(n, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    z = vk.reparameterize(mu, lv, seed=99, backend=backend)
    tail = 4099
    ref = ref_random.normal(99, tail, start=n - tail).to(torch.bfloat16)
    torch.testing.assert_close(z[-tail:].cpu(), ref, rtol=1e-2, atol=1e-2)
    head = ref_random.normal(99, tail).to(torch.bfloat16)
    torch.testing.assert_close(z[:tail].cpu(), head, rtol=1e-2, atol=1e-2)
    z.backward(torch.ones_like(z))
    assert bool((mu.grad[-tail:] == 1).all())
    torch.testing.assert_close(lv.grad[-tail:].float().cpu(), 0.5 * ref.float(), rtol=1e-2, atol=1e-2)
    del z, mu, lv
    torch.cuda.empty_cache()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_replay_draws_new_noise_and_matches_eager(backend):
    require(backend, "cuda")
    torch.manual_seed(0)
    mu = torch.randn(64, 32, device="cuda", requires_grad=True)
    lv = torch.randn(64, 32, device="cuda", requires_grad=True)
    seed = torch.zeros((), dtype=torch.int64, device="cuda")

    def step(drawn: bool):
        mu.grad = lv.grad = None
        z = vk.reparameterize(mu, lv, 4, backend=backend) if drawn else vk.reparameterize(mu, lv, 4, seed=seed, backend=backend)
        loss = (z.tanh() * 1.5).sum()
        loss.backward()
        return z.detach()

    for drawn in (False, True):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph
                step(drawn)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        mu.grad = lv.grad = None
        with torch.cuda.graph(graph):
            z_static = step(drawn)
        outs = []
        for s in (11, 12):
            seed.fill_(s)
            graph.replay()
            torch.cuda.synchronize()
            outs.append((z_static.clone(), mu.grad.clone(), lv.grad.clone()))
        assert not torch.equal(outs[0][0], outs[1][0])  # a new draw at each replay
        if not drawn:  # the same seeds in eager give the same samples and gradients
            for s, (z, gm, gl) in zip((11, 12), outs):
                seed.fill_(s)
                z_eager = step(False)
                torch.testing.assert_close(z, z_eager)
                torch.testing.assert_close(gm, mu.grad)
                torch.testing.assert_close(gl, lv.grad)
