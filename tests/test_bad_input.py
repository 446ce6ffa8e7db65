"""Bad input to the real command line (subprocesses): exit code 2, one line on stderr, no traceback, nothing
written half or lost. The data files' own kinds are in test_bad_data.py, the service's in test_serve_limits.py,
model specs in test_model_specs.py, the harness's in test_harness_failures.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recthinker.cli import main


def run_cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recthinker.cli", *argv], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one non-empty line on stderr that mentions every needle, and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# (verb arguments before the bad option, the option, a value that means nothing)
BAD_NUMBERS = [
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--seed", "-1"),
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--n-users", "0"),
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--history-cap", "-5"),
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--window", "2"),
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--n-negatives", "zero"),
    (["prepare", "--dataset", "ml-1m", "--out", "OUT"], "--loo-sizes", "1"),
    (["evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", "OUT"], "--threads", "0"),
    (["evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", "OUT"], "--workers", "-2"),
    (["evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", "OUT"], "--limit", "-1"),
    (["evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", "OUT"], "--seed", "1.5"),
    (["recommend", "--user", "1m_1"], "--max-steps", "0"),
    (["recommend", "--user", "1m_1"], "--max-tool-calls", "-1"),
    (["serve"], "--port", "70000"),
    (["serve"], "--port", "0"),
    (["serve"], "--max-concurrency", "0"),
    (["serve"], "--timeout-s", "nan"),
    (["serve"], "--timeout-s", "-3"),
    (["bench", "baselines", "--out", "OUT"], "--workers", "0"),
    (["bench", "baselines", "--out", "OUT"], "--limit", "-4"),
    (["rollout", "--policy", "teacher", "--out", "OUT"], "--workers", "0"),
    (["rollout", "--policy", "teacher", "--out", "OUT"], "--samples", "0"),
    (["rollout", "--policy", "teacher", "--out", "OUT"], "--temperature", "-1"),
    (["filter", "--in", "x", "--out", "OUT"], "--ndcg-threshold", "2"),
    (["sft", "--data", "x", "--out", "OUT"], "--learning-rate", "0"),
    (["sft", "--data", "x", "--out", "OUT"], "--batch-size", "0"),
    (["grpo", "--model", "x", "--episodes", "4", "--out", "OUT"], "--num-generations", "1"),
]


@pytest.mark.parametrize(
    ("argv", "option", "value"), BAD_NUMBERS, ids=[f"{a[0]}{o}={v}" for a, o, v in BAD_NUMBERS]
)
def test_numeric_options_are_range_checked(argv, option, value, tmp_path):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    proc = run_cli(*argv, option, value, timeout=60)
    assert_one_line_error(proc, option, repr(value))
    assert not out.exists()  # refused before anything was written


def test_out_that_is_a_file_or_cannot_be_created(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    proc = run_cli("evaluate", "--episodes", episodes, "--ranker", "pop", "--out", str(a_file))
    assert_one_line_error(proc, str(a_file), "not a folder")
    assert a_file.read_text() == "keep me\n"
    proc = run_cli("evaluate", "--episodes", episodes, "--ranker", "pop", "--out", str(a_file / "sub"))
    assert_one_line_error(proc, str(a_file / "sub"), "cannot create")
    proc = run_cli("bench", "baselines", "--dataset", str(tiny_benchmark.root), "--out", str(a_file))
    assert_one_line_error(proc, "not a folder")


def test_duplicate_ranker_labels_and_missing_episodes_file(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    proc = run_cli(
        "evaluate", "--episodes", episodes, "--ranker", "pop", "--ranker", "pop", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(proc, "pop", "more than once")
    proc = run_cli(
        "evaluate",
        "--episodes",
        episodes,
        "--ranker",
        "x=pop",
        "--ranker",
        "x=ease",
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(proc, "x", "more than once")
    assert not (tmp_path / "o").exists()
    missing = tmp_path / "nowhere" / "test.jsonl"
    proc = run_cli("evaluate", "--episodes", str(missing), "--ranker", "pop", "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, str(missing), "no such file")


@pytest.mark.parametrize("args", ["{k: 5}", "[1, 2]", "5", '{"k": 5'])
def test_tool_args_must_be_a_json_object(args, tiny_benchmark):
    proc = run_cli(
        "tool", "user_history", "--dataset", str(tiny_benchmark.root), "--user", "u01", "--args", args
    )
    assert_one_line_error(proc, "--args")


def test_a_ranker_that_cannot_be_built_fails_alone(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    out = tmp_path / "o"
    proc = run_cli(
        "evaluate",
        "--episodes",
        episodes,
        "--ranker",
        "pop",
        "--ranker",
        f"broken=agent@{tmp_path / 'no-such-model.gguf'}",
        "--ranker",
        "ease",
        "--out",
        str(out),
    )
    assert_one_line_error(proc, "ranker broken could not be built", "no-such-model.gguf")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pop", "ease"} and summary["pop"]["n"] == summary["ease"]["n"] == 5


def test_unknown_ranker_kind_is_refused_before_anything_runs(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    out = tmp_path / "o"
    proc = run_cli(
        "evaluate", "--episodes", episodes, "--ranker", "pop", "--ranker", "nonsense", "--out", str(out)
    )
    assert_one_line_error(proc, "nonsense", "unknown kind")
    assert not out.exists()


def test_when_no_ranker_can_be_built_no_empty_folder_remains(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    out = tmp_path / "o"
    proc = run_cli(
        "evaluate", "--episodes", episodes, "--ranker", f"a=agent@{tmp_path / 'x.gguf'}", "--out", str(out)
    )
    assert_one_line_error(proc, "ranker a could not be built", "x.gguf")
    assert not out.exists()


def test_interrupt_keeps_finished_rows_and_says_so_on_one_line(tiny_benchmark, tmp_path, monkeypatch, capsys):
    import recthinker.cli as cli

    build = cli.build_ranker
    calls = {"n": 0}

    def interrupting_ranker(*args, **kwargs):
        ranker = build(*args, **kwargs)
        rank = ranker.rank

        def rank_then_interrupt(episode):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return rank(episode)

        ranker.rank = rank_then_interrupt
        return ranker

    monkeypatch.setattr(cli, "build_ranker", interrupting_ranker)
    out = tmp_path / "o"
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    assert main(["evaluate", "--episodes", episodes, "--ranker", "pop", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "interrupted" in err[0] and str(out) in err[0]
    kept = [json.loads(line) for line in (out / "pop" / "episodes.jsonl").read_text().splitlines()]
    assert len(kept) == 2
    monkeypatch.setattr(cli, "build_ranker", build)
    assert main(["evaluate", "--episodes", episodes, "--ranker", "pop", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "pop" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and len({r["episode_id"] for r in rows}) == 5


def test_no_library_log_lines_without_verbose(tiny_benchmark):
    """bm25s sets its own logger to DEBUG; without -v none of that reaches stderr."""
    argv = [
        "tool",
        "search_items",
        "--dataset",
        str(tiny_benchmark.root),
        "--user",
        "u01",
        "--args",
        '{"query": "kingdom"}',
    ]
    proc = run_cli(*argv)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if " DEBUG " in line or " INFO " in line], (
        proc.stderr
    )
    proc = run_cli("-vv", *argv)
    assert " DEBUG " in proc.stderr or " INFO " in proc.stderr  # -vv still shows log lines


def test_bad_input_module_covers_every_verb_with_numbers():
    """Every verb with a numeric option appears in BAD_NUMBERS, so a new option gets a case here."""
    from recthinker.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    numeric = set()
    for verb, parser in sub.choices.items():
        if any(a.type not in (None, str) and a.dest != "help" for a in parser._actions):
            numeric.add(verb)
    assert numeric <= {argv[0] for argv, _, _ in BAD_NUMBERS} | {"train"}, numeric


@pytest.mark.parametrize("value", ["5_0", "٣", "1e3", "0x10", " ", "3.0"])
def test_integers_are_plain_ascii_digits(value, tmp_path):
    proc = run_cli(
        "evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", str(tmp_path / "o"), "--limit", value
    )
    assert_one_line_error(proc, "--limit")


def test_threads_and_workers_have_an_upper_bound(tmp_path):
    for option, value in (("--threads", "999999"), ("--workers", "100000")):
        proc = run_cli(
            "evaluate", "--dataset", "ml-1m", "--ranker", "pop", "--out", str(tmp_path / "o"), option, value
        )
        assert_one_line_error(proc, option, value)


@pytest.mark.parametrize("label", ["a\nb", "c|d", "x y", ".hidden", "a:b"])
def test_ranker_labels_name_a_folder_and_a_table_row(label, tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    proc = run_cli(
        "evaluate", "--episodes", episodes, "--ranker", f"{label}=pop", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(proc, "LABEL=")
    assert not (tmp_path / "o").exists()


def test_set_is_refused_with_episodes_and_a_refused_run_leaves_no_folder(tiny_benchmark, tmp_path):
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    out = tmp_path / "o"
    proc = run_cli(
        "evaluate", "--episodes", episodes, "--set", "sparse/test", "--ranker", "pop", "--out", str(out)
    )
    assert_one_line_error(proc, "--set", "--episodes")
    proc = run_cli(
        "evaluate",
        "--dataset",
        str(tiny_benchmark.root),
        "--set",
        "no/such",
        "--ranker",
        "pop",
        "--out",
        str(out),
    )
    assert_one_line_error(proc, "no/such")
    assert not out.exists()


def test_dead_model_server_is_one_line_and_models_by_path_are_labelled(tiny_benchmark, tmp_path):
    """An unreachable server: the retries and per-episode failures are -v detail; stderr says it once. A model
    given by path or URL without LABEL= gets a folder-safe label, so the model's own error is what is shown."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    episodes = str(tiny_benchmark.root / "dense" / "test.jsonl")
    out = tmp_path / "o"
    url = f"http://127.0.0.1:{port}/v1"
    proc = run_cli("evaluate", "--episodes", episodes, "--ranker", f"agent@{url}", "--out", str(out))
    assert_one_line_error(proc, "evaluate stopped", url, "in a row", "run the same command to resume")
    assert (out / f"agent@http_127.0.0.1_{port}_v1" / "episodes.jsonl").is_file()
    proc = run_cli("evaluate", "--episodes", episodes, "--ranker", "agent@/no/such.gguf", "--out", str(out))
    assert_one_line_error(proc, "agent@no_such.gguf", "'/no/such.gguf' not found")


def test_episodes_that_is_a_folder_says_so(tiny_benchmark, tmp_path):
    proc = run_cli(
        "evaluate", "--episodes", str(tiny_benchmark.root), "--ranker", "pop", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(proc, str(tiny_benchmark.root), "a folder; give an episodes JSONL file")
    assert not (tmp_path / "o").exists()
