"""Benchmark the agent loop: framework overhead, bundled-model episode latency, concurrent throughput.

    python benchmarks/bench_agent.py --dataset ml-1m --out outputs/bench-agent [--episodes 5]

1. *Framework overhead*: every cost of an episode except model time -- prompt building, parsing, tool calls,
   trajectory bookkeeping -- measured by driving the real loop with the bootstrap teacher (a scripted
   policy whose "generation" takes microseconds) over dense/valid episodes.
2. *Default-model latency*: the same episodes with the default model (`--model`, default: the committed
   adapter merged into the bundled SmolLM2-135M GGUF; `base` for the untrained one) in-process (llama.cpp on
   `--threads` threads, default 2 = the goal's 2 cores; grammar-constrained turns; the agent settings it
   was trained with): seconds per episode, model share, tokens/s, valid rate, and where the model time goes
   (llama.cpp's own prompt-processing and decoding timings: tokens and tokens/s of each). One episode is
   run first to load the model and cache the shared system prompt, as a running service would have.
3. *Throughput*: episodes per minute against one local llama.cpp server on 127.0.0.1 with 1 and 4 client
   workers (server slots = workers).

Writes OUT/agent.json and OUT/agent.md. Measured numbers depend on the machine and on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from recthinker.agent.rankers import default_config
from recthinker.data.prepared import ensure_benchmark
from recthinker.eval.harness import evaluate
from recthinker.llm import OpenAICompatible, load_chat_model, serve_llamacpp
from recthinker.rankers import TEACHER, build_ranker
from recthinker.tools.build import load_resources
from recthinker.train.teacher import fit_teacher


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def overhead(bench, resources, episodes) -> dict:
    agent = build_ranker(TEACHER, bench, resources=resources, teacher_weights=fit_teacher(bench)).agent()
    agent.run(episodes[0])  # warm caches (ALS scorer, tool tables)
    times, model = [], []
    for e in episodes * 4:
        t0 = time.perf_counter()
        traj = agent.run(e)
        times.append(time.perf_counter() - t0)
        model.append(traj.model_latency_s)
    return {
        "episodes": len(times),
        "mean_s": statistics.mean(times),
        "p50_s": _pct(times, 0.5),
        "p99_s": _pct(times, 0.99),
        "scripted_model_s": statistics.mean(model),
    }


def _record_timings(model, sink: list[dict]) -> None:
    """Measurement hook: keep llama.cpp's per-request `timings` (prompt / decode tokens and milliseconds)."""
    send = model.chat_completions

    def recorded(request: dict) -> dict:
        response = send(request)
        sink.append(response.get("timings") or {})
        return response

    model.chat_completions = recorded


def bundled(bench, resources, episodes, model, warmup) -> dict:
    agent = build_ranker("agent", bench, resources=resources, model=model).agent()
    agent.run(warmup)  # loads the model; the shared system prompt stays in llama.cpp's prompt cache
    timings: list[dict] = []
    if hasattr(model, "chat_completions"):
        _record_timings(model, timings)
    rows = []
    for e in episodes:
        t0 = time.perf_counter()
        traj = agent.run(e)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "wall_s": wall,
                "model_s": traj.model_latency_s,
                "valid": traj.valid,
                "prompt_tokens": traj.prompt_tokens,
                "completion_tokens": traj.completion_tokens,
                "turns": len(traj.steps),
                "tool_calls": traj.n_tool_calls,
            }
        )
    model.close()
    walls = [r["wall_s"] for r in rows]
    return {
        "episodes": len(rows),
        "mean_s": statistics.mean(walls),
        "p50_s": _pct(walls, 0.5),
        "model_share": sum(r["model_s"] for r in rows) / sum(walls),
        "valid_rate": sum(r["valid"] for r in rows) / len(rows),
        "mean_turns": statistics.mean(r["turns"] for r in rows),
        "mean_tool_calls": statistics.mean(r["tool_calls"] for r in rows),
        "tokens_per_s": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
        / sum(r["model_s"] for r in rows),
        "llamacpp": _split(timings, len(rows)),
        "rows": rows,
    }


