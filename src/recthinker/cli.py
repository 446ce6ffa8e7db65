"""`recthinker <verb>`: the command line. The only module that parses argv or configures logging.

Heavy imports (torch, transformers, the agent, its tools and model back ends) happen inside each verb, so
`recthinker --help` is quick; it does import the classic baselines (pandas, scipy), whose names are among the
ranker kinds it lists (`recthinker.rankers`).

    recthinker prepare  --dataset ml-1m --out data/ml-1m
    recthinker evaluate --episodes data/ml-1m/dense/test.jsonl --ranker pop --ranker ease --out outputs/dense
    recthinker train    --preset smoke --out outputs/train-smoke

The training verbs (`rollout`, `filter`, `sft`, `grpo`, `train`) are grouped below their own header; the
stages they call live in `train/pipeline.py`.

Why ~720 lines: every verb's flags are here, in one `build_parser`, so `--help`, the range-checked option
types (`argtypes`) and the one-line usage-error contract live in one place; each `cmd_*` only maps its
flags onto library calls and prints the result.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

import recthinker.rankers
from recthinker import argtypes
from recthinker.errors import ConfigError, RecThinkerError
from recthinker.rankers import (
    CLASSIC_KINDS,
    FUSION,
    KINDS,
    LLM_KINDS,
    UNTUNED_KINDS,
    RankerSpec,
    parse_ranker_spec,
)
from recthinker.train.presets import PRESETS, with_overrides

log = logging.getLogger("recthinker")

# The ranker kinds are listed once, in `recthinker.rankers` (cheap to import: it loads no agent, model or tool
# until a ranker is built); these are the names the verbs below use for them.
CLASSIC_RANKERS, LLM_RANKERS, RANKER_KINDS = CLASSIC_KINDS, LLM_KINDS, KINDS


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported on one line (the contract: exit 2, one line, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    # The level goes on the handler too: some libraries (bm25s) set their own loggers to DEBUG, and their
    # records would otherwise reach the root handler past the root logger's level.
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def out_folder(path: str) -> Path:
    """`--out` as a folder that exists (created here), or a ConfigError saying why it cannot be one."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot create the folder ({e.strerror or e})") from e
    return out


def cmd_prepare(args: argparse.Namespace) -> int:
    # imported in the verb, as in every verb: --help loads only what its parser needs
    from recthinker.data.benchmark import BenchmarkConfig, build, check_out
    from recthinker.data.dataset import load_dataset

    cfg = BenchmarkConfig(
        seed=args.seed,
        n_users=args.n_users,
        window=args.window,
        n_negatives=args.n_negatives,
        loo_sizes=tuple(args.loo_sizes),
        background=args.background,
        history_cap=args.history_cap,
        subsets=not args.no_subsets,
        loo=not args.no_loo,
        loo_test_sees_valid=not args.loo_test_without_valid,
    )
    out = check_out(args.out)  # before the dataset is parsed: a bad --out fails at once
    manifest = build(load_dataset(args.dataset), out, cfg)
    print(f"wrote {args.out}/manifest.json")
    for name, n in manifest["counts"]["episodes"].items():
        print(f"  {name:<16} {n:>6} episodes  {manifest['episodes'][name]}")
    return 0


