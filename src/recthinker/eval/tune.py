"""Choose each classic ranker's hyper-parameters on validation episodes (`recthinker bench baselines --tune`).

    recthinker bench baselines --dataset ml-1m --tune --budget-s 600 --out outputs/baselines-tuned

For every model, the points of its grid (`baselines.tuned.GRIDS`; its first point first, the defaults
except for SASRec, then the rest in a seeded random order) are fitted on the validation background of `tune_set` (a `*/valid` set; test
sets are refused, and no test episode or test background is ever read) and scored by NDCG@10 on its
episodes, until the grid is done or the model's time budget is spent. The best point is written to
`<benchmark>/tuned.json` (`tuned_params` reads it), with every point tried, its score and fit time, the
default's score, and whether the grid was finished. SASRec's points are trained epoch by epoch with the
validation score after each (the learning curve, also drawn to `<out>/sasrec-curve.png`), stopping after
`SASREC_PATIENCE` epochs without improvement or at the budget; the best epoch is its `epochs`.

Resumable: `tuned.json` is rewritten after every point, a SASRec point's curve and best weights after
every epoch, and SASRec checkpoints every epoch, so the same command after a kill continues where it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recthinker.baselines import make_scorer
from recthinker.baselines.base import (
    cache_key,
    fit_or_load,
    hyper_parameters,
    log_fingerprint,
    ranked_by_score,
    save_fitted,
)
from recthinker.baselines.tuned import (
    GRIDS,
    SASREC_MAX_EPOCHS,
    SASREC_PATIENCE,
    benchmark_identity,
    tuned_file,
)
from recthinker.errors import ConfigError
from recthinker.eval.harness import score_rank
from recthinker.eval.report import atomic_write_bytes
from recthinker.metrics import target_rank
from recthinker.types import Episode

log = logging.getLogger(__name__)


def validation_scores(scorer, episodes: Sequence[Episode]) -> dict[str, float]:
    """NDCG@10 and HR@10 of a fitted scorer on `episodes`, ties broken as `ScorerRanker` breaks them."""
    requests = [(e.user_id, e.history, e.candidates) for e in episodes]
    if hasattr(scorer, "score_many"):
        all_scores = scorer.score_many(requests)
    else:
        all_scores = [scorer.score(list(c), user_id=u, history=h) for u, h, c in requests]
    rows = [
        score_rank(target_rank(ranked_by_score(e.episode_id, e.candidates, scores), e.target))
        for e, scores in zip(episodes, all_scores, strict=True)
    ]
    return {
        "ndcg@10": float(np.mean([r["ndcg@10"] for r in rows])),
        "hr@10": float(np.mean([r["hr@10"] for r in rows])),
        "hr@5": float(np.mean([r["hr@5"] for r in rows])),  # with 1 + 9 candidates HR@10 is always 1
        "n": len(episodes),
    }


def grid_order(name: str, seed: int) -> list[dict]:
    """The grid of `name` in search order: its first point (the defaults; SASRec: the paper's setting)
    first, the rest in a seeded random order, so a budget that stops early has still sampled the grid."""
    first, *rest = GRIDS[name]
    order = np.random.default_rng([seed, len(rest)]).permutation(len(rest))
    return [first] + [rest[i] for i in order]


def tune(
    bench,
    models: Sequence[str],
    *,
    tune_set: str = "loo/valid",
    budget_s: float = 600.0,
    seed: int = 42,
    limit: int = 0,
    out: Path | None = None,
) -> dict:
    """Search the grids of `models` on `tune_set`; returns (and writes) the tuned-settings document."""
    if not tune_set.endswith("/valid"):
        raise ConfigError(f"--tune-set {tune_set!r}: tuning reads validation episodes only (a '*/valid' set)")
    unknown = [m for m in models if m not in GRIDS]
    if unknown:
        raise ConfigError(f"no tuning grid for {unknown}; have {sorted(GRIDS)}")
    episodes = bench.episodes(tune_set)
    episodes = episodes[:limit] if limit else episodes
    background = bench.background(tune_set)
    path = tuned_file(bench)
    doc = _read_progress(path, bench, tune_set, seed)
    for name in models:
        start = time.monotonic()
        previous = doc["progress"].get(name, [])
        tried: list[dict] = list(previous)
        done = {_point_key(t["params"]) for t in tried}
        order = grid_order(name, seed)
        spent = sum(t.get("search_s", t["fit_s"]) for t in tried)  # SASRec: every epoch tried, not the best
        for point in order:
            if _point_key(point) in done:
                continue
            if spent + (time.monotonic() - start) > budget_s and tried:
                log.info(
                    "%s: time budget %.0fs spent after %d of %d points",
                    name,
                    budget_s,
                    len(tried),
                    len(order),
                )
                break
            left = budget_s - spent - (time.monotonic() - start)
            if name == "sasrec":
                entry = _sasrec_point(point, background, episodes, bench, seed, left, path, doc)
            else:
                t0 = time.perf_counter()
                scorer = fit_or_load(
                    make_scorer(name, **point), background, bench.root / "models", np.random.default_rng(seed)
                )
                fit_s = time.perf_counter() - t0
                entry = {"params": point, "fit_s": round(fit_s, 2), **validation_scores(scorer, episodes)}
            tried.append(entry)
            log.info("%s %s: NDCG@10 %.4f (%.1fs)", name, entry["params"], entry["ndcg@10"], entry["fit_s"])
            doc["progress"][name] = tried
            _write(path, doc, [name])
        best = max(tried, key=lambda t: (t["ndcg@10"], -t["fit_s"]))
        doc["models"][name] = {
            "params": best["params"],
            "valid": {k: best[k] for k in ("ndcg@10", "hr@10", "hr@5", "n") if k in best},
            "fit_s": best["fit_s"],
            "default_valid": _default_score(name, tried),
            "points_tried": len(tried),
            "grid_size": len(order),
            "complete": len(tried) == len(order),
            "budget_s": max(budget_s, doc["models"].get(name, {}).get("budget_s", 0)),  # the largest given
            "search_s": round(spent + time.monotonic() - start, 1),
        }
        _write(path, doc, [name])
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(out) / "tuned.json", json.dumps(doc, indent=2).encode())
        atomic_write_bytes(Path(out) / "tuned.md", tuned_markdown(doc).encode())
        if doc.get("sasrec_curve"):  # every setting tried, the unfinished ones too
            _plot_curves(list(doc["sasrec_curve"].values()), Path(out) / "sasrec-curve.png")
    return doc


def _settings(params: dict) -> dict:
    """A grid point's settings: `params` without `epochs` (SASRec's chosen epochs are not a grid axis)."""
    return {k: v for k, v in params.items() if k != "epochs"}


def _point_key(params: dict) -> str:
    """A grid point's identity (see `_settings`)."""
    return json.dumps(_settings(params), sort_keys=True)


