"""Draw docs/figures/speed_ratios.png: the speed ratios the Benchmarks page shows.

    PYTHONPATH=$PWD python benchmarks/summary_figure.py [--out docs/figures/speed_ratios.png]

The numbers are not measured here: they are copied from two entries of
benchmarks/RESULTS.md, named beside them (each entry holds its command, machine
and revision).  Change them together with the page when a newer entry replaces
those.
"""
import argparse
import os
import sys

#: CPU, 2 cores, samples/s ratios of ours.fit to the other framework in the same processes:
#: RESULTS.md, "the package restructure ... before and after", the re-run after the review
#: (two processes each; their mean).
CPU = {  # (net, batch): (ours / torch.eager, ours / keras.fit)
    ("LeNet-5", 50): ((1.22 + 1.24) / 2, 1.73),
    ("LeNet-5", 256): ((1.19 + 1.24) / 2, 1.42),
    ("lab CNN", 50): ((1.79 + 1.79) / 2, 2.03),
    ("lab CNN", 256): ((1.76 + 1.81) / 2, 1.87),
}
#: GPU, NVIDIA H100, CuPy against PyTorch eager CUDA: RESULTS.md, "first run on a GPU",
#: "After: main at 788c4af" (ours.fit / torch.eager and ours.train_step / torch.eager).
GPU = {  # (net, batch): (fit, train_step)
    ("lab CNN", 64): (0.66, 0.86), ("lab CNN", 256): (0.68, 0.94), ("lab CNN", 1024): (0.27, 0.40),
    ("LeNet-5", 64): (0.63, 0.59), ("LeNet-5", 256): (0.69, 1.01), ("LeNet-5", 1024): (0.55, 0.58),
}


def draw(path):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nn_from_scratch.plotting import save_figure  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, data, labels, title in (
            (axes[0], CPU, ("vs PyTorch eager", "vs Keras fit"), "CPU (2 cores): ours.fit speed / theirs"),
            (axes[1], GPU, ("fit vs PyTorch", "train_step vs PyTorch"), "GPU (H100, CuPy): ours / PyTorch CUDA")):
        keys = list(data)
        x = np.arange(len(keys))
        for i, label in enumerate(labels):
            ax.bar(x + (i - 0.5) * 0.38, [data[k][i] for k in keys], 0.38, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [f"{n}\nbatch {b}" for n, b in keys], fontsize=8)
        ax.set_ylabel("ratio (> 1: ours faster)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("docs", "figures", "speed_ratios.png"))
    args = p.parse_args(argv)
    draw(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
