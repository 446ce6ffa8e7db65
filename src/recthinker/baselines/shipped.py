"""Fitted models shipped inside the package, so a newcomer's first run does not wait for a long fit.

`baselines/fitted/manifest.json` lists each shipped fit: the file of its weights (`<key>.pt`, plain tensors,
loaded with `torch.load(weights_only=True)`), its sha256, and what it was fitted on and how: the
`cache_key` (log rows, hyper-parameters, seed and model code), the dataset and background, the settings,
the validation score and the fit time. `fit_or_load` asks `load_shipped` before fitting; a shipped fit is
used only when its key equals the key of the requested fit, so different data, settings, seed or model
code (a change to what runs, not to comments) always refit. `recthinker bench baselines --tune --ship`
writes them (`ship`); tests check that every shipped fit still matches the code (`shipped_entries`).

Only scorers with `state()` / `from_state(log, state)` can be shipped (SASRec: the one slow fit); the
others fit in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from recthinker.baselines.fingerprint import source_fingerprint
from recthinker.data.dataset import sha256_file
from recthinker.data.log import InteractionLog

log = logging.getLogger(__name__)

FITTED_DIR = Path(__file__).parent / "fitted"


def shipped_entries(folder: Path | None = None) -> list[dict]:
    """The manifest's entries in `folder` (default `FITTED_DIR`; empty when nothing is shipped)."""
    path = (folder or FITTED_DIR) / "manifest.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["fits"])


def load_shipped(scorer, log_: InteractionLog, key: str, folder: Path | None = None):
    """`scorer` fitted from the shipped weights whose cache key is `key`, or None (none shipped, or the
    file's sha256 differs from the manifest's: then a warning, and the caller fits)."""
    folder = folder or FITTED_DIR
    entry = next((e for e in shipped_entries(folder) if e["key"] == key), None)
    if entry is None or not hasattr(scorer, "from_state"):
        return None
    path = folder / entry["file"]
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        log.warning("shipped fit %s is missing or damaged (sha256 differs); fitting instead", path)
        return None
    import torch  # heavy; only shipped scorers (torch models) get here

    fitted = scorer.from_state(log_, torch.load(path, weights_only=True))
    log.info("loaded the shipped %s fit %s (%s)", entry["model"], entry["file"], entry.get("background"))
    return fitted


def ship(fitted, key: str, info: dict, folder: Path | None = None) -> Path:
    """Write `fitted`'s weights as `<key>.pt` and record it (with `info`) in the manifest, replacing an entry
    for the same model, dataset and background; both files are written atomically."""
    import torch  # heavy; only shipped scorers (torch models) get here

    folder = folder or FITTED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(fitted.state(), tmp)
    os.chmod(tmp, 0o644)  # package data: readable by everyone who installs it
    os.replace(tmp, path)
    module = type(fitted).__module__
    entry = {
        "key": key,
        "file": path.name,
        "sha256": sha256_file(path),
        "module": module,
        "source": source_fingerprint(sys.modules[module].__file__),
        **info,
    }
    same = (entry.get("model"), entry.get("dataset"), entry.get("background"))
    kept = []
    for e in shipped_entries(folder):
        if (e.get("model"), e.get("dataset"), e.get("background")) == same:
            if e["file"] != path.name:
                (folder / e["file"]).unlink(missing_ok=True)
        else:
            kept.append(e)
    manifest = folder / "manifest.json"
    tmp = manifest.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps({"fits": [*kept, entry]}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, manifest)
    return path
