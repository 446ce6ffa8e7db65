"""The composition root: every ranker kind, its name and spec, and the one function that builds it.

    spec = parse_ranker_spec("sft=agent@outputs/train-cpu/sft/adapter")
    ranker = build_ranker(spec, bench, "dense/test")                        # an AgentRanker named "sft"
    ranker = build_ranker("teacher", bench, "dense/test", teacher_weights=fit_teacher(bench))

The command line (`evaluate`, `bench baselines`), the training pipeline's evaluation, rollouts and the
benchmarks build rankers here and nowhere else. The kinds:

- the classic scorers (`recthinker.baselines.SCORER_NAMES`), fitted on the episode set's background with
  the settings tuned on validation (`baselines.tuned.tuned_params`), and `<name>-untuned`, the same with
  the dataclass defaults;
- `fusion`, every tool signal combined by the learned fusion (`agent/fusion.py`), fitted on the
  benchmark's validation episodes; no LLM;
- `teacher`, the bootstrap teacher: a scripted policy over the real tools (`agent/teacher.py`); its weights
  are fitted by training (`train/teacher.py`), so the caller passes them (or a function that fits them);
- the LLM kinds, which take a chat model (`KIND@MODEL`): the agent (`agent`; `agent-evidence` answers in
  form (c)), the passive baselines `zero-shot` and `fixed-workflow`, and answer form (b), `pointwise` and
  `pointwise-evidence`. Their agent settings come from `agent.rankers.default_config`, the one place that
  applies them per kind (a trained model's `agent.json` included).

Adding a kind: its name below, its branch in `build_ranker`, its settings (if it runs the agent loop) in
`default_config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple

from recthinker.baselines import SCORER_NAMES, fitted_ranker
from recthinker.baselines.tuned import GRIDS, tuned_params
from recthinker.errors import ConfigError, RecThinkerError

if TYPE_CHECKING:
    import pandas as pd

    from recthinker.agent.loop import AgentConfig
    from recthinker.agent.teacher import TeacherWeights
    from recthinker.data.prepared import Benchmark
    from recthinker.llm import ChatModel
    from recthinker.tools.resources import Resources
    from recthinker.types import Ranker

CLASSIC_KINDS = SCORER_NAMES  # fitted on each episode set's background, with the tuned settings
UNTUNED_KINDS = tuple(f"{n}-untuned" for n in GRIDS if GRIDS[n] != [{}])  # the same with the defaults
TEACHER = "teacher"  # the bootstrap teacher: a scripted policy over the real tools
FUSION = "fusion"  # every tool signal through the learned fusion (agent/fusion.py), no LLM
AGENT_KINDS = ("agent", "agent-evidence")  # the agent investigates with the tools; -evidence: answer form (c)
PASSIVE_KINDS = ("zero-shot", "fixed-workflow")  # LLM baselines that choose no tools
POINTWISE_KINDS = ("pointwise", "pointwise-evidence")  # answer form (b): log P(Yes) per candidate
LLM_KINDS = AGENT_KINDS + PASSIVE_KINDS + POINTWISE_KINDS  # the kinds that take a model (KIND@MODEL)
KINDS = CLASSIC_KINDS + (FUSION,) + UNTUNED_KINDS + LLM_KINDS + (TEACHER,)
LABEL = re.compile(r"\w[\w.+@-]*")  # a ranker's label names its folder and a table row


class RankerSpec(NamedTuple):
    """`[LABEL=]KIND[@MODEL]`: which ranker (`kind`), what to call it (`label`: its harness folder and
    table row) and, for LLM kinds, which chat model (`model`: a `load_chat_model` spec; None: the caller's
    default)."""

    label: str
    kind: str
    model: str | None = None


def parse_ranker_spec(spec: str) -> RankerSpec:
    """`[LABEL=]KIND[@MODEL]` -> RankerSpec(label, kind, model spec or None).

    >>> parse_ranker_spec("sft=agent@outputs/train-cpu/sft/adapter")
    RankerSpec(label='sft', kind='agent', model='outputs/train-cpu/sft/adapter')
    >>> parse_ranker_spec("fixed-workflow@base")
    RankerSpec(label='fixed-workflow@base', kind='fixed-workflow', model='base')
    >>> parse_ranker_spec("agent@http://localhost:8080/v1").label
    'agent@http_localhost_8080_v1'
    >>> parse_ranker_spec("ease")
    RankerSpec(label='ease', kind='ease', model=None)
    """
    label, eq, rest = spec.partition("=")
    if not eq:
        label, rest = "", spec
    kind, at, model = rest.partition("@")
    if at and not model:
        raise RecThinkerError(f"--ranker {spec!r}: nothing after '@' (give a model spec, e.g. agent@base)")
    if not label and at:  # a path or URL is not a folder name: `agent@/m/x.gguf` is labelled agent@m_x.gguf
        label = f"{kind}@" + re.sub(r"[^\w.+@-]+", "_", model).strip("_.")
    label = label or kind
    if not LABEL.fullmatch(label):
        raise RecThinkerError(
            f"--ranker {spec!r}: name it with LABEL= (letters, digits and . _ + @ -, not starting with a dot)"
        )
    return RankerSpec(label, kind, model or None)


def build_ranker(
    spec: RankerSpec | str,
    bench: Benchmark | None,
    episode_set: str | None = None,
    *,
    resources: Resources | None = None,
    items: pd.DataFrame | None = None,
    seed: int = 42,
    model: str | os.PathLike | ChatModel | None = None,
    models: MutableMapping[Any, ChatModel] | None = None,
    threads: int = 1,
    teacher_weights: TeacherWeights | Callable[[], TeacherWeights] | None = None,
    config: AgentConfig | None = None,
) -> Ranker:
    """The ranker `spec` names, for the episodes of `episode_set` in `bench`, named by the spec's label.

    Args:
        spec: A `RankerSpec`, or its text `[LABEL=]KIND[@MODEL]`.
        bench: The benchmark: the set's background, where fitted models are cached, the catalog. May be
            None when `resources` and `items` are given.
        episode_set: The episode set ranked (its background and tools); unused when `resources` is given.
        resources: The tools' inputs when the caller holds them (the pipeline, rollouts over the training
            background); by default loaded for `episode_set` with `seed`, and only for kinds that use
            tools. Classic scorers then fit on `resources.log` with `resources.seed`.
        items: The catalog; by default `bench.items`.
        seed: Scorer fits and the tools' resources.
        model: For LLM kinds without `@MODEL`: a `load_chat_model` spec (`--model`) or a loaded `ChatModel`.
        models: Loaded chat models by spec, filled and shared by the rankers that name the same one.
        threads: CPU threads of the in-process llama.cpp models loaded here.
        teacher_weights: The teacher's fitted weights, or a function that fits them (called only when the
            teacher is built; fitting is training's, `train.teacher.fit_teacher`).
        config: The agent settings of the teacher and the LLM kinds that run the agent loop; by default
            `default_config(kind, model)`.

    Raises:
        RecThinkerError: an unknown kind, a model given to a kind that takes none, or (ConfigError) a
            teacher without weights; what loading a model or the resources raises passes through.
    """
    # The agent stack (tool indices, chat back ends) is imported here, when a ranker that needs it is built:
    # the command line reads the kinds above at start-up, and `recthinker --help` stays fast.
    if isinstance(spec, str):
        spec = parse_ranker_spec(spec)
    label, kind, model_spec = spec
    if model_spec is not None and kind not in LLM_KINDS:
        raise RecThinkerError(
            f"--ranker {kind}@{model_spec}: only LLM rankers ({', '.join(LLM_KINDS)}) take a model"
        )
    if kind in CLASSIC_KINDS or kind in UNTUNED_KINDS:
        name = kind.removesuffix("-untuned")
        if kind in UNTUNED_KINDS:
            params = {}
        elif resources is not None and bench is None:
            params = resources.scorer_params.get(name, {})
        else:
            params = tuned_params(bench, name)
        if resources is not None:
            ranker = fitted_ranker(name, resources.log, resources.model_dir, resources.seed, params)
        else:
            log_ = bench.background(episode_set)
            ranker = fitted_ranker(
                name, log_, bench.root / "models", seed, params, bench.train_background(episode_set)
            )
    elif kind == FUSION:
        # the agent stack, imported when a ranker needs it (see above)
        from recthinker.agent.fusion import FusionRanker, fit_fusion

        if bench is None:
            raise ConfigError("the fusion ranker needs a benchmark: it is fitted on its validation episodes")
        if resources is None:
            resources = _resources(bench, episode_set, seed)
        ranker = FusionRanker(resources, fit_fusion(bench, seed=seed))
    elif kind == TEACHER:
        # the agent stack, imported when a ranker needs it (see above)
        from recthinker.agent.rankers import default_config
        from recthinker.agent.teacher import TeacherRanker

        if teacher_weights is None:
            raise ConfigError("the teacher ranker needs its fitted weights (teacher_weights)")
        weights = teacher_weights() if callable(teacher_weights) else teacher_weights
        if resources is None:
            resources = _resources(bench, episode_set, seed)
        items = bench.items if items is None else items
        ranker = TeacherRanker(resources, items, weights, config or default_config(kind))
    elif kind in LLM_KINDS:
        # the agent stack, imported when a ranker needs it (see above)
        from recthinker.agent.fusion import with_fusion
        from recthinker.agent.pointwise import PointwiseRanker
        from recthinker.agent.rankers import AgentRanker, SignalTau, default_config

        chat = _chat_model(model if model_spec is None else model_spec, models, threads)
        if resources is None:
            resources = _resources(bench, episode_set, seed)
        if bench is not None and kind in AGENT_KINDS:  # answer form (c) ranks by the learned fusion
            resources = with_fusion(resources, bench, seed)
        items = bench.items if items is None else items
        if kind in POINTWISE_KINDS:
            pointwise = PointwiseRanker(chat, resources, items, with_evidence=kind == "pointwise-evidence")
            ranker = SignalTau(pointwise, resources)
        else:
            ranker = AgentRanker(kind, chat, resources, items, config or default_config(kind, chat))
    else:
        raise RecThinkerError(f"unknown ranker {kind!r}: use one of {', '.join(KINDS)}")
    ranker.name = label
    return ranker


def _resources(bench: Benchmark, episode_set: str | None, seed: int) -> Resources:
    from recthinker.tools.build import load_resources  # imported when a ranker needs it (see build_ranker)

    return load_resources(bench, episode_set, seed=seed)


def _chat_model(
    spec: str | os.PathLike | ChatModel | None, models: MutableMapping[Any, ChatModel] | None, threads: int
) -> ChatModel:
    """`spec` itself when it is a loaded model; else `load_chat_model(spec)`, through the `models` cache."""
    from recthinker.llm import load_chat_model  # imported when a ranker needs it (see build_ranker)

    if spec is not None and not isinstance(spec, str | os.PathLike):
        return spec
    if models is None:
        return load_chat_model(spec, n_threads=threads)
    if spec not in models:
        models[spec] = load_chat_model(spec, n_threads=threads)
    return models[spec]
