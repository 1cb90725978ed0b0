"""`python -m trainers.plot_metrics --log-path LOG.csv`: loss and PSNR curves next to the log.

Reads the per-epoch CSV the training loops write (epoch, train_l1, val_l1, train_psnr, val_psnr,
lr, seconds) and writes loss_plot.png and psnr_plot.png in the log's folder. Each run keeps its own
folder (training_logs/<run>/log.csv and its two plots), so runs never overwrite each other's plots.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REQUIRED = ("epoch", "train_l1", "val_l1", "train_psnr", "val_psnr")


class LogError(Exception):
    """The log is missing, empty or malformed; the message says what and where."""


def read_log(path: Path) -> dict[str, list[float]]:
    """Columns of the CSV as float lists. Raises LogError naming the file, row and column at fault."""
    if not path.exists():
        raise LogError(f"{path} does not exist; pass the CSV written by `python -m trainers.train_student --log-path`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if not header:
            raise LogError(f"{path} is empty: no header and no epochs. Train at least one epoch first.")
        if missing:
            raise LogError(f"{path} is not a training log: columns {missing} are missing (it has {header})")
        cols: dict[str, list[float]] = {c: [] for c in header}
        for line, row in enumerate(reader, start=2):
            for c in header:
                try:
                    cols[c].append(float(row[c]))
                except (TypeError, ValueError):
                    raise LogError(f"{path} line {line}: column {c!r} has {row[c]!r}, not a number") from None
    if not cols["epoch"]:
        raise LogError(f"{path} has a header but no epochs yet. Train at least one epoch first.")
    return cols


def plot_paths(log_path: Path) -> tuple[Path, Path]:
    """Where the loss and PSNR plots of `log_path` go: loss_plot.png and psnr_plot.png beside it."""
    return log_path.parent / "loss_plot.png", log_path.parent / "psnr_plot.png"


def plot(log_path: Path) -> tuple[Path, Path]:
    """Write the loss and PSNR plots beside the log (see plot_paths); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cols = read_log(log_path)
    out = []
    for path, (train, val, ylabel) in zip(plot_paths(log_path), [
        ("train_l1", "val_l1", "L1 loss"),
        ("train_psnr", "val_psnr", "PSNR (dB)"),
    ]):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.plot(cols["epoch"], cols[train], marker="o", ms=3, label="train")
        ax.plot(cols["epoch"], cols[val], marker="o", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{log_path.parent.name}/{log_path.name}: {ylabel}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log-path", required=True, help="the training CSV log")
    args = p.parse_args(argv)
    try:
        for path in plot(Path(args.log_path)):
            print(f"wrote {path}")
    except LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
