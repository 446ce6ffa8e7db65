"""Training curves: read a run's `train_log.jsonl` and draw the chosen metrics to a PNG (matplotlib, Agg).

plot_log(out_dir / "train_log.jsonl", out_dir / "loss.png", ["loss"])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL training log (one dict per logging step)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_log(log_path: Path, png_path: Path, keys: Sequence[str], title: str = "") -> Path | None:
    """One panel per key present in the log, value against `step`; None when no key has data.

    Args:
        log_path: The run's `train_log.jsonl`.
        png_path: Where to write the figure.
        keys: Log fields to draw (e.g. "loss", "reward", "tools/call_frequency").
        title: Figure title.
    """
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    rows = read_log(log_path)
    series = {}
    for key in keys:
        points = [
            (r.get("step", i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), int | float)
        ]
        if points:
            series[key] = points
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(6, 2.4 * len(series)), squeeze=False, sharex=True)
    for ax, (key, points) in zip(axes[:, 0], series.items(), strict=True):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
