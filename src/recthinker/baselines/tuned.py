"""Hyper-parameter grids of the classic rankers, and the settings chosen on validation data.

`recthinker bench baselines --tune` (eval/tune.py) searches `GRIDS` on a benchmark's validation episodes
and writes `<benchmark>/tuned.json`; `tuned_params(bench)` reads it back, so every later `evaluate`,
fusion and tool uses the tuned settings. A benchmark without its own `tuned.json` uses the settings shipped
for a bundled dataset (`baselines/fitted/tuned-<dataset>.json`) when that file was tuned on the very same
inputs (sha256) and benchmark config; otherwise the dataclass defaults. The dataclass defaults stay the
untuned reference (the `*-untuned` rows of the tables).

The grids are small on purpose (a CPU and a time budget per model); each point is a dict of keyword
arguments for `make_scorer`. SASRec's `epochs` is not a grid axis: each SASRec point trains up to
`SASREC_MAX_EPOCHS` epochs, scoring the validation episodes after every epoch (the learning curve), and
stops after `SASREC_PATIENCE` epochs without a better validation NDCG@10; the best epoch is chosen.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from recthinker.baselines.shipped import FITTED_DIR

log = logging.getLogger(__name__)

SASREC_MAX_EPOCHS = 200
SASREC_PATIENCE = 5


def _grid(**axes: list) -> list[dict]:
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


GRIDS: dict[str, list[dict]] = {
    "pop": [{}],
    # the first value of every axis is the default, so a grid's first point is the untuned ranker
    "itemknn": _grid(k=[100, 20, 50, 200], shrink=[0.0, 10.0, 100.0]),
    "ease": _grid(lam=[1000.0, 100.0, 250.0, 500.0, 2000.0, 4000.0]),
    "als": _grid(
        factors=[64, 32, 128],
        regularization=[0.05, 0.01, 0.5],
        alpha=[2.0, 1.0, 5.0, 10.0],
        iterations=[15, 30],
    ),
    "bpr": _grid(
        factors=[64, 32, 128],
        learning_rate=[0.01, 0.005, 0.05],
        regularization=[0.01, 0.001, 0.1],
        iterations=[100, 50, 200],
    ),
    # SASRec's default (max_len 50) first as well: on a CPU it makes 3x the optimiser steps per epoch of the
    # paper's max_len 200 for the same work (measured on ML-1M: 4 epochs of max_len 200, ~13 min, were still at
    # Pop's validation NDCG@10), and one point can take the whole budget
    "sasrec": _grid(max_len=[50, 200], hidden=[64, 128], dropout=[0.2, 0.5], lr=[1e-3]),
}


def tuned_file(bench) -> Path:
    """Where `--tune` writes a benchmark's chosen settings."""
    return Path(bench.root) / "tuned.json"


def shipped_tuned_file(dataset: str) -> Path:
    return FITTED_DIR / f"tuned-{dataset}.json"


def benchmark_identity(bench) -> dict:
    """What tuned settings are valid for: the benchmark's inputs (sha256) and build config."""
    return {
        "dataset": bench.manifest.get("dataset"),
        "inputs": bench.manifest.get("sha256", {}).get("inputs"),
        "config": bench.manifest.get("config"),
    }


def read_tuned(path: Path, bench) -> dict | None:
    """The tuned-settings document at `path` if it was tuned on `bench`'s inputs and config, else None."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("benchmark") != benchmark_identity(bench):
        log.info("ignoring %s: tuned on other inputs or another benchmark config", path)
        return None
    return doc


def tuned_params(bench, name: str) -> dict:
    """The chosen settings of scorer `name` for `bench` (empty: the defaults), see the module docstring."""
    if bench is None:
        return {}
    dataset = str(bench.manifest.get("dataset"))
    for path in (tuned_file(bench), shipped_tuned_file(dataset)):
        doc = read_tuned(path, bench)
        if doc is not None and name in doc.get("models", {}):
            return dict(doc["models"][name]["params"])
    return {}
