"""Plot what gradwandb logged, straight from the offline run file (no W&B server needed).

    python examples/plot_run.py                        # trains the demo, then plots it
    python examples/plot_run.py wandb/offline-run-...  # plots a run you already have

Three panels: the global gradient norm with the clipping coefficient, every layer's gradient
norm over the steps (log scale), and the gradient flow of the last histogram step (mean and
max |g| per layer). GRADWANDB_EXAMPLE_STEPS sets the demo's length (default 300).
"""

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from gradwandb.demo import run_demo
from gradwandb.read import read_run


def columns(series: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    """Steps and values of a series, as two lists for matplotlib."""
    return [step for step, _ in series], [value for _, value in series]


def last_logged(values: list[float | None]) -> float:
    """The latest value a layer logged (0.0 if none)."""
    return next((v for v in reversed(values) if v is not None), 0.0)


def plot(run_dir: Path, out: Path) -> None:
    run = read_run(run_dir)
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)

    top.plot(*columns(run.global_series("global_norm")), label="global gradient norm (pre-clip)")
    top.set_yscale("log")
    top.set_xlabel("optimizer step")
    clip = run.global_series("clip_coef")
    if clip:
        twin = top.twinx()
        twin.plot(*columns(clip), color="tab:red", alpha=0.6, label="clip coefficient")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("clip coefficient", color="tab:red")
    top.legend(loc="upper left")

    norms = run.layer_matrix("grad_norm")  # layers in forward order
    for name, values in zip(norms.names, norms.values, strict=True):
        steps = [s for s, v in zip(norms.steps, values, strict=True) if v is not None]
        mid.plot(steps, [v for v in values if v is not None], label=name, linewidth=1)
    mid.set_yscale("log")
    mid.set_title("gradient norm per parameter")
    mid.legend(fontsize=7, ncol=2)

    layers = norms.names
    mean_abs, max_abs = run.layer_matrix("grad_mean_abs"), run.layer_matrix("grad_max_abs")
    mean = [last_logged(mean_abs.row(n)) if n in mean_abs.names else 0.0 for n in layers]
    top_abs = [last_logged(max_abs.row(n)) if n in max_abs.names else 0.0 for n in layers]
    x = range(len(layers))
    low.bar(x, top_abs, color="tab:cyan", label="max |g|")
    low.bar(x, mean, color="tab:blue", label="mean |g|")
    low.set_yscale("log")
    low.set_xticks(list(x), layers, rotation=30, ha="right", fontsize=7)
    low.set_title("gradient flow at the last step")
    low.legend()
    verdict = run.verdict or "no verdict"
    fig.suptitle(f"{run_dir.name}: {verdict}, {len(run.findings)} finding(s)")
    fig.savefig(out, dpi=110)


def main() -> None:
    if len(sys.argv) > 1:
        run_dir = Path(sys.argv[1])
    else:
        steps = int(os.environ.get("GRADWANDB_EXAMPLE_STEPS", "300"))
        run_dir = run_demo(steps=steps, progress=False).run_dir
    out = run_dir / "gradwandb.png"
    plot(run_dir, out)
    print(f"run: {run_dir}\nplot: {out}")


if __name__ == "__main__":
    main()
