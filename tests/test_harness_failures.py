"""The evaluation harness under misuse: another episode set in --out, two runs at once, a dead model
server, Ctrl-C. Each test fails on the harness before these were handled."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recthinker.agent.loop import AgentConfig, RecThinker, run_safely
from recthinker.errors import RecThinkerError
from recthinker.eval.harness import (
    BackendUnavailableError,
    EpisodeSetMismatchError,
    FolderLockedError,
    OutputFolderError,
    evaluate,
)
from recthinker.eval.rundir import read_rows
from recthinker.llm import LLMServerError
from recthinker.llm.openai import OpenAICompatible
from recthinker.types import Episode, Ranking
from test_harness import RANKS, ScriptedRanker, make_episode, put_at, rows_of


def episodes_of(n: int) -> list[Episode]:
    return [make_episode(k) for k in range(n)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_latency(summary: dict) -> dict:
    return {name: {k: v for k, v in s.items() if k != "mean_latency_s"} for name, s in summary.items()}


# -- 1. a summary counts exactly the requested episodes; another set in the folder is refused -------------


def test_limit_shrinks_and_grows_summary_counts_only_requested(tmp_path):
    evaluate([ScriptedRanker("r", ranks=RANKS)], episodes_of(4), tmp_path, progress=False)
    small = ScriptedRanker("r", ranks=RANKS)
    summary = evaluate([small], episodes_of(2), tmp_path, progress=False)
    assert small.calls == [] and summary["r"]["n"] == 2  # not 4: e2, e3 are not part of this set
    assert summary["r"]["hr@1"] == 0.5  # ranks 1 and 3
    assert len(rows_of(tmp_path, "r")) == 4  # ... and not lost either
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["summary_episodes"]["n"] == 2 and len(run["episodes"]) == 4

    grown = ScriptedRanker("r", ranks=RANKS)
    summary = evaluate([grown], episodes_of(6), tmp_path, progress=False)
    assert sorted(grown.calls) == ["e4", "e5"] and summary["r"]["n"] == 6
    fresh = evaluate([ScriptedRanker("r", ranks=RANKS)], episodes_of(6), tmp_path / "fresh", progress=False)
    assert without_latency(summary) == without_latency(fresh)
    ids = [r["episode_id"] for r in rows_of(tmp_path, "r")]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6


def test_issue_example_five_episodes_over_a_folder_of_many(tmp_path):
    """'5 episodes' was reported over n=105 rows: every ranker of the folder now counts the requested 5."""
    evaluate([ScriptedRanker("pop"), ScriptedRanker("ease")], episodes_of(12), tmp_path, progress=False)
    summary = evaluate([ScriptedRanker("ease")], episodes_of(5), tmp_path, progress=False)
    assert summary["pop"]["n"] == 5 and summary["ease"]["n"] == 5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "| pop | 5 |" in (tmp_path / "summary.md").read_text()


def test_another_set_name_is_refused_and_nothing_changes(tmp_path):
    evaluate([ScriptedRanker("r")], episodes_of(4), tmp_path, progress=False, set_name="ml-1m:dense/test")
    before = snapshot(tmp_path)
    other = ScriptedRanker("r")
    with pytest.raises(EpisodeSetMismatchError, match="different episode set.*--no-resume") as info:
        evaluate([other], episodes_of(4), tmp_path, progress=False, set_name="ml-1m:sparse/test")
    assert "dense/test" in str(info.value) and str(tmp_path) in str(info.value)
    assert other.calls == [] and snapshot(tmp_path) == before
    # --no-resume starts over with the new set
    summary = evaluate([other], episodes_of(3), tmp_path, progress=False, set_name="x", resume=False)
    assert summary["r"]["n"] == 3 and json.loads((tmp_path / "run.json").read_text())["set"] == "x"


@pytest.mark.parametrize("change", ["candidates", "target", "history", "disjoint ids"])
def test_other_episodes_in_the_folder_are_refused(tmp_path, change):
    evaluate([ScriptedRanker("r")], episodes_of(4), tmp_path, progress=False)
    before = snapshot(tmp_path)
    eps = episodes_of(4)
    if change == "candidates":
        eps[1] = replace(eps[1], candidates=(*eps[1].candidates[:-1], "new-item"))
    elif change == "target":
        eps[1] = replace(eps[1], target=eps[1].candidates[0])
    elif change == "history":
        eps[1] = replace(eps[1], history=("h9",))
    else:
        eps = [replace(e, episode_id=f"sparse/{e.episode_id}") for e in eps]
    with pytest.raises(EpisodeSetMismatchError, match="--out"):
        evaluate([ScriptedRanker("r")], eps, tmp_path, progress=False)
    assert snapshot(tmp_path) == before


def test_rows_of_another_set_without_run_record_are_refused(tmp_path):
    """A folder written before run.json existed (or run.json deleted): the rows themselves are checked."""
    evaluate([ScriptedRanker("r")], episodes_of(4), tmp_path, progress=False)
    (tmp_path / "run.json").unlink()
    path = tmp_path / "r" / "episodes.jsonl"
    legacy = [{k: v for k, v in row.items() if k != "episode_sha"} for row in read_rows(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    other = [replace(e, target=e.candidates[0]) for e in episodes_of(4)]
    with pytest.raises(EpisodeSetMismatchError, match="row 1 of"):
        evaluate([ScriptedRanker("r")], other, tmp_path, progress=False)
    same = ScriptedRanker("r")  # legacy rows of the same episodes still resume
    assert evaluate([same], episodes_of(4), tmp_path, progress=False)["r"]["n"] == 4 and same.calls == []


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputFolderError, match="cannot be created"):
        evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path / "out", progress=False)


def test_corrupt_run_record_is_a_clear_error(tmp_path):
    evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path, progress=False)
    (tmp_path / "run.json").write_text("{nope")
    with pytest.raises(RecThinkerError, match=r"run\.json: not valid JSON"):
        evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path, progress=False)
    assert evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path, progress=False, resume=False)


# -- 2. one run at a time per folder ------------------------------------------------------------------


class GatedRanker(ScriptedRanker):
    """Blocks on `gate` when ranking episode `hold`; sets `waiting` when it gets there."""

    def __init__(self, name: str, hold: str):
        super().__init__(name)
        self.hold, self.gate, self.waiting = hold, threading.Event(), threading.Event()

    def rank(self, episode: Episode) -> Ranking:
        if episode.episode_id == self.hold:
            self.waiting.set()
            assert self.gate.wait(10), "test gate never opened"
        return super().rank(episode)


def test_second_concurrent_run_is_refused_threads(tmp_path):
    first = GatedRanker("r", hold="e1")
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(s=evaluate([first], episodes_of(4), tmp_path, progress=False))
    )
    t.start()
    assert first.waiting.wait(10)
    second = ScriptedRanker("r")
    with pytest.raises(FolderLockedError, match=f"{tmp_path} is in use.*pid {os.getpid()}"):
        evaluate([second], episodes_of(4), tmp_path, progress=False)
    assert second.calls == []
    first.gate.set()
    t.join(10)
    assert result["s"]["r"]["n"] == 4 and len(rows_of(tmp_path, "r")) == 4
    # the lock is released after the run
    assert evaluate([ScriptedRanker("r")], episodes_of(4), tmp_path, progress=False)["r"]["n"] == 4


HOLDER = """
import sys, time
from pathlib import Path
from recthinker.jsonl import folder_lock
with folder_lock(Path(sys.argv[1]), "evaluate run"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_concurrent_run_is_refused_processes(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=f"pid {child.pid}"):
            evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path, progress=False)
        assert not (tmp_path / "r").exists()
    finally:
        child.kill()  # a killed holder leaves no stale lock
        child.wait()
    assert evaluate([ScriptedRanker("r")], episodes_of(2), tmp_path, progress=False)["r"]["n"] == 2