def _resolve_episodes(args: argparse.Namespace, set_name: str):
    """(benchmark, episode-set name, episodes) from --episodes FILE or --dataset + one --set."""
    # imported in the verb, as in every verb: --help loads only what its parser needs
    from recthinker.data.prepared import REPREPARE, Benchmark, ensure_benchmark, find_manifest, read_episodes

    if args.episodes:
        if Path(args.episodes).is_dir():
            raise ConfigError(f"--episodes {args.episodes}: a folder; give an episodes JSONL file in it")
        if not Path(args.episodes).is_file():
            raise ConfigError(f"--episodes {args.episodes}: no such file")
        manifest = find_manifest(args.episodes)
        if manifest is None:
            raise RecThinkerError(
                f"{args.episodes}: no manifest.json next to it (episodes come from `recthinker prepare`)"
            )
        bench = Benchmark.open(manifest.parent)
        name = bench.name_of(args.episodes)
        episodes = read_episodes(args.episodes, hint=REPREPARE, items=bench.items.index)
    else:
        bench = ensure_benchmark(args.dataset)
        name = set_name
        episodes = bench.episodes(name)
    if args.limit:
        episodes = episodes[: args.limit]
    return bench, name, episodes


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.episodes and args.set:
        raise ConfigError("--set chooses an episode set of --dataset; with --episodes the file is the set")
    sets = [None] if args.episodes else list(dict.fromkeys(args.set or ["dense/test"]))
    specs = [parse_ranker_spec(r) for r in args.ranker]
    labels = [label for label, _, _ in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(
            f"--ranker: {', '.join(repeated)} named more than once (give each its own LABEL=, e.g. a={repeated[0]})"
        )
    unknown = [kind for _, kind, _ in specs if kind not in RANKER_KINDS]
    if unknown:
        raise ConfigError(f"--ranker: unknown kind {unknown[0]!r}; use one of {', '.join(RANKER_KINDS)}")
    existed = Path(args.out).exists()
    root = out_folder(args.out)
    try:
        return _evaluate_sets(args, sets, specs, root)
    finally:
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # refused or nothing ran: leave no empty folder behind


def _evaluate_sets(args: argparse.Namespace, sets: list, specs: list, root: Path) -> int:
    # imported in the verb: scipy.stats (metrics) stays out of --help
    from recthinker.eval.harness import evaluate
    from recthinker.eval.report import markdown_table

    models: dict[str, object] = {}  # one loaded chat model per spec, shared by the rankers that name it
    tables, failed = [], {}
    for set_name in sets:
        bench, name, episodes = _resolve_episodes(args, set_name)
        rankers = []
        for spec in specs:
            label = spec.label
            if label in failed:
                continue
            try:
                rankers.append(build_ranker(spec, bench, name, args, models))
            except RecThinkerError as e:  # this ranker alone fails; the others still run
                failed[label] = str(e)
                log.info("ranker %s cannot be built (%s); the others run", label, e)
        if not rankers:
            break
        out = root if len(sets) == 1 else out_folder(str(root / name.replace("/", "-")))
        summary = evaluate(
            rankers,
            episodes,
            out,
            resume=not args.no_resume,
            workers=args.workers,
            set_name=f"{bench.manifest['dataset']}:{name}",
        )
        table = markdown_table({r.name: summary[r.name] for r in rankers})
        tables.append(f"### {name} ({len(episodes)} episodes)\n\n{table}\n")
        print(tables[-1])
        print(f"wrote {out}/summary.json, summary.md, summary.csv, chart.png")
    if len(sets) > 1 and tables:
        Path(root, "summary.md").write_text("\n".join(tables), encoding="utf-8")
        print(f"wrote {root}/summary.md (every set)")
    if failed:  # one line for all of them, after the others' results are written
        reasons = "; ".join(f"ranker {label} could not be built: {why}" for label, why in failed.items())
        raise RecThinkerError(" ".join(reasons.split()))
    return 0


def build_ranker(spec, bench, name: str, args: argparse.Namespace, models: dict | None = None):
    """`recthinker.rankers.build_ranker` with this verb's flags: --seed, --model (LLM kinds without
    `@MODEL`), --threads; `models` caches loaded chat models by spec. The teacher's weights are fitted here
    (training's job, cached under the benchmark), only when a teacher is built."""
    from recthinker.train.teacher import fit_teacher  # imported when called: scipy.stats stays out of --help

    return recthinker.rankers.build_ranker(  # the module's: this function has its builder's name
        spec,
        bench,
        name,
        seed=args.seed,
        model=args.model,
        models=models,
        threads=getattr(args, "threads", 1),
        teacher_weights=functools.partial(fit_teacher, bench),
    )


def cmd_recommend(args: argparse.Namespace) -> int:
    # imported in the verb: the agent, its tools and scipy.stats (metrics) stay out of --help
    from recthinker.agent.loop import RecThinker
    from recthinker.agent.rankers import default_config
    from recthinker.agent.recommend import recommendation
    from recthinker.data.prepared import ensure_benchmark
    from recthinker.llm import load_chat_model
    from recthinker.tools.build import load_resources
    from recthinker.tools.candidates import make_episode
    from recthinker.tools.env import RecEnv, ToolHost

    bench = ensure_benchmark(args.dataset)
    resources = load_resources(bench, "dense/test", seed=args.seed)
    episode, proposed = make_episode(resources, args.user, args.history, args.candidates, seed=args.seed)
    model = load_chat_model(args.model)
    config = default_config("agent", model)
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    if args.max_tool_calls is not None:
        config.max_tool_calls = args.max_tool_calls
    agent = RecThinker(model, ToolHost(RecEnv(resources)), items=bench.items, config=config)
    evidence_env = ToolHost(RecEnv(resources))  # reads the evidence of the top items, apart from the agent's
    if args.json:
        result = recommendation(agent.run(episode), evidence_env, episode, proposed)
        print(json.dumps(result, ensure_ascii=False))
    else:
        # imported in the verb: rich (the live view) stays out of --help
        from rich.console import Console

        from recthinker.cli_view import watch

        watch(Console(), agent, evidence_env, episode, proposed)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from recthinker.serve.app import main as serve_main  # imported in the verb: fastapi stays out of --help

    return serve_main(args.dataset, args.host, args.port, args.model, args.max_concurrency, args.timeout_s)


def cmd_tool(args: argparse.Namespace) -> int:
    from recthinker.tools.commands import run_tool  # imported in the verb: scipy.stats stays out of --help

    try:
        tool_args = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--args {args.args[:80]!r}: not JSON ({e.msg} at character {e.pos})") from e
    except RecursionError as e:
        raise ConfigError(f"--args {args.args[:80]!r}...: nested too deeply") from e
    if not isinstance(tool_args, dict):
        raise ConfigError(f"--args {args.args!r}: must be a JSON object of argument names to values")
    print(run_tool(args.dataset, args.user, args.name, tool_args, candidates=args.candidates))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "baselines":
        # imported in the verb: scipy.stats (metrics) stays out of --help
        from recthinker.data.prepared import ensure_benchmark
        from recthinker.eval.suite import DEFAULT_SETS, results_markdown, run_suite

        bench = ensure_benchmark(args.dataset)
        rankers = list(dict.fromkeys(args.ranker or (*CLASSIC_KINDS, FUSION)))
        if args.tune:
            # imported in the verb: torch (SASRec) stays out of --help
            from recthinker.eval.tune import ship_fits, tune, tuned_markdown

            tunable = [r for r in rankers if f"{r}-untuned" in UNTUNED_KINDS]
            doc = tune(
                bench,
                tunable,
                tune_set=args.tune_set,
                budget_s=args.budget_s,
                seed=args.seed,
                limit=args.tune_limit,
                out=out_folder(args.out),
            )
            print(tuned_markdown(doc))
            if args.ship:
                # imported in the verb: lightgbm stays out of --help
                from recthinker.agent.fusion import ship_fusion

                for path in [*ship_fits(bench, doc, seed=args.seed), *ship_fusion(bench, seed=args.seed)]:
                    print(f"shipped {path}")
        if args.with_untuned:
            rankers += [f"{r}-untuned" for r in rankers if f"{r}-untuned" in UNTUNED_KINDS]
        if args.tune_only:
            return 0
        results = run_suite(
            bench,
            list(dict.fromkeys(args.set or DEFAULT_SETS)),
            rankers,
            out_folder(args.out),
            lambda r, s: build_ranker(RankerSpec(r, r), bench, s, args),
            workers=args.workers,
            limit=args.limit,
        )
        print(results_markdown(results))
        print(f"wrote {args.out}/results.json and results.md")
        return 0
    if args.what == "tools":
        # imported in the verb: scipy.stats (metrics) stays out of --help
        from recthinker.tools.commands import bench_tools

        result = bench_tools(args.dataset, out_folder(args.out))
        print(json.dumps(result, indent=2))
        return 0
    raise RecThinkerError(f"unknown benchmark {args.what!r}")


# ---- training verbs: rollout, filter, sft, grpo, train (the stages they call: train/pipeline.py) ----------


def cmd_rollout(args: argparse.Namespace) -> int:
    # imported in the verb: the training stages, the agent and scipy.stats stay out of --help
    from recthinker.agent.loop import AgentConfig
    from recthinker.train.pipeline import episodes_and_resources
    from recthinker.train.rollout import model_policy, rollout, teacher_policy

    bench, episodes, resources = episodes_and_resources(
        args.dataset, set_name=args.set, n_episodes=args.episodes, seed=args.seed
    )
    config = AgentConfig(
        max_steps=args.max_steps, max_tool_calls=args.max_tool_calls, max_tokens=args.max_tokens
    )
    if args.policy == "teacher":
        from recthinker.train.teacher import fit_teacher  # as above: imported in the verb

        weights = fit_teacher(bench, n_episodes=args.teacher_fit, seed=0)
        factory = teacher_policy(resources, bench.items, weights, config)
    else:
        factory = model_policy(args.policy, resources, bench.items, config)
    out = rollout(
        episodes,
        factory,
        Path(args.out),
        n_samples=args.samples,
        temperatures=args.temperature,
        workers=args.workers,
    )
    print(f"wrote {out} ({len(episodes)} episodes x {args.samples} samples)")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    # imported in the verb: the training stages, the agent and scipy.stats stay out of --help
    from recthinker.train.filtering import filter_trajectories, write_sft_dataset
    from recthinker.train.rollout import read_rollout

    if not Path(args.input).is_file():
        raise ConfigError(f"--in {args.input}: no such rollout file")
    kept, report = filter_trajectories(
        read_rollout(args.input),
        args.ndcg_threshold,
        per_episode=args.per_episode,
        balance=not args.no_balance,
        balance_ratio=args.balance_ratio,
        seed=args.seed,
    )
    write_sft_dataset(kept, Path(args.out))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({len(kept)} rows)")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    # imported in the verb: the training stages, the agent and scipy.stats stay out of --help
    from recthinker.train.pipeline import fitting_rows
    from recthinker.train.sft import run_sft

    if not Path(args.data).is_file():
        raise ConfigError(f"--data {args.data}: no such SFT dataset")
    model = _model_dir(args.model)
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line]
    fit, lengths = fitting_rows(rows, model, args.max_length)
    if not fit:
        raise RecThinkerError(
            f"no row of {args.data} fits --max-length {args.max_length} (shortest {min(lengths, default=0)})"
        )
    adapter = run_sft(
        fit,
        model,
        Path(args.out),
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    print(
        f"wrote {adapter} ({len(fit)} rows; {len(rows) - len(fit)} longer than {args.max_length} tokens dropped)"
    )
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    # imported in the verb: the training stages, the agent and scipy.stats stay out of --help
    from recthinker.agent.loop import AgentConfig
    from recthinker.tools.env import RecEnv
    from recthinker.train.grpo import grpo_row, run_grpo
    from recthinker.train.pipeline import episodes_and_resources

    bench, episodes, resources = episodes_and_resources(
        args.dataset, n_episodes=args.episodes, seed=args.seed
    )
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: not a model or adapter folder")
    config = AgentConfig(max_steps=args.max_steps, max_tool_calls=args.max_tool_calls)
    adapter = run_grpo(
        [grpo_row(e, bench.items, config) for e in episodes],
        Path(args.model),
        Path(args.out),
        functools.partial(RecEnv, resources),
        max_steps=args.grpo_steps,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=max(1, args.max_steps - 1),
        learning_rate=args.learning_rate,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
    )
    print(f"wrote {adapter}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # imported in the verb: the training stages, the agent and scipy.stats stay out of --help
    from recthinker.train.pipeline import CONTRACT, TRAINED, publish_adapter, run_pipeline

    preset = with_overrides(PRESETS[args.preset], args.set or [])
    metrics = run_pipeline(preset, Path(args.out), dataset=args.dataset, model=args.model)
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    if args.publish:
        print(f"published the final adapter to {publish_adapter(args.out, args.publish)}")
    print(json.dumps({k: {m: metrics[k][m] for m in CONTRACT} for k in metrics if k in TRAINED}, indent=2))
    return 0


def _model_dir(model: str | None) -> Path:
    """`--model` of `sft`: a local transformers model folder, or the bundled SmolLM2-135M when omitted."""
    if model is None:
        from recthinker.train.model import bundled_hf_model  # as in every verb: imported when used

        return bundled_hf_model()
    if not Path(model).is_dir():
        raise ConfigError(f"--model {model}: not a local transformers model folder")
    return Path(model)


def _checkpointing_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations (large models; slower)"
    )


def _agent_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--max-steps", type=argtypes.count, default=4, help="assistant turns per episode, answer included"
    )
    s.add_argument("--max-tool-calls", type=argtypes.limit, default=4, help="tool-call budget per episode")


