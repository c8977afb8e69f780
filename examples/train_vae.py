"""Train a VAE on scikit-learn's handwritten digits with vaekernels: the fused ops, then the naive twin.

    python examples/train_vae.py                                 # CPU, ~30 s on 2 cores
    python examples/train_vae.py --device cuda
    torchrun --nproc_per_node=2 examples/train_vae.py            # DistributedDataParallel (gloo / NCCL)

The 1797 8x8 digits ship inside scikit-learn (nothing is downloaded).  Pixels 0..16 are binarized
at 8, so p(x|z) is a product of Bernoullis and log p(x) is the log-probability of a binary image
(a Bernoulli likelihood on grey levels in [0, 1] would not be a normalized density).  80/20
train/test split.  The model is ``vk.nn.VAE`` (MLP encoder and decoder, standard normal prior),
trained twice from the same initial weights on the same batches and the same noise stream: with
the fused kernels (the default backend) and with ``backend="reference"`` (plain torch).  Each run
reports the train and test ELBO, an importance-sampled test log-likelihood (K = --ll-samples,
mean +- standard error over the test images) and the seconds per training epoch; the script
writes samples/reconstructions and learning curves as PNGs to --out.

Under torchrun each rank trains on its own shard of every epoch (DistributedSampler), draws its own
noise (torch.manual_seed(seed + 1 + rank) after the common initialization) and DDP averages the
gradients; rank 0 evaluates, prints and writes the files.
"""
import argparse
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

import vaekernels as vk  # noqa: E402

IMPLEMENTATIONS = (("fused", None), ("naive", "reference"))  # (name, backend); None: the default backend


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--latent", type=int, default=8, help="latent dimension D")
    p.add_argument("--hidden", type=int, default=128, help="width of the MLP layers")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-samples", type=int, default=None,
                   help="train on the IWAE bound with K samples (default: the ELBO)")
    p.add_argument("--ll-samples", type=int, default=1000, help="K of the test log-likelihood estimate")
    p.add_argument("--out", default="examples/out", help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process: the ops of a 64-image batch are too small to split, and on "
                        "busy cores every extra thread waits for the others at each op")
    return p.parse_args()