def _default_score(name: str, tried: list[dict]) -> float | None:
    """Validation NDCG@10 of the dataclass defaults (the untuned ranker), when the search measured it."""
    defaults = hyper_parameters(make_scorer(name))
    for t in tried:
        if all(defaults.get(k) == v for k, v in _settings(t["params"]).items()):
            if name != "sasrec":
                return t["ndcg@10"]
            curve = t.get("curve", [])
            at = [c["ndcg@10"] for c in curve if c["epoch"] == defaults["epochs"]]
            return at[0] if at else None
    return None


def _sasrec_point(point, background, episodes, bench, seed, left_s, path, doc) -> dict:
    """Train one SASRec setting epoch by epoch, validating after each; cache the best epoch's model under
    the key of the same settings with `epochs` = that epoch (an unbroken fit of that length is identical)."""
    import torch  # heavy: only SASRec tuning needs it here

    models = bench.root / "models"
    long = make_scorer("sasrec", **point, epochs=SASREC_MAX_EPOCHS)
    key = cache_key(long, background, np.random.default_rng(seed))
    best_file = models / f"{key}.best.pt"
    state = doc.setdefault("sasrec_curve", {}).setdefault(key, {"params": point, "curve": [], "fit_s": 0.0})
    t0 = time.perf_counter()
    base_fit_s = state["fit_s"]

    def on_epoch(done: int, scorer) -> bool:
        if done <= len(state["curve"]):  # replayed after a resume: already scored
            return False
        scores = validation_scores(scorer, episodes)
        state["curve"].append({"epoch": done, "loss": round(scorer.losses_[-1], 4), **scores})
        state["fit_s"] = round(base_fit_s + time.perf_counter() - t0, 1)
        best = max(state["curve"], key=lambda c: c["ndcg@10"])
        if best["epoch"] == done:
            models.mkdir(parents=True, exist_ok=True)
            torch.save(scorer.state(), best_file)
        log.info(
            "sasrec %s epoch %d: valid NDCG@10 %.4f (best %.4f at %d)",
            point,
            done,
            scores["ndcg@10"],
            best["ndcg@10"],
            best["epoch"],
        )
        _write(path, doc, ["sasrec"])
        stale = done - best["epoch"] >= SASREC_PATIENCE
        over = time.perf_counter() - t0 > left_s
        if over:
            state["stopped"] = f"time budget after epoch {done}"
        elif stale:
            state["stopped"] = f"no better validation NDCG@10 for {SASREC_PATIENCE} epochs"
        return stale or over

    long.fit(
        background, rng=np.random.default_rng(seed), checkpoint=models / f"{key}.ckpt", on_epoch=on_epoch
    )
    (models / f"{key}.ckpt").unlink(missing_ok=True)
    best = max(state["curve"], key=lambda c: c["ndcg@10"])
    chosen = {**point, "epochs": best["epoch"]}
    fitted = make_scorer("sasrec", **chosen)
    pickle_path = models / f"{cache_key(fitted, background, np.random.default_rng(seed))}.pkl"
    fitted.from_state(background, torch.load(best_file, weights_only=True))
    fitted.losses_ = [c["loss"] for c in state["curve"][: best["epoch"]]]
    save_fitted(fitted, pickle_path)
    return {
        "params": chosen,
        "fit_s": round(state["fit_s"] * best["epoch"] / max(len(state["curve"]), 1), 1),
        "search_s": state["fit_s"],
        "curve": state["curve"],
        "stopped": state.get("stopped", f"{SASREC_MAX_EPOCHS} epochs"),
        **{k: best[k] for k in ("ndcg@10", "hr@10", "hr@5", "n") if k in best},
    }