def _split(timings: list[dict], n_episodes: int) -> dict | None:
    """Per episode: prompt tokens processed (after the prompt cache) and decoded tokens, with their rates."""
    if not timings or any("prompt_ms" not in t for t in timings):
        return None
    prompt_n, prompt_ms = sum(t["prompt_n"] for t in timings), sum(t["prompt_ms"] for t in timings)
    decode_n, decode_ms = sum(t["predicted_n"] for t in timings), sum(t["predicted_ms"] for t in timings)
    return {
        "requests": len(timings),
        "prompt_tokens_per_episode": prompt_n / n_episodes,
        "prompt_s_per_episode": prompt_ms / 1000 / n_episodes,
        "prompt_tokens_per_s": 1000 * prompt_n / prompt_ms,
        "decoded_tokens_per_episode": decode_n / n_episodes,
        "decode_s_per_episode": decode_ms / 1000 / n_episodes,
        "decode_tokens_per_s": 1000 * decode_n / decode_ms,
    }


def throughput(bench, resources, episodes, out: Path, workers: int, local) -> dict:
    with serve_llamacpp(local.model_path, n_threads=1, n_parallel=workers, n_ctx=8192 * workers) as url:
        model = OpenAICompatible(url, timeout_s=900, max_concurrency=workers)
        # the default model's agent settings; a remote server gets free text (the agent's default for servers)
        config = default_config("agent", local, constrained=False)
        ranker = build_ranker("agent", bench, resources=resources, model=model, config=config)
        t0 = time.perf_counter()
        evaluate([ranker], episodes, out / f"throughput-w{workers}", workers=workers, resume=False)
        wall = time.perf_counter() - t0
    return {
        "workers": workers,
        "episodes": len(episodes),
        "wall_s": wall,
        "episodes_per_min": 60 * len(episodes) / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--out", default="outputs/bench-agent")
    p.add_argument("--episodes", type=int, default=5, help="dense/valid episodes for the model runs")
    p.add_argument("--model", default=None, help="a GGUF / adapter spec; default: the default model; 'base'")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for the latency run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = ensure_benchmark(args.dataset)
    resources = load_resources(bench, "dense/valid")
    episodes = bench.episodes("dense/valid")[: args.episodes]
    load = os.getloadavg()[0]
    result = {"load_avg_1m_at_start": load, "cpus": os.cpu_count()}
    result["overhead"] = overhead(bench, resources, bench.episodes("dense/valid")[:25])
    model = load_chat_model(args.model, n_threads=args.threads)
    result["model"] = getattr(model, "name", str(args.model))
    result["threads"] = args.threads
    warmup = bench.episodes("dense/valid")[-1]
    result["bundled"] = bundled(bench, resources, episodes, model, warmup)
    model.close()
    result["overhead_share_of_bundled_episode"] = result["overhead"]["mean_s"] / result["bundled"]["mean_s"]
    result["throughput"] = [throughput(bench, resources, episodes, out, w, model) for w in (1, 4)]
    (out / "agent.json").write_text(json.dumps(result, indent=2))
    o, b = result["overhead"], result["bundled"]
    md = [
        "| measure | value |",
        "|---|---|",
        f"| framework overhead per episode (scripted policy, {o['episodes']} runs) | {1000 * o['mean_s']:.1f} ms mean, {1000 * o['p99_s']:.1f} ms p99 |",
        f"| {result['model']} episode ({b['episodes']} dense/valid, {result['threads']} llama.cpp thread(s)) | {b['mean_s']:.1f} s mean, {b['p50_s']:.1f} s p50 |",
        f"| overhead share of a bundled-model episode | {100 * result['overhead_share_of_bundled_episode']:.2f}% |",
        f"| bundled model: model-time share, tokens/s, valid rate | {100 * b['model_share']:.1f}%, {b['tokens_per_s']:.0f}, {b['valid_rate']:.2f} |",
        *(
            [
                f"| per episode: prompt processing (after the prompt cache) | {sp['prompt_tokens_per_episode']:.0f} tokens in {sp['prompt_s_per_episode']:.1f} s ({sp['prompt_tokens_per_s']:.0f} tokens/s) |",
                f"| per episode: decoding | {sp['decoded_tokens_per_episode']:.0f} tokens in {sp['decode_s_per_episode']:.1f} s ({sp['decode_tokens_per_s']:.1f} tokens/s) |",
            ]
            if (sp := b["llamacpp"])
            else []
        ),
        *(
            f"| throughput, {t['workers']} worker(s) against one llama.cpp server | {t['episodes_per_min']:.2f} episodes/min |"
            for t in result["throughput"]
        ),
        f"| 1-minute load average at start | {load:.2f} on {os.cpu_count()} cores |",
    ]
    (out / "agent.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
