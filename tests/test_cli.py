"""The command line: every verb's --help, a fast start-up without torch, and prepare -> evaluate on the tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recthinker.cli import build_parser, main

VERBS = (
    "prepare",
    "evaluate",
    "recommend",
    "serve",
    "tool",
    "bench",
    "rollout",
    "filter",
    "sft",
    "grpo",
    "train",
)


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([verb, "--help"])
    assert e.value.code == 0 and "usage: recthinker" in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = "import sys, recthinker.cli; recthinker.cli.build_parser(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def prepare_tiny(dataset_dir: Path, out: Path) -> None:
    """`recthinker prepare` on the tiny dataset: 5-user subsets, leave-one-out with 10 candidates."""
    argv = [
        "prepare",
        "--dataset",
        str(dataset_dir),
        "--out",
        str(out),
        "--n-users",
        "5",
        "--loo-sizes",
        "10",
    ]
    assert main(argv) == 0


def test_prepare_then_evaluate(tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    prepare_tiny(tiny_dataset_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"dense/test", "sparse/test", "loo/test", "loo/valid"} <= set(manifest["episodes"])
    episodes = out / manifest["episodes"]["dense/test"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "evaluate",
                "--episodes",
                str(episodes),
                "--ranker",
                "pop",
                "--ranker",
                "random",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"pop", "random"}
    for stats in summary.values():
        assert stats["n"] == 5
        for key in ("hr@1", "hr@5", "hr@10", "ndcg@1", "ndcg@5", "ndcg@10", "mrr"):
            assert 0.0 <= stats[key] <= 1.0
        assert stats["hr@10"] == 1.0  # 10 candidates: the target is always in the top 10
    assert (run / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pop |" in capsys.readouterr().out

    # several sets in one command (OUT/<set>/ each, plus one summary.md), rankers named with LABEL=
    both = tmp_path / "both"
    argv = ["evaluate", "--dataset", str(out), "--set", "dense/test", "--set", "sparse/test"]
    assert main([*argv, "--ranker", "pop", "--ranker", "popular=pop", "--out", str(both)]) == 0
    for name in ("dense-test", "sparse-test"):
        summary = json.loads((both / name / "summary.json").read_text())
        assert set(summary) == {"pop", "popular"} and summary["pop"]["n"] == 5
        assert summary["pop"]["ndcg@10"] == summary["popular"]["ndcg@10"]
    text = (both / "summary.md").read_text()
    assert "### dense/test (5 episodes)" in text and "### sparse/test (5 episodes)" in text
    assert main([*argv, "--ranker", "pop@base", "--out", str(both)]) == 2  # a classic ranker takes no model


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.inter").write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\tfive\n")
    assert main(["prepare", "--dataset", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    assert "x.inter:2: field 'rating': 'five' is not a number" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--episodes",
                str(tmp_path / "none.jsonl"),
                "--ranker",
                "pop",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert main(["evaluate", "--dataset", "nope", "--ranker", "pop", "--out", str(tmp_path / "r")]) == 2


def test_ranker_specs_name_models_and_reject_bad_labels() -> None:
    from recthinker.errors import RecThinkerError
    from recthinker.rankers import parse_ranker_spec

    assert parse_ranker_spec("untrained=agent@base") == ("untrained", "agent", "base")
    assert parse_ranker_spec("agent") == ("agent", "agent", None)
    # a model path or URL without a label gets a folder-safe one
    assert parse_ranker_spec("agent@outputs/run/adapter").label == "agent@outputs_run_adapter"
    assert parse_ranker_spec("agent@/m/x.gguf") == ("agent@m_x.gguf", "agent", "/m/x.gguf")
    for bad in ("agent@", "x/y=agent"):
        with pytest.raises(RecThinkerError):
            parse_ranker_spec(bad)


def test_training_verbs_parse_here_and_pipeline_holds_stages_only() -> None:
    import ast

    from recthinker.train import pipeline

    argv = {
        "rollout": ["--policy", "teacher", "--out", "x"],
        "filter": ["--in", "x", "--out", "y"],
        "sft": ["--data", "x", "--out", "y"],
        "grpo": ["--model", "x", "--episodes", "2", "--out", "y"],
        "train": ["--preset", "smoke", "--out", "x"],
    }
    for verb, rest in argv.items():
        func = build_parser().parse_args([verb, *rest]).func
        assert (func.__module__, func.__name__) == ("recthinker.cli", f"cmd_{verb}")
    tree = ast.parse(Path(pipeline.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "argparse" not in imported and "Namespace" not in ast.unparse(tree)


def test_recommend_shows_the_run_live_or_prints_it_as_json(tiny_benchmark, monkeypatch, capsys) -> None:
    """`recommend` with a scripted model: the live view (each turn, then the ranking with its evidence) and
    `--json` (the same run as one object); a run without a valid answer says so."""
    import recthinker.llm
    from test_agent_loop import ScriptedModel, call

    replies = [
        "<analyze>Recent items first.</analyze><plan>Look at the history.</plan>" + call("user_history", k=2),
        "<analyze>Enough.</analyze><answer>[2] > [1] > [3] > [4] > [5]</answer>",
    ]
    script = {"replies": replies}
    monkeypatch.setattr(
        recthinker.llm, "load_chat_model", lambda spec, **kw: ScriptedModel(script["replies"])
    )
    user = tiny_benchmark.episodes("dense/test")[0].user_id
    cands = ["m01", "m04", "m07", "m10", "m13"]
    argv = ["recommend", "--dataset", str(tiny_benchmark.root), "--user", user, "--candidates", *cands]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"User {user}, recent history:" in out and "No candidates given" not in out
    assert out.index("turn 1") < out.index('→ user_history({"k": 2})') < out.index("turn 2")
    assert "answer [2] > [1] > [3] > [4] > [5]" in out and "Ranking" in out and "als_rank" in out
    assert "1 tool calls, 2 turns" in out

    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "user_id",
        "ranking",
        "candidates",
        "candidates_proposed",
        "valid",
        "note",
        "tool_calls",
        "evidence",
        "trajectory",
        "latency_s",
        "model",
    }
    assert result["valid"] and result["ranking"] == ["m04", "m01", "m07", "m10", "m13"]
    assert list(result["evidence"]) == result["ranking"][:3] and result["tool_calls"] == 1
    assert [s["index"] for s in result["trajectory"]] == [0, 1] and result["model"] == "scripted"

    script["replies"] = ["hmm"] * 2
    assert main([*argv, "--max-steps", "2"]) == 0
    assert "No valid ranking: no valid answer within 2 turns" in capsys.readouterr().out


def test_bench_baselines_tune_then_tables_with_untuned_rows(tiny_dataset_dir, tmp_path, capsys):
    bench = tmp_path / "bench"
    prepare_tiny(tiny_dataset_dir, bench)
    out = tmp_path / "tables"
    args = [
        "bench",
        "baselines",
        "--dataset",
        str(bench),
        "--out",
        str(out),
        "--ranker",
        "ease",
        "--ranker",
        "pop",
    ]
    assert main([*args, "--tune", "--budget-s", "60", "--with-untuned", "--set", "loo/test"]) == 0
    tuned = json.loads((out / "tuned.json").read_text())
    assert list(tuned["models"]) == ["ease"] and tuned["tune_set"] == "loo/valid"  # pop has nothing to tune
    assert tuned["models"]["ease"]["points_tried"] >= 1
    assert json.loads((bench / "tuned.json").read_text())["models"] == tuned["models"]
    results = json.loads((out / "results.json").read_text())["results"]["loo/test"]
    assert set(results) == {"ease", "pop", "ease-untuned"}
    assert "| ease |" in (out / "tuned.md").read_text()
    # the paired difference, recomputed from the two rankers' rows
    rows = {
        r: {
            json.loads(x)["episode_id"]: json.loads(x)["ndcg@10"]
            for x in (out / "loo-test" / r / "episodes.jsonl").open()
        }
        for r in ("ease", "ease-untuned")
    }
    diffs = [rows["ease"][e] - rows["ease-untuned"][e] for e in rows["ease"]]
    paired = json.loads((out / "results.json").read_text())["tuned_minus_untuned"]["loo/test"]["ease"]
    assert paired["diff"] == pytest.approx(sum(diffs) / len(diffs)) and paired["n"] == len(diffs)
    assert paired["lo"] <= paired["diff"] <= paired["hi"]
    assert "Tuned minus untuned" in (out / "results.md").read_text()
