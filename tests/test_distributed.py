"""vk.nn.VAE under DistributedDataParallel: two CPU processes (gloo) take a few steps on the same
data; the gradients after backward must be the mean of the per-rank local gradients and equal on
both ranks, and the ranks must have drawn different noise.  Then the demo itself runs under
torchrun.  Every process has a deadline, so a broken rendezvous fails the test instead of hanging it."""
import copy
import datetime
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import vaekernels as vk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD, STEPS, DEADLINE_S = 2, 3, 240  # generous: a loaded 2-core machine is slow, a hang is not


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir, objective):
    """One rank: the same initial weights and data as the other rank, its own noise stream."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=DEADLINE_S))
    torch.manual_seed(0)
    model = vk.nn.VAE(nn.Sequential(nn.Linear(12, 16), nn.Tanh()), nn.Sequential(nn.Linear(4, 16), nn.Tanh(),
                      nn.Linear(16, 12)), 4, prior="learned")
    ddp = DistributedDataParallel(model)
    local = copy.deepcopy(model)  # no DDP: its gradients are this rank's own
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x = (torch.rand(9, 12, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    torch.manual_seed(100 + rank)  # the demo's recipe: noise seeded per rank
    records = []
    for _ in range(STEPS):
        local.load_state_dict(model.state_dict())
        local.zero_grad()
        opt.zero_grad()
        zs = []
        state = torch.get_rng_state()
        for net, step in ((local, local), (model, ddp)):  # the same noise for both, from this rank's stream
            torch.set_rng_state(state)
            hook = net.decoder.register_forward_pre_hook(lambda m, a: zs.append(a[0].detach().clone()))
            step(x, **objective).total.backward()
            hook.remove()
        records.append({"z": zs, "local": [p.grad.clone() for p in local.parameters()],
                        "ddp": [p.grad.clone() for p in model.parameters()]})
        opt.step()
    torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
    # Teardown in order: DDP's reducer holds the process group, so it goes first, and the barrier
    # keeps either rank from tearing gloo down while the other still uses it.  (Left to the end of
    # the function, the DDP destructor ran after destroy_process_group and one rank in ~5 hung
    # there, after its work, until the deadline.)
    del ddp, opt
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("objective", [dict(), dict(num_samples=3)], ids=["elbo", "iwae"])
def test_ddp_averages_gradients_and_ranks_draw_different_noise(tmp_path, objective):
    ctx = mp.start_processes(_worker, args=(free_port(), str(tmp_path), objective), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} DDP processes did not finish within {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for step in range(STEPS):
        r0, r1 = ranks[0][step], ranks[1][step]
        for rec in (r0, r1):
            torch.testing.assert_close(rec["z"][0], rec["z"][1], rtol=0, atol=0)  # local and DDP: same noise
        assert not torch.allclose(r0["z"][0], r1["z"][0]), f"step {step}: both ranks drew the same noise"
        for i, (l0, l1, d0, d1) in enumerate(zip(r0["local"], r1["local"], r0["ddp"], r1["ddp"])):
            torch.testing.assert_close(d0, d1, msg=lambda m: f"step {step}, parameter {i}: ranks differ: {m}")
            torch.testing.assert_close(d0, (l0 + l1) / 2,
                                       msg=lambda m: f"step {step}, parameter {i}: not the mean of the ranks': {m}")
        assert any(not torch.allclose(l0, l1) for l0, l1 in zip(r0["local"], r1["local"]))


@pytest.mark.parametrize("nproc", [1, 2])
def test_demo_runs_under_torchrun(tmp_path, nproc):
    """examples/train_vae.py, unchanged, as one process and as two DDP processes (gloo)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "examples", "train_vae.py"), "--epochs", "2", "--ll-samples", "20",
           "--out", str(tmp_path)]
    try:
        done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the demo under torchrun did not finish within {DEADLINE_S} s:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"processes {nproc}" in done.stdout
    assert "| fused (cpu)" in done.stdout and "| naive (reference)" in done.stdout
    assert (tmp_path / "vae_samples.png").stat().st_size > 0 and (tmp_path / "vae_curves.png").stat().st_size > 0
