"""pytest-benchmark JSON -> a markdown table and a PNG plot.

    python benchmarks/report.py results.json [more.json ...] --md out.md --png out.png

One row per (op, size, mode): the median time of every provider, the speed-up of the best
vaekernels backend over eager and over torch.compile, its GB/s over the byte floor and % of the
copy bandwidth measured in the same run.  The plot shows the speed-ups against size.
"""
import argparse
import json
from collections import defaultdict

SIZE_ORDER = ["small", "typical", "large", "huge"]


def load(paths):
    rows, machine = [], {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = data.get("machine_info", machine)
        for b in data["benchmarks"]:
            info = b["extra_info"]
            rows.append({**info, "median_ms": 1e3 * b["stats"]["median"]})
    return rows, machine


def table(rows):
    groups = defaultdict(dict)
    meta = {}
    for r in rows:
        key = (r["op"], r.get("variant", ""), r["size"], r["mode"], r.get("alloc", "default"))
        groups[key][r["provider"]] = r
        meta[key] = r
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p.startswith("vk_"), p))
    head = ["op", "shape", "mode", "alloc"] + [f"{p} ms" for p in providers]
    head += ["best vk", "× eager", "× compile", "GB/s", "% copy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    speedups = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[4], SIZE_ORDER.index(k[2]) if k[2] in SIZE_ORDER else 9, k[3])):
        g = groups[key]
        vk = {p: r for p, r in g.items() if p.startswith("vk_")}
        best = min(vk, key=lambda p: vk[p]["median_ms"]) if vk else None
        cells = [key[0] + (f" ({key[1]})" if key[1] else ""), meta[key]["shape"], key[3], key[4]]
        cells += [f"{g[p]['median_ms']:.3f}" if p in g else "" for p in providers]
        if best:
            b = vk[best]
            eager = g.get("eager", {}).get("median_ms")
            comp = g.get("compile", {}).get("median_ms")
            se = eager / b["median_ms"] if eager else None
            sc = comp / b["median_ms"] if comp else None
            cells += [best[3:], f"{se:.1f}" if se else "", f"{sc:.1f}" if sc else "", f"{b['gbps']:.1f}", f"{b['pct_of_copy']:.0f}"]
            speedups.append((key, se, sc))
        else:
            cells += [""] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), speedups


def plot(speedups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=False)
    series = defaultdict(list)
    for (op, variant, size, mode, alloc), se, sc in speedups:
        if mode == "fwd+bwd":
            series[(op + (f" ({variant})" if variant else ""), alloc)].append((SIZE_ORDER.index(size), se, sc))
    # One colour per op, one marker per allocator mode (steady: filled circles and lines; default:
    # hollow squares), so that a dozen ops stay apart.
    names = sorted({name for name, _ in series})
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    for (name, alloc), pts in sorted(series.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        style = dict(marker="o", ls="-") if alloc == "steady" else dict(marker="s", ls=":", mfc="none", ms=8)
        for ax, i in ((axes[0], 1), (axes[1], 2)):
            ys = [p[i] for p in pts]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, color=colours[name], label=f"{name} [{alloc}]", **style)
    for ax, title in ((axes[0], "speed-up over eager"), (axes[1], "speed-up over torch.compile")):
        ax.set_xticks(range(len(SIZE_ORDER)), SIZE_ORDER)
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{title} (fwd+bwd)")
        ax.set_xlabel("size")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+")
    p.add_argument("--md", required=True)
    p.add_argument("--png")
    a = p.parse_args()
    rows, machine = load(a.json)
    md, speedups = table(rows)
    first = rows[0] if rows else {}
    header = (f"device: {first.get('device_name')} ({first.get('device')}), threads {first.get('threads')}, "
              f"torch {first.get('torch')}, triton {first.get('triton')}, vaekernels {first.get('vaekernels')}, "
              f"copy bandwidth {first.get('copy_gbps')} GB/s, {machine.get('cpu', {}).get('brand_raw', '')}")
    with open(a.md, "w") as f:
        f.write(header + "\n\n" + md + "\n")
    if a.png:
        plot(speedups, a.png)
    print(header)
    print(md)


if __name__ == "__main__":
    main()