# -- 3. a dead model back end ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero_shot(model, name: str = "agent") -> RecThinker:
    """The real agent loop (zero-shot mode: one answer turn) over a chat model."""
    return RecThinker(model, None, config=AgentConfig(mode="zero-shot", max_steps=1), name=name)


class ChatServer:
    """A tiny OpenAI-compatible server: answers the first `ok` requests with a full ranking, then HTTP 500."""

    def __init__(self, ok: int):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                if server.requests <= ok:
                    answer = " > ".join(f"[{k}]" for k in range(1, 13))
                    body = {"choices": [{"message": {"content": f"<answer>{answer}</answer>"}}]}
                    status, data = 200, json.dumps(body).encode()
                else:
                    status, data = 500, b'{"error": "model crashed"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_dead_server_stops_after_three_episodes_and_keeps_finished_rows(tmp_path):
    eps = episodes_of(10)
    evaluate([ScriptedRanker("agent", ranks=RANKS)], eps[:2], tmp_path, progress=False)  # 2 finished rows
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    model = OpenAICompatible(url, "m", max_retries=2, backoff_s=0.01)
    before = (tmp_path / "summary.json").read_bytes()
    t0 = time.perf_counter()
    with pytest.raises(BackendUnavailableError) as info:
        evaluate([zero_shot(model)], eps, tmp_path, progress=False)
    assert time.perf_counter() - t0 < 10  # not 8 episodes x the retry budget
    message = str(info.value)
    assert "\n" not in message and url in message and "3 episodes in a row" in message
    assert "2 finished rows are kept" in message and "5 episodes were not run" in message
    rows = rows_of(tmp_path, "agent")
    assert [r["episode_id"] for r in rows] == ["e0", "e1", "e2", "e3", "e4"]
    assert [bool(r.get("backend_error")) for r in rows] == [False, False, True, True, True]
    assert all(r["valid"] is False and r["ndcg@10"] == 0.0 for r in rows[2:])
    assert (tmp_path / "summary.json").read_bytes() == before  # no summary over a half-run set

    # the back end is back: the failed episodes are retried, the finished ones are not
    again = ScriptedRanker("agent", ranks=RANKS)
    summary = evaluate([again], eps, tmp_path, progress=False)
    assert sorted(again.calls) == [f"e{k}" for k in range(2, 10)]
    assert summary["agent"]["n"] == 10 and summary["agent"]["backend_errors"] == 0
    assert len(rows_of(tmp_path, "agent")) == 10