def _read_progress(path: Path, bench, tune_set: str, seed: int) -> dict:
    fresh = {
        "benchmark": benchmark_identity(bench),
        "tune_set": tune_set,
        "seed": seed,
        "models": {},
        "progress": {},
    }
    if not path.is_file():
        return fresh
    doc = json.loads(path.read_text(encoding="utf-8"))
    if (doc.get("benchmark"), doc.get("tune_set"), doc.get("seed")) != (fresh["benchmark"], tune_set, seed):
        log.info("%s: tuned on another set, seed or benchmark; starting over", path)
        return fresh
    return doc


def _write(path: Path, doc: dict, names: Sequence[str]) -> None:
    """Merge this run's models (`names`) into `path` under a lock and write it atomically: tuning runs of
    different models on one benchmark (SASRec in one process, the fast ones in another) keep each other's
    results."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = doc
        if path.is_file():
            on_disk = json.loads(path.read_text(encoding="utf-8"))
            same = all(on_disk.get(k) == doc.get(k) for k in ("benchmark", "tune_set", "seed"))
            if same:
                merged = {**on_disk, **{k: doc[k] for k in ("benchmark", "tune_set", "seed")}}
                for part in ("models", "progress"):
                    ours = {n: doc[part][n] for n in names if n in doc.get(part, {})}
                    merged[part] = {**on_disk.get(part, {}), **ours}
                if "sasrec" in names:
                    merged["sasrec_curve"] = {
                        **on_disk.get("sasrec_curve", {}),
                        **doc.get("sasrec_curve", {}),
                    }
        atomic_write_bytes(path, json.dumps(merged, indent=2).encode())


def tuned_markdown(doc: dict) -> str:
    """One row per model: the chosen settings, validation NDCG@10 tuned vs default, fit time, search size."""
    lines = [
        f"Tuned on `{doc['tune_set']}` (seed {doc['seed']}); scores on those validation episodes.\n",
        "| model | chosen settings | NDCG@10 | HR@5 | HR@10 | default NDCG@10 | fit s | points tried |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in doc["models"].items():
        params = ", ".join(f"{k}={v}" for k, v in m["params"].items()) or "–"
        default = "–" if m["default_valid"] is None else f"{m['default_valid']:.4f}"
        grid = f"{m['points_tried']}/{m['grid_size']}" + ("" if m["complete"] else " (budget)")
        hr5 = f"{m['valid']['hr@5']:.4f}" if "hr@5" in m["valid"] else "–"
        lines.append(
            f"| {name} | {params} | {m['valid']['ndcg@10']:.4f} | {hr5} | {m['valid']['hr@10']:.4f} | {default} "
            f"| {m['fit_s']:.1f} | {grid} |"
        )
    return "\n".join(lines) + "\n"


def _plot_curves(points: list[dict], png: Path) -> None:
    """SASRec's learning curves: validation NDCG@10 per epoch, one line per setting."""
    import matplotlib  # heavy: only when a curve is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: only when a curve is drawn

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for p in points:
        curve = p.get("curve", [])
        label = ", ".join(f"{k}={v}" for k, v in p["params"].items() if k != "epochs")
        ax.plot([c["epoch"] for c in curve], [c["ndcg@10"] for c in curve], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def ship_fits(bench, doc: dict, *, seed: int = 42, models: Sequence[str] = ("sasrec",)) -> list[Path]:
    """Ship the tuned settings of `bench`'s dataset and the tuned fits of `models` on every background its
    episode sets use (fitted now when not cached) into the package (`baselines/fitted/`)."""
    from recthinker.baselines.shipped import FITTED_DIR, ship  # the writer side: only --ship needs it
    from recthinker.baselines.tuned import shipped_tuned_file

    dataset = str(bench.manifest.get("dataset"))
    settings = {k: v for k, v in doc.items() if k not in ("progress", "sasrec_curve")}
    FITTED_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(shipped_tuned_file(dataset), (json.dumps(settings, indent=2) + "\n").encode())
    shipped_tuned_file(dataset).chmod(0o644)  # package data: readable by everyone who installs it
    written = [shipped_tuned_file(dataset)]
    fit_logs: dict[str, object] = {}  # background file -> the log the shipped models fit on
    for set_name, rel in bench.manifest["background"].items():
        if bench.train_background(set_name) is None:  # a test set that reads, not fits, its background
            fit_logs.setdefault(rel, bench.background(set_name))
    for rel, log_ in fit_logs.items():
        for name in models:
            if name not in doc["models"]:
                continue
            params = doc["models"][name]["params"]
            scorer = make_scorer(name, **params)
            key = cache_key(scorer, log_, np.random.default_rng(seed))
            t0 = time.perf_counter()
            fitted = fit_or_load(scorer, log_, bench.root / "models", np.random.default_rng(seed))
            took = time.perf_counter() - t0
            info = {
                "model": name,
                "dataset": dataset,
                "background": rel,
                "log_rows": len(log_),
                "log_sha256": log_fingerprint(log_),
                "benchmark_inputs": bench.manifest.get("sha256", {}).get("inputs"),
                "params": params,
                "valid": doc["models"][name]["valid"],
                "fit_s": round(took, 1) if took > 5 else doc["models"][name]["fit_s"],
                "seed": seed,
            }
            written.append(ship(fitted, key, info))
            log.info("shipped %s fitted on %s (%s)", name, rel, written[-1].name)
    return written
