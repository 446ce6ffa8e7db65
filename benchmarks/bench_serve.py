"""Load test of `recthinker serve`: N concurrent clients against the app on 127.0.0.1 with the bundled model.

    python benchmarks/bench_serve.py --dataset ml-1m --out outputs/bench-serve [--clients 50] [--max-steps 2]

Starts the app in this process (uvicorn in a thread, 127.0.0.1, a free port) with the bundled SmolLM2-135M
(in-process llama.cpp, one thread, grammar-constrained turns), then fires `--clients` concurrent clients
(httpx, asyncio), each sending `--requests` POST /v1/recommend requests for a dense/test user with the first
10 candidates of that user's episode. All requests share the one llama.cpp instance, which runs one model
call at a time, so latency is mostly queueing. A request the server refuses (503, its concurrency limit)
or times out (504, `--timeout`) is counted, not retried; a timed-out run stops before its next model call.

Writes OUT/serve.json and OUT/serve.md: requests, status codes, errors, valid answers, p50/p99 latency,
throughput. Numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import uvicorn

from recthinker.agent.rankers import default_config
from recthinker.data.prepared import ensure_benchmark
from recthinker.llm import load_chat_model
from recthinker.serve.app import create_app
from recthinker.tools.build import load_resources

log = logging.getLogger("bench_serve")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", limit_concurrency=1000)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


async def load(base_url: str, bodies: list[list[dict]], client_timeout_s: float) -> tuple[list[dict], float]:
    """Every client sends its bodies one after another; all clients start together."""

    async def client(n: int, mine: list[dict]) -> list[dict]:
        rows = []
        async with httpx.AsyncClient(base_url=base_url, timeout=client_timeout_s) as http:
            for body in mine:
                t0 = time.perf_counter()
                row = {"client": n, "user_id": body["user_id"]}
                try:
                    r = await http.post("/v1/recommend", json=body)
                    row["status"] = r.status_code
                    data = r.json()
                    if r.status_code == 200:
                        row.update(valid=data["valid"], tool_calls=data["tool_calls"], note=data["note"])
                    else:
                        row.update(error=data.get("error", ""), retry_after=r.headers.get("Retry-After"))
                except httpx.HTTPError as e:  # a transport failure is a result of the run, not a crash
                    row.update(status=0, error=f"{type(e).__name__}: {e}")
                row["latency_s"] = time.perf_counter() - t0
                rows.append(row)
        return rows

    t0 = time.perf_counter()
    per_client = await asyncio.gather(*(client(n, b) for n, b in enumerate(bodies)))
    return [r for rows in per_client for r in rows], time.perf_counter() - t0


def summarize(rows: list[dict], wall_s: float, settings: dict) -> dict:
    ok = [r for r in rows if r["status"] == 200]
    lat_ok = [r["latency_s"] for r in ok]
    return {
        **settings,
        "requests": len(rows),
        "status_codes": dict(sorted(Counter(str(r["status"]) for r in rows).items())),
        "errors": sum(r["status"] != 200 for r in rows),
        "server_errors_5xx_except_503_504": sum(
            r["status"] >= 500 and r["status"] not in (503, 504) for r in rows
        ),
        "transport_errors": sum(r["status"] == 0 for r in rows),
        "valid_answers": sum(bool(r.get("valid")) for r in ok),
        "mean_tool_calls": round(statistics.fmean(r["tool_calls"] for r in ok), 2) if ok else None,
        "latency_p50_s": round(_pct(lat_ok, 0.5), 2),
        "latency_p99_s": round(_pct(lat_ok, 0.99), 2),
        "latency_max_s": round(max(lat_ok), 2) if lat_ok else None,
        "wall_s": round(wall_s, 1),
        "throughput_req_per_min": round(60 * len(ok) / wall_s, 2) if wall_s > 0 else None,
        "error_messages": dict(
            Counter(r.get("error", "") for r in rows if r["status"] != 200).most_common(5)
        ),
    }


def markdown(results: list[dict]) -> str:
    cols = [
        ("phase", "phase"),
        ("clients", "clients"),
        ("requests", "requests"),
        ("server limit", "max_concurrency"),
        ("status codes", "status_codes"),
        ("errors", "errors"),
        ("valid", "valid_answers"),
        ("p50 s", "latency_p50_s"),
        ("p99 s", "latency_p99_s"),
        ("wall s", "wall_s"),
        ("req/min", "throughput_req_per_min"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = []
        for _, key in cols:
            v = r.get(key)
            cells.append(", ".join(f"{k}: {n}" for k, n in v.items()) if isinstance(v, dict) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m", help="bundled dataset name, atomic-file folder or benchmark")
    p.add_argument("--out", default="outputs/bench-serve", help="folder for serve.json and serve.md")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (1-200)")
    p.add_argument(
        "--requests", type=int, default=1, help="requests per client, sent one after another (1-5)"
    )
    p.add_argument("--max-steps", type=int, default=2, help="agent turns per request")
    p.add_argument("--max-tool-calls", type=int, default=1, help="tool calls per request")
    p.add_argument("--max-tokens", type=int, default=160, help="tokens per assistant turn")
    p.add_argument(
        "--limit", type=int, default=64, help="server max_concurrency (a smaller one sheds with 503)"
    )
    p.add_argument(
        "--shed-limit", type=int, default=0, help="also run a phase with this smaller limit (0: skip)"
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="server per-request timeout, seconds")
    args = p.parse_args()
    if not (1 <= args.clients <= 200 and 1 <= args.requests <= 5):
        p.error("--clients must be 1-200 and --requests 1-5 (a bounded load)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    bench = ensure_benchmark(args.dataset)
    resources = load_resources(bench, "dense/test")
    resources.scorer("als")
    model = load_chat_model(None)
    config = default_config("agent", model)
    config.max_tokens = args.max_tokens
    episodes = bench.episodes("dense/test")
    bodies = [
        [
            {
                "user_id": (e := episodes[(c * args.requests + k) % len(episodes)]).user_id,
                "candidates": list(e.candidates[:10]),
                "max_steps": args.max_steps,
                "max_tool_calls": args.max_tool_calls,
            }
            for k in range(args.requests)
        ]
        for c in range(args.clients)
    ]
    phases = [("accept-all", args.limit)] + ([("shed", args.shed_limit)] if args.shed_limit else [])
    results = []
    for phase, limit in phases:
        app = create_app(
            resources,
            bench.items,
            model,
            config=config,
            max_concurrency=limit,
            timeout_s=args.timeout,
            dataset=args.dataset,
        )
        server, thread, url = start_server(app)
        try:
            log.info(
                "%s: %d clients x %d requests, server limit %d", phase, args.clients, args.requests, limit
            )
            rows, wall = asyncio.run(load(url, bodies, client_timeout_s=args.timeout + 60))
        finally:
            server.should_exit = True
            thread.join(timeout=30)
        settings = {
            "phase": phase,
            "clients": args.clients,
            "requests_per_client": args.requests,
            "max_concurrency": limit,
            "max_steps": args.max_steps,
            "max_tool_calls": args.max_tool_calls,
            "max_tokens": args.max_tokens,
            "model": str(getattr(model, "name", type(model).__name__)),
        }
        results.append(summarize(rows, wall, settings))
        (out / f"rows-{phase}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        log.info("%s: %s", phase, json.dumps(results[-1]))
    (out / "serve.json").write_text(json.dumps(results, indent=2))
    (out / "serve.md").write_text(markdown(results))
    print(markdown(results), flush=True)
    # Runs that timed out may still sit in worker threads (a model call cannot be interrupted); the
    # results are written, so leave without joining them.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