def test_server_returning_500_stops_the_run_with_workers(tmp_path):
    server = ChatServer(ok=2)
    try:
        model = OpenAICompatible(server.url, "m", max_retries=1, backoff_s=0.01)
        with pytest.raises(BackendUnavailableError, match=r"HTTP 500.*finished rows are kept") as info:
            evaluate([zero_shot(model)], episodes_of(30), tmp_path, workers=2, progress=False)
    finally:
        server.close()
    assert server.url in str(info.value)
    rows = rows_of(tmp_path, "agent")
    good = [r for r in rows if not r.get("error")]
    assert len(good) == 2 and all(r["valid"] for r in good)
    assert 5 <= len(rows) <= 2 + 3 + 1  # 2 answers, 3 failures in a row, at most 1 more in flight
    assert all(r["backend_error"] is True for r in rows if r.get("error"))


class FlakyModelRanker(ScriptedRanker):
    """The back end fails on some episodes (never 3 in a row); a ranker bug on another."""

    def rank(self, episode: Episode) -> Ranking:
        if episode.episode_id in ("e1", "e4"):
            raise LLMServerError("http://127.0.0.1:1/v1/chat/completions: HTTP 503 after 4 attempts")
        if episode.episode_id == "e2":
            raise RuntimeError("our bug")
        if episode.episode_id == "e3":
            return Ranking(items=put_at(episode, 1), valid=False, note="no answer")
        return super().rank(episode)


def test_summary_counts_backend_errors_apart_from_invalid_answers(tmp_path):
    with pytest.raises(RecThinkerError, match=r"3 episode\(s\) failed.*2 of them on the model back end"):
        evaluate([FlakyModelRanker("r")], episodes_of(8), tmp_path, progress=False)
    rows = {r["episode_id"]: r for r in rows_of(tmp_path, "r")}
    assert rows["e1"]["backend_error"] is True and "HTTP 503" in rows["e1"]["backend_message"]
    assert "backend_error" not in rows["e2"] and "RuntimeError: our bug" in rows["e2"]["error"]
    s = json.loads((tmp_path / "summary.json").read_text())["r"]
    assert s["n"] == 8 and s["backend_errors"] == 2 and s["backend_error_rate"] == 0.25
    assert s["n_errors"] == 1  # the ranker bug
    assert s["invalid_rate"] == 2 / 8  # e2 (bug) and e3 (invalid answer); not the back-end failures
    assert s["hr@1"] == 4 / 8
    assert "| 2 |" in (tmp_path / "summary.md").read_text()
    assert "backend_errors" in (tmp_path / "summary.csv").read_text().splitlines()[0]