# ---- the parser --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="recthinker", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("prepare", help="build benchmark episodes (dense/sparse subsets, leave-one-out)")
    s.add_argument("--dataset", required=True, help="ml-100k | ml-1m | folder of RecBole atomic files")
    s.add_argument("--out", required=True, help="output folder (episodes JSONL, background, manifest.json)")
    s.add_argument("--seed", type=argtypes.seed, default=42)
    s.add_argument("--n-users", type=argtypes.count, default=100, help="users per dense/sparse subset")
    s.add_argument(
        "--window",
        type=argtypes.at_least(3),
        default=8,
        help="interactions per subset user (history+valid+test)",
    )
    s.add_argument("--n-negatives", type=argtypes.count, default=9, help="negatives per subset episode")
    s.add_argument(
        "--loo-sizes",
        type=argtypes.at_least(2),
        nargs="+",
        default=[10, 20, 100],
        help="leave-one-out list sizes",
    )
    s.add_argument(
        "--background",
        choices=["full", "subset"],
        default="full",
        help="full: all but held-out rows; subset: only the subset users' window histories",
    )
    s.add_argument("--history-cap", type=argtypes.count, default=50, help="history items stored per episode")
    s.add_argument("--no-subsets", action="store_true", help="skip the dense/sparse subsets")
    s.add_argument("--no-loo", action="store_true", help="skip the full leave-one-out episodes")
    s.add_argument(
        "--loo-test-without-valid",
        action="store_true",
        help="leave-one-out test input without the validation item (default: with it, as SASRec's paper)",
    )
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("evaluate", help="rank benchmark episodes with one or more rankers; write the summary")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--episodes", help="an episodes JSONL written by `prepare`")
    g.add_argument("--dataset", help="bundled dataset name (prepared into the cache on first use)")
    s.add_argument(
        "--set",
        action="append",
        default=None,
        help="episode set with --dataset (dense/test, sparse/test, loo/test, ...); repeat for several "
        "(each goes to OUT/<set>); default dense/test",
    )
    s.add_argument(
        "--ranker",
        action="append",
        required=True,
        help=f"[LABEL=]KIND[@MODEL]: KIND one of {', '.join(CLASSIC_RANKERS + LLM_RANKERS)}; LLM kinds "
        "take a model spec after @ (e.g. fixed-workflow@base, sft=agent@outputs/train-cpu/sft/adapter)",
    )
    s.add_argument(
        "--out", required=True, help="output folder (per-ranker JSONL, summary.{json,md,csv}, chart.png)"
    )
    s.add_argument("--model", default=None, help="LLM rankers: GGUF file, HF folder/adapter, or server URL")
    s.add_argument(
        "--workers", type=argtypes.workers, default=1, help="episodes ranked concurrently (LLM servers)"
    )
    s.add_argument(
        "--threads",
        type=argtypes.threads,
        default=1,
        help="CPU threads of in-process llama.cpp models (1 when the CPU is shared)",
    )
    s.add_argument("--limit", type=argtypes.limit, default=0, help="only the first N episodes (0 = all)")
    s.add_argument("--seed", type=argtypes.seed, default=42)
    s.add_argument(
        "--no-resume", action="store_true", help="ignore (and overwrite) finished episodes in --out"
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("recommend", help="run the agent for one user and watch it investigate")
    s.add_argument("--dataset", default="ml-1m")
    s.add_argument("--user", required=True, help="a user id of the dataset (or any id, with --history)")
    s.add_argument(
        "--history", nargs="*", default=None, help="item ids, oldest first (default: the user's background)"
    )
    s.add_argument("--candidates", nargs="*", default=None, help="item ids to rank (default: 10 proposed)")
    s.add_argument(
        "--model",
        default=None,
        help="GGUF file, HF folder/adapter, server URL, or 'base' (untrained SmolLM2); default: the trained default model",
    )
    s.add_argument(
        "--max-steps", type=argtypes.count, default=None, help="assistant turns (default: the model's own)"
    )
    s.add_argument(
        "--max-tool-calls",
        type=argtypes.limit,
        default=None,
        help="tool-call budget (default: the model's own)",
    )
    s.add_argument("--seed", type=argtypes.seed, default=42)
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the live view")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser(
        "serve", help="HTTP API (recommend, SSE stream) and a web page that shows the agent think"
    )
    s.add_argument("--dataset", default="ml-1m")
    s.add_argument("--host", default="127.0.0.1", help="keep it on loopback unless a proxy handles access")
    s.add_argument("--port", type=argtypes.port, default=8000)
    s.add_argument(
        "--model",
        default=None,
        help="GGUF file, HF folder/adapter, server URL, or 'base' (untrained SmolLM2); default: the trained default model",
    )
    s.add_argument(
        "--max-concurrency", type=argtypes.count, default=4, help="requests served at once; more get 503"
    )
    s.add_argument(
        "--timeout-s",
        type=argtypes.real(0, low_open=True),
        default=300.0,
        help="per-request timeout in seconds (504 after it)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("tool", help="call one agent tool for a user and print its observation")
    s.add_argument("name", help="tool name (user_profile, user_history, item_info, search_items, ...)")
    s.add_argument("--dataset", default="ml-1m")
    s.add_argument("--user", required=True)
    s.add_argument("--args", default="", help="tool arguments as JSON, e.g. '{\"k\": 5}'")
    s.add_argument(
        "--candidates", nargs="*", default=None, help="candidate item ids (default: the user's test episode)"
    )
    s.set_defaults(func=cmd_tool)

    # ---- training verbs (cmd_rollout ... cmd_train above) ----

    s = sub.add_parser("rollout", help="sample agent trajectories (teacher or a model) into a JSONL file")
    s.add_argument(
        "--policy", required=True, help="teacher | a model/adapter folder | .gguf file | server URL"
    )
    s.add_argument("--dataset", default="ml-1m", help="bundled dataset name or prepared benchmark folder")
    s.add_argument(
        "--episodes", type=argtypes.limit, default=0, help="training episodes to build (or first N of --set)"
    )
    s.add_argument(
        "--set", default=None, help="roll out on a benchmark episode set instead (e.g. dense/valid)"
    )
    s.add_argument("--samples", type=argtypes.count, default=1, help="trajectories per episode")
    s.add_argument(
        "--temperature",
        type=argtypes.real(0),
        nargs="+",
        default=[0.0],
        help="sample k uses the k-th (cycled)",
    )
    s.add_argument("--workers", type=argtypes.workers, default=1)
    s.add_argument("--max-tokens", type=argtypes.count, default=384, help="tokens per assistant turn")
    s.add_argument(
        "--teacher-fit",
        type=argtypes.count,
        default=1000,
        help="teacher: training episodes its weights fit on",
    )
    s.add_argument("--seed", type=argtypes.seed, default=0, help="training-episode seed")
    s.add_argument("--out", required=True, help="rollout JSONL (resumed when it exists)")
    _agent_options(s)
    s.set_defaults(func=cmd_rollout)

    s = sub.add_parser(
        "filter", help="keep good trajectories, write the SFT dataset, print survivors per stage"
    )
    s.add_argument("--in", dest="input", required=True, help="rollout JSONL")
    s.add_argument("--out", required=True, help="SFT dataset JSONL ({messages, tools} rows)")
    s.add_argument("--ndcg-threshold", type=argtypes.real(0, 1), default=0.6)
    s.add_argument("--per-episode", type=argtypes.count, default=1, help="demonstrations kept per episode")
    s.add_argument("--no-balance", action="store_true", help="do not balance dense-/sparse-like episodes")
    s.add_argument("--balance-ratio", type=argtypes.real(0, low_open=True), default=1.0)
    s.add_argument("--seed", type=argtypes.seed, default=0)
    s.set_defaults(func=cmd_filter)

    s = sub.add_parser("sft", help="LoRA SFT on an SFT dataset")
    s.add_argument("--data", required=True, help="SFT dataset JSONL (from `filter`)")
    s.add_argument("--model", default=None, help="base model folder (default: bundled SmolLM2-135M)")
    s.add_argument("--out", required=True, help="run folder (adapter/, train_log.jsonl, loss.png)")
    s.add_argument(
        "--max-steps", type=argtypes.at_least(-1), default=-1, help="optimizer steps (-1: --epochs)"
    )
    s.add_argument("--epochs", type=argtypes.real(0, low_open=True), default=1.0)
    s.add_argument("--batch-size", type=argtypes.count, default=1)
    s.add_argument("--grad-accum", type=argtypes.count, default=4)
    s.add_argument("--learning-rate", type=argtypes.real(0, low_open=True), default=5e-4)
    s.add_argument(
        "--max-length", type=argtypes.count, default=2048, help="tokens per row; longer rows are dropped"
    )
    s.add_argument("--lora-r", type=argtypes.count, default=16)
    s.add_argument("--lora-alpha", type=argtypes.count, default=32)
    _checkpointing_option(s)
    s.set_defaults(func=cmd_sft)

    s = sub.add_parser("grpo", help="GRPO with RecEnv tools from an SFT adapter (or a model folder)")
    s.add_argument("--model", required=True, help="SFT adapter folder (continued) or model folder (new LoRA)")
    s.add_argument("--dataset", default="ml-1m")
    s.add_argument("--episodes", type=argtypes.count, required=True, help="training episodes used as prompts")
    s.add_argument("--out", required=True, help="run folder (adapter/, train_log.jsonl, rewards.png)")
    s.add_argument("--grpo-steps", type=argtypes.count, default=10, help="optimizer steps")
    s.add_argument(
        "--num-generations", type=argtypes.at_least(2), default=2, help="completions per prompt (group size)"
    )
    s.add_argument(
        "--max-completion-length", type=argtypes.count, default=512, help="tokens, tool results included"
    )
    s.add_argument("--learning-rate", type=argtypes.real(0, low_open=True), default=2e-5)
    s.add_argument("--seed", type=argtypes.seed, default=0)
    _agent_options(s)
    _checkpointing_option(s)
    s.set_defaults(func=cmd_grpo)

    s = sub.add_parser("train", help="the whole pipeline: rollouts -> filter -> SFT -> GRPO -> evaluation")
    s.add_argument("--preset", choices=sorted(PRESETS), required=True)
    s.add_argument("--out", required=True, help="run folder (resumed: finished stages are skipped)")
    s.add_argument("--dataset", default="ml-1m", help="bundled dataset name or prepared benchmark folder")
    s.add_argument("--model", default=None, help="base model folder (default: bundled SmolLM2-135M)")
    s.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a preset field (see train/presets.py)"
    )
    s.add_argument(
        "--publish",
        default=None,
        metavar="DIR",
        help="copy the final adapter + manifest there (src/recthinker/llm/default_model: the default model)",
    )
    s.set_defaults(func=cmd_train)

    # ---- benchmarks ----

    s = sub.add_parser(
        "bench", help="benchmarks: baselines (all rankers x episode sets), tools (latency, signal)"
    )
    s.add_argument("what", choices=["baselines", "tools"])
    s.add_argument("--dataset", default="ml-1m")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--set",
        action="append",
        help="baselines: episode sets (default dense/test sparse/test loo/test loo-20/test loo-100/test)",
    )
    s.add_argument(
        "--ranker", action="append", help="baselines: rankers (default: all classic ones and fusion)"
    )
    s.add_argument("--workers", type=argtypes.workers, default=1)
    s.add_argument(
        "--limit", type=argtypes.limit, default=0, help="baselines: first N episodes per set (0 = all)"
    )
    s.add_argument("--seed", type=argtypes.seed, default=42)
    s.add_argument("--model", default=None, help="baselines: model for LLM rankers")
    s.add_argument(
        "--tune",
        action="store_true",
        help="baselines: first choose each classic ranker's settings on --tune-set (eval/tune.py); "
        "later runs use them",
    )
    s.add_argument(
        "--tune-set", default="loo/valid", help="baselines --tune: the validation episodes (a */valid set)"
    )
    s.add_argument(
        "--budget-s",
        type=argtypes.real(1.0, 7 * 86400.0),
        default=600.0,
        help="baselines --tune: seconds of search per model (default 600)",
    )
    s.add_argument(
        "--tune-limit", type=argtypes.limit, default=0, help="baselines --tune: first N episodes (0 = all)"
    )
    s.add_argument(
        "--ship",
        action="store_true",
        help="baselines --tune: write the tuned settings, the SASRec fits and the fusion into the package (developers)",
    )
    s.add_argument("--tune-only", action="store_true", help="baselines --tune: skip the tables")
    s.add_argument(
        "--with-untuned",
        action="store_true",
        help="baselines: also run each tunable ranker with its defaults (<name>-untuned rows)",
    )
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # `kill` (SIGTERM) takes the same way out as Ctrl-C: writers clean up, finished rows stay, one line.
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return int(args.func(args) or 0)
    except RecThinkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = (
            f"; finished rows are kept in {args.out} (run the same command to resume)"
            if "out" in args
            else ""
        )
        print(f"error: interrupted{where}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (permissions, full disk, a path that is not a folder)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
