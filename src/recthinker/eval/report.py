"""Write an evaluation summary as summary.json, summary.md, summary.csv and chart.png.

The summary is the `{ranker_name: {metric: value, ...}}` dict `recthinker.eval.harness.evaluate`
returns. Every file is written to a temporary name in the same directory and moved into place with
`os.replace`, so a reader never sees a half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@1", "ndcg@5", "ndcg@10", "mrr")
_HEADERS = ("HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10", "MRR")
_CHART_METRICS = ("ndcg@1", "ndcg@5", "ndcg@10")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and `os.replace`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(stats: Mapping[str, Any], metric: str) -> str:
    lo, hi = stats[f"{metric}_ci95"]
    return f"{stats[metric]:.3f} ± {(hi - lo) / 2:.3f}"


def markdown_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Render the summary as a Markdown table, one row per ranker, metrics as `mean ± CI half-width`.

    `invalid` is the share of invalid answers (model mistakes); `backend err` counts the episodes the model
    back end failed on (they never reached the model; "–" for summaries written before it was counted).

    Args:
        summary: `{ranker_name: stats}` as returned by `evaluate`.

    Returns:
        The table text, ending with a newline.

    >>> s = {"pop": {"n": 2, "invalid_rate": 0.5, "backend_errors": 0, **{m: 0.5 for m in METRICS},
    ...              **{f"{m}_ci95": [0.25, 0.75] for m in METRICS}}}
    >>> print(markdown_table(s).splitlines()[2])
    | pop | 2 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.250 | 50.0% | – | 0 |
    """
    header = ["ranker", "n", *_HEADERS, "invalid", "tools/ep", "backend err"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, stats in summary.items():
        tools = stats.get("mean_tool_calls")
        backend = stats.get("backend_errors")
        cells = [
            name,
            str(stats["n"]),
            *(_cell(stats, m) for m in METRICS),
            f"{100 * stats['invalid_rate']:.1f}%",
            "–" if tools is None else f"{tools:.2f}",
            "–" if backend is None else str(backend),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [judgement_line(name, stats) for name, stats in summary.items() if "moved_rate" in stats]
    notes += [
        f"`{name}`: {100 * stats['claim_support']:.1f}% of the {stats['claims']} numbers and labels its "
        "analysis and plan state match the prompt and its observations (`agent/claims.py`)"
        for name, stats in summary.items()
        if stats.get("claims")
    ]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def judgement_line(name: str, stats: Mapping[str, Any]) -> str:
    """What an answer-form-(c) ranker's own promote/demote did, against the unmoved base order.

    >>> print(judgement_line("agent", {"judged": 20, "moved_rate": 0.1, "move_gain_ndcg@10": -0.05,
    ...     "move_gain_ndcg@10_ci95": [-0.2, 0.1], "unmoved_ndcg@10": 0.8, "ndcg@10": 0.795}))
    `agent`: its promote/demote moved the base order in 10.0% of 20 valid answers; NDCG@10 change of those moves -0.050 [-0.200, +0.100] (unmoved order 0.800)
    """
    lo, hi = stats["move_gain_ndcg@10_ci95"]
    return (
        f"`{name}`: its promote/demote moved the base order in {100 * stats['moved_rate']:.1f}% of "
        f"{stats['judged']} valid answers; NDCG@10 change of those moves {stats['move_gain_ndcg@10']:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}] (unmoved order {stats['unmoved_ndcg@10']:.3f})"
    )


def _csv_text(summary: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[str] = ["ranker"]
    for stats in summary.values():
        for key, value in stats.items():
            names = [f"{key}_lo", f"{key}_hi"] if isinstance(value, list | tuple) else [key]
            columns.extend(n for n in names if n not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for name, stats in summary.items():
        row: dict[str, Any] = {"ranker": name}
        for key, value in stats.items():
            if isinstance(value, list | tuple):
                row[f"{key}_lo"], row[f"{key}_hi"] = value
            else:
                row[key] = value
        writer.writerow(row)
    return buf.getvalue()


def _chart_png(summary: Mapping[str, Mapping[str, Any]]) -> bytes:
    # Figure + its Agg canvas directly: no pyplot, so no global backend switch in the caller's process.
    from matplotlib.figure import Figure  # heavy: matplotlib

    names = list(summary)
    x = np.arange(len(names))
    width = 0.8 / len(_CHART_METRICS)
    fig = Figure(figsize=(max(6.5, 1.4 * len(names) + 3.0), 4.5), layout="constrained")
    ax = fig.subplots()
    for j, metric in enumerate(_CHART_METRICS):
        means = np.array([summary[n][metric] for n in names])
        los = np.array([summary[n][f"{metric}_ci95"][0] for n in names])
        his = np.array([summary[n][f"{metric}_ci95"][1] for n in names])
        # NDCG lies in [0, 1]; clip the drawn bars there (small-n t-intervals overshoot), the files keep them
        los, his = np.clip(los, 0.0, 1.0), np.clip(his, 0.0, 1.0)
        yerr = np.vstack([np.clip(means - los, 0, None), np.clip(his - means, 0, None)])
        offset = (j - (len(_CHART_METRICS) - 1) / 2) * width
        ax.bar(x + offset, means, width, yerr=yerr, capsize=3, label=metric.upper())
    ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel("NDCG (mean, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("NDCG@k per ranker")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def write_summary(summary: Mapping[str, Mapping[str, Any]], out_dir: Path) -> None:
    """Write summary.json, summary.md, summary.csv and chart.png into `out_dir`, each atomically.

    Args:
        summary: `{ranker_name: stats}` as returned by `evaluate`.
        out_dir: Directory to write into (created if missing).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "summary.md", markdown_table(summary).encode())
    atomic_write_bytes(out_dir / "summary.csv", _csv_text(summary).encode())
    if summary:
        atomic_write_bytes(out_dir / "chart.png", _chart_png(summary))
    log.info("wrote summary of %d ranker(s) to %s", len(summary), out_dir)
