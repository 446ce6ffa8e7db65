"""The evaluation harness, driven by scripted fake rankers over hand-made episodes."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from pathlib import Path

import pytest

from recthinker.errors import RecThinkerError
from recthinker.eval.harness import evaluate, summarize_rows
from recthinker.eval.report import METRICS, markdown_table
from recthinker.eval.rundir import read_rows
from recthinker.types import Episode, Ranking

CANDIDATES = tuple(f"i{j}" for j in range(12))
# target rank each scripted ranker gives episode e0..e3
RANKS = {"e0": 1, "e1": 3, "e2": 11, "e3": 7}


def make_episode(n: int) -> Episode:
    # rotate the candidates so the target is never simply first in candidate order
    cands = CANDIDATES[n % 12 :] + CANDIDATES[: n % 12]
    return Episode(
        episode_id=f"e{n}",
        user_id=f"u{n}",
        history=("h1", "h2"),
        candidates=cands,
        target=cands[5],
        subset="dense" if n % 2 else "sparse",
    )


@pytest.fixture
def episodes() -> list[Episode]:
    return [make_episode(n) for n in range(4)]


def put_at(episode: Episode, rank: int) -> tuple[str, ...]:
    """The candidates with the target moved to 1-based position `rank`."""
    others = [c for c in episode.candidates if c != episode.target]
    return (*others[: rank - 1], episode.target, *others[rank - 1 :])


class ScriptedRanker:
    """Puts the target at RANKS[episode_id] (default 1); records every call; optional tool info."""

    def __init__(self, name: str = "scripted", *, ranks: dict[str, int] | None = None, tools: bool = False):
        self.name = name
        self.ranks = ranks or {}
        self.tools = tools
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def rank(self, episode: Episode) -> Ranking:
        with self._lock:
            self.calls.append(episode.episode_id)
        info = {}
        if self.tools:
            info = {
                "tool_calls": 2,
                "tool_errors": 1 if episode.episode_id == "e1" else 0,
                "prompt_tokens": 100,
            }
        return Ranking(items=put_at(episode, self.ranks.get(episode.episode_id, 1)), info=info)


class InvalidRanker:
    """Returns an invalid ranking whose items even put the target first: it must still score 0."""

    name = "invalid"

    def rank(self, episode: Episode) -> Ranking:
        return Ranking(items=put_at(episode, 1), valid=False, note="no ranking found in output")


class RaisingRanker(ScriptedRanker):
    """Raises `exc` on one episode."""

    def __init__(self, name: str, fail_on: str, exc: BaseException):
        super().__init__(name)
        self.fail_on, self.exc = fail_on, exc

    def rank(self, episode: Episode) -> Ranking:
        if episode.episode_id == self.fail_on:
            raise self.exc
        return super().rank(episode)


class DroppingRanker:
    """Claims a valid ranking but drops a candidate: a ranker bug."""

    name = "dropping"

    def rank(self, episode: Episode) -> Ranking:
        return Ranking(items=put_at(episode, 1)[:-1])


def rows_of(out: Path, name: str) -> list[dict]:
    return read_rows(out / name / "episodes.jsonl")


def test_metrics_match_hand_computed_values(tmp_path, episodes):
    ranker = ScriptedRanker(ranks=RANKS, tools=True)
    summary = evaluate([ranker], episodes, tmp_path, progress=False)
    s = summary["scripted"]
    # ranks 1, 3, 11, 7
    assert s["n"] == 4
    assert s["hr@1"] == pytest.approx(1 / 4)
    assert s["hr@5"] == pytest.approx(2 / 4)
    assert s["hr@10"] == pytest.approx(3 / 4)
    assert s["ndcg@1"] == pytest.approx(1 / 4)
    assert s["ndcg@5"] == pytest.approx((1 + 0.5) / 4)
    assert s["ndcg@10"] == pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4)
    assert s["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11 + 1 / 7) / 4)
    assert s["invalid_rate"] == 0.0
    assert s["mean_tool_calls"] == pytest.approx(2.0)
    assert s["tool_error_rate"] == pytest.approx(1 / 8)
    lo, hi = s["ndcg@10_ci95"]
    assert lo < s["ndcg@10"] < hi

    rows = {r["episode_id"]: r for r in rows_of(tmp_path, "scripted")}
    assert {eid: r["target_rank"] for eid, r in rows.items()} == RANKS
    e1 = rows["e1"]
    assert e1["ndcg@5"] == pytest.approx(0.5) and e1["hr@1"] == 0.0 and e1["mrr"] == pytest.approx(1 / 3)
    assert e1["user_id"] == "u1" and e1["subset"] == "dense" and e1["split"] == "test"
    assert e1["target"] == episodes[1].target and e1["ranking"] == list(put_at(episodes[1], 3))
    assert e1["valid"] is True and e1["note"] == ""
    assert e1["tool_errors"] == 1 and e1["prompt_tokens"] == 100
    assert e1["latency_s"] >= 0.0
    assert rows["e2"]["ndcg@10"] == 0.0 and rows["e2"]["hr@10"] == 0.0  # rank 11 is outside the top 10


def test_invalid_ranking_scores_zero_never_candidate_order(tmp_path, episodes):
    s = evaluate([InvalidRanker()], episodes, tmp_path, progress=False)["invalid"]
    assert s["invalid_rate"] == 1.0
    assert all(s[m] == 0.0 for m in METRICS)
    rows = rows_of(tmp_path, "invalid")
    assert all(r["target_rank"] is None and r["valid"] is False for r in rows)
    assert rows[0]["note"] == "no ranking found in output"


def test_summary_files_and_schema(tmp_path, episodes):
    summary = evaluate(
        [ScriptedRanker("tools", ranks=RANKS, tools=True), ScriptedRanker("oracle")],
        episodes,
        tmp_path,
        progress=False,
    )
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert list(summary) == ["tools", "oracle"]
    base = {"n", *METRICS, *(f"{m}_ci95" for m in METRICS), "invalid_rate", "n_errors", "mean_latency_s",
            "backend_errors", "backend_error_rate"}  # fmt: skip
    assert set(summary["oracle"]) == base
    assert set(summary["tools"]) == base | {"mean_tool_calls", "tool_error_rate"}
    assert all(len(summary["tools"][f"{m}_ci95"]) == 2 for m in METRICS)

    md = (tmp_path / "summary.md").read_text()
    assert md == markdown_table(summary)
    assert md.splitlines()[0].startswith("| ranker | n | HR@1 | HR@5 | HR@10 | NDCG@1")
    assert "| oracle | 4 | 1.000 ± 0.000 |" in md
    assert "| 0.0% | 2.00 | 0 |" in md  # tools ranker: invalid, tools/ep, back-end errors

    with (tmp_path / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["ranker"] for r in table] == ["tools", "oracle"]
    assert float(table[0]["ndcg@5"]) == pytest.approx(0.375)

    png = (tmp_path / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_resume_after_crash_skips_done_episodes(tmp_path, episodes):
    crashing = RaisingRanker("agent", fail_on="e2", exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):  # not caught at the episode boundary: the run stops
        evaluate([crashing], episodes, tmp_path, progress=False)
    path = tmp_path / "agent" / "episodes.jsonl"
    assert [r["episode_id"] for r in read_rows(path)] == ["e0", "e1"]
    with path.open("a") as f:  # the crash left half a row behind
        f.write('{"episode_id": "e2", "user_id": "u2", "ndc')
    assert [r["episode_id"] for r in read_rows(path)] == ["e0", "e1"]

    resumed = ScriptedRanker("agent", ranks=RANKS)
    summary = evaluate([resumed], episodes, tmp_path, progress=False)
    assert sorted(resumed.calls) == ["e2", "e3"]  # e0, e1 were not ranked again
    lines = path.read_text().splitlines()
    ids = [json.loads(line)["episode_id"] for line in lines]  # every line parses
    assert sorted(ids) == ["e0", "e1", "e2", "e3"]
    assert summary["agent"]["n"] == 4

    again = ScriptedRanker("agent", ranks=RANKS)
    assert evaluate([again], episodes, tmp_path, progress=False) == summary
    assert again.calls == []
    fresh = ScriptedRanker("agent", ranks=RANKS)
    evaluate([fresh], episodes, tmp_path, resume=False, progress=False)
    assert sorted(fresh.calls) == ["e0", "e1", "e2", "e3"] and len(rows_of(tmp_path, "agent")) == 4


def test_ranker_exception_is_recorded_and_raised_at_end(tmp_path, episodes):
    failing = RaisingRanker("buggy", fail_on="e1", exc=RuntimeError("boom"))
    with pytest.raises(RecThinkerError, match="1 episode"):
        evaluate([failing], episodes, tmp_path, progress=False)
    assert sorted(failing.calls) == ["e0", "e2", "e3"]  # the run went on after e1
    rows = {r["episode_id"]: r for r in rows_of(tmp_path, "buggy")}
    assert len(rows) == 4
    assert "RuntimeError: boom" in rows["e1"]["error"]
    assert rows["e1"]["valid"] is False and rows["e1"]["ndcg@10"] == 0.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["buggy"]["n"] == 4 and summary["buggy"]["n_errors"] == 1
    assert summary["buggy"]["hr@1"] == pytest.approx(3 / 4)

    fixed = ScriptedRanker("buggy")  # a resumed run retries only the failed episode
    summary = evaluate([fixed], episodes, tmp_path, progress=False)
    assert fixed.calls == ["e1"]
    assert len(rows_of(tmp_path, "buggy")) == 4
    assert summary["buggy"]["n_errors"] == 0 and summary["buggy"]["hr@1"] == 1.0


def test_valid_non_permutation_raises(tmp_path, episodes):
    with pytest.raises(RecThinkerError, match="4 episode"):
        evaluate([DroppingRanker()], episodes, tmp_path, progress=False)
    rows = rows_of(tmp_path, "dropping")
    assert all("not a permutation" in r["error"] for r in rows)
    assert all(r["hr@1"] == 0.0 for r in rows)


def test_workers_give_the_same_summary(tmp_path):
    episodes = [make_episode(n) for n in range(24)]
    ranks = {e.episode_id: 1 + (n * 5) % 12 for n, e in enumerate(episodes)}

    class Slow(ScriptedRanker):
        def rank(self, episode: Episode) -> Ranking:
            time.sleep(0.002 * (int(episode.episode_id[1:]) % 3))  # finish out of order
            return super().rank(episode)

    one = evaluate([Slow("r", ranks=ranks, tools=True)], episodes, tmp_path / "w1", workers=1, progress=False)
    many = Slow("r", ranks=ranks, tools=True)
    four = evaluate([many], episodes, tmp_path / "w4", workers=4, progress=False)
    assert len(many.calls) == 24
    rows = rows_of(tmp_path / "w4", "r")
    assert sorted(r["episode_id"] for r in rows) == sorted(e.episode_id for e in episodes)
    for key in one["r"]:
        if key != "mean_latency_s":
            assert four["r"][key] == one["r"][key], key


def test_summary_merges_with_earlier_rankers(tmp_path, episodes):
    evaluate([ScriptedRanker("oracle")], episodes, tmp_path, progress=False)
    summary = evaluate([ScriptedRanker("scripted", ranks=RANKS)], episodes, tmp_path, progress=False)
    assert list(summary) == ["oracle", "scripted"]
    assert summary["oracle"]["hr@1"] == 1.0 and summary["scripted"]["hr@1"] == 0.25

    # a ranker whose directory is gone keeps its earlier summary
    (tmp_path / "oracle" / "episodes.jsonl").unlink()
    (tmp_path / "oracle").rmdir()
    summary = evaluate([ScriptedRanker("scripted", ranks=RANKS)], episodes, tmp_path, progress=False)
    assert summary["oracle"]["hr@1"] == 1.0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_summarize_rows_is_order_independent_and_counts_tools():
    rows = [
        {"episode_id": "a", "valid": True, "latency_s": 1.0, "tool_calls": 3, "tool_errors": 1,
         **dict.fromkeys(METRICS, 1.0)},
        {"episode_id": "b", "valid": False, "latency_s": 3.0, "tool_calls": 0, **dict.fromkeys(METRICS, 0.0)},
    ]  # fmt: skip
    s = summarize_rows(rows)
    assert s == summarize_rows(rows[::-1])
    assert s["invalid_rate"] == 0.5 and s["mean_latency_s"] == 2.0
    assert s["mean_tool_calls"] == 1.5 and s["tool_error_rate"] == pytest.approx(1 / 3)
    assert s["ndcg@10_ci95"][0] < 0.5 < s["ndcg@10_ci95"][1]
    assert not math.isnan(s["mrr"])


def test_bad_inputs_are_rejected(tmp_path, episodes):
    with pytest.raises(ValueError, match="unique"):
        evaluate([ScriptedRanker("x"), ScriptedRanker("x")], episodes, tmp_path, progress=False)
    with pytest.raises(ValueError, match="directory"):
        evaluate([ScriptedRanker("../x")], episodes, tmp_path, progress=False)
    with pytest.raises(ValueError, match="unique"):
        evaluate([ScriptedRanker("x")], [episodes[0], episodes[0]], tmp_path, progress=False)
    with pytest.raises(ValueError, match="episode"):
        evaluate([ScriptedRanker("x")], [], tmp_path, progress=False)