def setup_distributed(device):
    """(rank, world size, device): torchrun sets WORLD_SIZE; gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    if device.startswith("cuda"):
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return dist.get_rank(), world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return dist.get_rank(), world, torch.device(device)


def load_data(seed, device):
    """Binarized digits: (train [1437, 64], test [360, 64]), float32 on ``device``."""
    x = (load_digits().data >= 8).astype("float32")
    train, test = train_test_split(x, test_size=0.2, random_state=seed)
    return torch.from_numpy(train).to(device), torch.from_numpy(test).to(device)


def build_model(latent, hidden, backend):
    """vk.nn.VAE: 64 -> hidden -> hidden -> (mu, logvar) [D];  D -> hidden -> hidden -> 64 Bernoulli logits."""
    encoder = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                            nn.Linear(hidden, 64))
    return vk.nn.VAE(encoder, decoder, latent, likelihood="bernoulli", backend=backend)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def elbo(model, x):
    """The one-sample ELBO per example, averaged over x (nats)."""
    return -model.elbo(x).total.item()


def train(name, backend, args, data, rank, world, device):
    """Train one implementation; rank 0 returns its history, final metrics and the trained model."""
    x_train, x_test = data
    resolved = vk.backends.resolve("reparameterize", device, torch.float32, backend)
    torch.manual_seed(args.seed)  # the same initial weights for every implementation (and rank)
    model = build_model(args.latent, args.hidden, backend).to(device)
    step = model  # what the training loop calls: the model, or DDP around it
    if world > 1:
        step = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = DistributedSampler(range(len(x_train)), num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    torch.manual_seed(args.seed + 1 + rank)  # the noise: the same for every implementation, its own per rank
    history = {"train": [], "test": [], "seconds": []}
    bar = tqdm(range(args.epochs), desc=f"{name} ({resolved})", disable=rank != 0)
    for epoch in bar:
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=device)
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # sum of batch ELBO * size, examples
        synchronize(device)
        t0 = time.perf_counter()
        for batch in order.split(args.batch_size):
            xb = x_train[batch]
            loss = step(xb, args.num_samples)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            totals += torch.stack([-loss.total.detach().double() * len(batch), totals.new_tensor(len(batch))])
        synchronize(device)
        history["seconds"].append(time.perf_counter() - t0)
        if world > 1:
            dist.all_reduce(totals)
        if rank == 0:
            history["train"].append((totals[0] / totals[1]).item())
            history["test"].append(elbo(model, x_test))
            bar.set_postfix(train=f"{history['train'][-1]:.2f}", test=f"{history['test'][-1]:.2f}")
    if rank != 0:
        return None
    ll = model.log_likelihood(x_test, args.ll_samples).double().cpu()
    timed = history["seconds"][1:] or history["seconds"]  # the first epoch includes warm-up
    return {
        "name": name,
        "backend": resolved,
        "history": history,
        "train_elbo": elbo(model, x_train),
        "test_elbo": elbo(model, x_test),
        "ll": ll,
        "seconds": sum(timed) / len(timed),
        "model": model,
    }


def write_figures(results, x_test, args):
    os.makedirs(args.out, exist_ok=True)
    n = 12
    rows = [("test images", x_test[:n].cpu())]
    for r in results:
        torch.manual_seed(1)  # the same prior draws for every implementation
        rows.append((f"{r['name']}: reconstructions", r["model"].reconstruct(x_test[:n]).cpu()))
        rows.append((f"{r['name']}: samples", r["model"].sample(n).cpu()))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.95))
    for i, (title, images) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(images[j].view(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("vk.nn.VAE on scikit-learn digits (binarized): mean of p(x|z)")
    fig.tight_layout()
    samples_png = os.path.join(args.out, "vae_samples.png")
    fig.savefig(samples_png, dpi=100)
    plt.close(fig)

    train_label = "train ELBO" if args.num_samples is None else f"train IWAE bound (K={args.num_samples})"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r, color in zip(results, ("tab:blue", "tab:orange")):
        epochs = range(1, len(r["history"]["train"]) + 1)
        label = f"{r['name']} ({r['backend']})"
        ax.plot(epochs, r["history"]["train"], color=color, ls="-", label=f"{label}: {train_label}")
        ax.plot(epochs, r["history"]["test"], color=color, ls="--", label=f"{label}: test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.set_title("Learning curves: fused vs naive (same weights, batches and noise)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    curves_png = os.path.join(args.out, "vae_curves.png")
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    return samples_png, curves_png


def mean_se(ll):
    """(mean, standard error of the mean) of per-example values."""
    return ll.mean().item(), ll.std().item() / math.sqrt(len(ll))


def report(results, args, world, device, wall):
    k = args.ll_samples
    print(f"\nvaekernels {vk.__version__}, torch {torch.__version__}, device {device}, processes {world}, "
          f"threads {torch.get_num_threads()}; {args.epochs} epochs, "
          f"{'ELBO' if args.num_samples is None else f'IWAE K={args.num_samples}'} training\n")
    ll_title = f"test log p(x), K={k}"
    print(f"| {'implementation':<20} | {'train ELBO':>10} | {'test ELBO':>9} | {ll_title:>22} | {'s/epoch':>7} |")
    print(f"|{'-' * 22}|{'-' * 11}:|{'-' * 10}:|{'-' * 23}:|{'-' * 8}:|")
    for r in results:
        ll, se = mean_se(r["ll"])
        print(f"| {r['name'] + ' (' + r['backend'] + ')':<20} | {r['train_elbo']:>10.2f} | {r['test_elbo']:>9.2f} | "
              f"{f'{ll:.2f} +- {se:.2f}':>22} | {r['seconds']:>7.3f} |")
    (ll_fused, se_fused), (ll_naive, se_naive) = (mean_se(r["ll"]) for r in results)
    diff = ll_fused - ll_naive
    verdict = "agree" if abs(diff) <= se_fused + se_naive else "DISAGREE"
    print("\nELBO and log p(x) in nats per image (mean +- standard error over the test images); s/epoch: training "
          "only, mean over epochs 2..N")
    print(f"fused - naive test log p(x): {diff:+.3f} nats; standard errors {se_fused:.2f} and {se_naive:.2f}: {verdict}")
    print(f"wall time {wall:.1f} s")


def main():
    args = parse_args()
    start = time.perf_counter()
    rank, world, device = setup_distributed(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    data = load_data(args.seed, device)
    results = [train(name, backend, args, data, rank, world, device) for name, backend in IMPLEMENTATIONS]
    if rank == 0:
        pngs = write_figures(results, data[1], args)
        report(results, args, world, device, time.perf_counter() - start)
        print("wrote " + ", ".join(pngs))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