def test_run_safely_marks_backend_errors():
    url = f"http://127.0.0.1:{free_port()}/v1"
    agent = zero_shot(OpenAICompatible(url, "m", max_retries=0))
    traj = run_safely(agent, make_episode(0))
    assert traj.meta == {"backend_error": True} and traj.note == "backend error" and url in traj.error

    class Broken:
        def generate(self, *args, **kwargs):
            raise RuntimeError("our bug")

    traj = run_safely(zero_shot(Broken()), make_episode(0))
    assert traj.meta == {} and traj.note == "error"


# -- 4. Ctrl-C --------------------------------------------------------------------------------------


class InterruptingRanker(ScriptedRanker):
    """Raises KeyboardInterrupt on episode `at`, as Ctrl-C inside a ranker would."""

    def __init__(self, name: str, at: str, ranks: dict[str, int]):
        super().__init__(name, ranks=ranks)
        self.at = at

    def rank(self, episode: Episode) -> Ranking:
        if episode.episode_id == self.at:
            raise KeyboardInterrupt
        time.sleep(0.01)
        return super().rank(episode)


@pytest.mark.parametrize("workers", [1, 4])
def test_interrupt_keeps_rows_and_resume_gives_identical_metrics(tmp_path, workers):
    eps = episodes_of(24)
    ranks = {e.episode_id: 1 + (n * 5) % 12 for n, e in enumerate(eps)}
    ranker = InterruptingRanker("r", at="e8", ranks=ranks)
    with pytest.raises(KeyboardInterrupt):
        evaluate([ranker], eps, tmp_path, workers=workers, progress=False)
    assert len(ranker.calls) <= 8 + workers  # the workers stopped instead of running the rest
    path = tmp_path / "r" / "episodes.jsonl"
    lines = path.read_text().splitlines()
    ids = [json.loads(line)["episode_id"] for line in lines]  # whole lines only
    assert len(ids) == len(set(ids)) and "e8" not in ids
    if workers == 1:
        assert ids == [f"e{k}" for k in range(8)]

    resumed = ScriptedRanker("r", ranks=ranks)
    summary = evaluate([resumed], eps, tmp_path, workers=workers, progress=False)
    assert not set(resumed.calls) & set(ids)
    assert sorted(r["episode_id"] for r in rows_of(tmp_path, "r")) == sorted(e.episode_id for e in eps)
    fresh = evaluate([ScriptedRanker("r", ranks=ranks)], eps, tmp_path / "fresh", progress=False)
    assert without_latency(summary) == without_latency(fresh)


def test_ctrl_c_in_main_thread_returns_promptly_and_drops_episodes_in_flight(tmp_path):
    eps = episodes_of(8)
    ranker = GatedRanker("r", hold="e2")  # e2 hangs like a slow model call
    threading.Thread(
        target=lambda: ranker.waiting.wait(10) and (time.sleep(0.3), os.kill(os.getpid(), signal.SIGINT)),
        daemon=True,
    ).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        evaluate([ranker], eps, tmp_path, workers=2, progress=False)
    assert time.perf_counter() - t0 < 5  # did not wait for e2
    path = tmp_path / "r" / "episodes.jsonl"
    written = path.read_bytes()
    assert "e2" not in ranker.calls
    ranker.gate.set()  # the hung episode finishes now: its row must not be written any more
    deadline = time.monotonic() + 5
    while "e2" not in ranker.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert "e2" in ranker.calls and path.read_bytes() == written
    ids = [json.loads(line)["episode_id"] for line in written.decode().splitlines()]
    assert "e2" not in ids and len(ids) == len(set(ids))

    resumed = ScriptedRanker("r")  # the lock was released; the resumed run completes
    assert evaluate([resumed], eps, tmp_path, workers=2, progress=False)["r"]["n"] == 8
    assert not set(resumed.calls) & set(ids)
