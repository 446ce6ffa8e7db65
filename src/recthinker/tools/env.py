"""`RecEnv`: one ranking episode; its public methods are the tools the model may call, and `reset`.

A tool is one method declared with `@tool(...)`. Its signature and Google-style docstring are the schema
the model sees (`transformers.utils.get_json_schema`, `tool_schemas()`); its body checks what the types
cannot express and writes the observation; the decorator records the rest once: the evidence signal the
tool reveals (a key of `ToolHost.signals`, which answer form (c) and the teacher build on), the arguments of
a typical call (the fixed-workflow baseline, `bench tools`, the tests) and the cap on its `k`. `TOOLS` holds
the declarations in the order of the class; every list of tools derives from it.

TRL constructs environments itself, without arguments, so it gets a factory,
`GRPOTrainer(environment_factory=functools.partial(RecEnv, resources))`; it lists the public functions of
the class as the tools (`reset` it calls itself) and calls them with the model's keyword arguments. Our own
code -- the agent loop, rankers, teacher, benchmarks -- holds a `ToolHost` around the environment: it runs a
tool by exact name (`host.call(name, arguments) -> Observation`), reads the evidence signals and the
episode's counts (`n_calls`, `n_errors`, `ok_calls`), none of which the model can call.

Model mistakes (unknown tool, unknown argument, wrong type, unknown item) come back as error observations
that say how to fix the call, and are counted per episode. Our own bugs raise. `Resources` are shared
read-only, so one environment per thread may run over the same resources.

    host = ToolHost(RecEnv(load_resources(ensure_benchmark("ml-1m"), "dense/test")))
    host.reset_episode(episode)
    print(host.call("user_history", {"k": 5}).text)

Why ~520 lines: it holds one concept, the tools. `@tool`, `RecEnv` and `ToolHost` are one mechanism (the
decorator's wrapper runs through `RecEnv._run`, and `ToolHost` calls `RecEnv._call`), and keeping them in
one file is what makes adding a tool one edit here: a method under `@tool`, plus its test.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recthinker.errors import DataError
from recthinker.tools import collab, item, user
from recthinker.tools.item import Labels
from recthinker.tools.resources import CF_MODELS, Resources
from recthinker.types import Episode

MAX_CHARS = 1200  # hard bound on one observation's text
MAX_INFO_IDS = 10  # ids per item_info call
RELATION_WINDOW = 50  # most recent history items that item relations compare against
SEARCH_SCOPES = ("candidates", "catalog", "history")


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What a tool call returns to the model: text, and whether the call was a mistake."""

    text: str
    ok: bool = True
    error: str = ""  # "" | "unknown_tool" | "bad_arguments" | "unknown_item"


class ToolCallError(Exception):
    """A model mistake inside a tool call; becomes an error `Observation`, never escapes `RecEnv`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def clip(text: str, limit: int = MAX_CHARS) -> str:
    """`text` cut at a line boundary to at most `limit` characters, saying how much was left out.

    >>> clip("a\\nb\\nc", limit=100)
    'a\\nb\\nc'
    >>> clip("\\n".join(["x" * 30] * 5), limit=80).splitlines()[1:]
    ['... (4 more lines cut: ask for fewer)']
    """
    if len(text) <= limit:
        return text
    lines = text.split("\n")
    kept: list[str] = []
    size = 0
    for n, line in enumerate(lines):
        note = f"... ({len(lines) - n} more lines cut: ask for fewer)"
        if size + len(line) + 1 + len(note) > limit:
            return "\n".join([*kept, note]) if kept else text[: limit - 3] + "..."
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


# ---- declaring a tool ---------------------------------------------------------------------------------

_TYPE_NAMES = {int: "integer", str: "string", list[str]: "list of strings"}  # in usage lines
_TYPE_WORDS = {int: "an integer", str: "a string", list[str]: "a list of strings"}  # in type errors


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """One tool as `@tool` declares it: the method as written, its parameters and what the decorator records."""

    name: str
    fn: Callable[..., str]  # the method body: (env, **checked arguments) -> observation text
    params: dict[str, tuple[Any, Any]]  # argument -> (type hint, default or inspect.Parameter.empty)
    signal: str  # the `ToolHost.signals` key the output is evidence of ("" none); `{arg}`: the call's arg
    example: dict[str, Any]  # arguments of a typical call, valid in every episode
    max_k: int  # cap on argument `k`: a larger k is capped, with a note (0: no k)

    def usage(self) -> str:
        """One-line usage, e.g. `search_items(query: string, scope: string = "candidates", k: integer = 5)`."""
        parts = []
        for p, (hint, default) in self.params.items():
            text = f"{p}: {_TYPE_NAMES.get(hint, str(hint))}"
            parts.append(text if default is inspect.Parameter.empty else f"{text} = {json.dumps(default)}")
        return f"{self.name}({', '.join(parts)})"

    def signal_for(self, arguments: Mapping[str, Any]) -> str:
        """The signal a successful call with `arguments` revealed (unset arguments take their defaults)."""
        defaults = {p: d for p, (_, d) in self.params.items() if d is not inspect.Parameter.empty}
        return self.signal.format_map({**defaults, **arguments})

    def check(self, param: str, value: object) -> object:
        """`value` if it has the type declared for `param` (an integral float counts as an int)."""
        hint = self.params[param][0]
        if hint is int and isinstance(value, float) and value.is_integer():
            return int(value)
        ok = (
            (hint is int and isinstance(value, int) and not isinstance(value, bool))
            or (hint is str and isinstance(value, str))
            or (
                hint == list[str]
                and isinstance(value, list | tuple)
                and all(isinstance(v, str) for v in value)
            )
        )
        if not ok:
            raise ToolCallError(
                "bad_arguments",
                f"{self.name}: argument {param!r} must be {_TYPE_WORDS.get(hint, hint)}, got "
                f"{json.dumps(value, default=str)}. Usage: {self.usage()}",
            )
        return list(value) if hint == list[str] else value  # type: ignore[arg-type]

    def cap_k(self, k: int) -> tuple[int, str]:
        """(k within 1..max_k, the note to append when it was capped); k < 1 is a mistake."""
        if k < 1:
            raise ToolCallError(
                "bad_arguments", f"{self.name}: k must be at least 1, got {k}. Usage: {self.usage()}"
            )
        return (self.max_k, f"\n(k capped at {self.max_k})") if k > self.max_k else (k, "")


def tool(
    *, signal: str = "", example: dict[str, Any] | None = None, max_k: int = 0
) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Declare a `RecEnv` method as a tool.

    The method keeps its signature and docstring (TRL and `get_json_schema` read them). Calling it -- as TRL
    does, with the model's keyword arguments -- checks the argument types, caps `k` at `max_k`, runs the body,
    counts the call and returns the observation text; a model mistake comes back as text, never raised.

    Args:
        signal: The key of `ToolHost.signals` whose evidence the output shows ("" for none); `{arg}` is
            replaced by the call's value of `arg`, e.g. `"cf_{model}"`.
        example: Arguments of a typical call, valid in every episode.
        max_k: Cap on the argument `k` (0 when the tool has no `k`).
    """

    def declare(fn: Callable[..., str]) -> Callable[..., str]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        spec = ToolSpec(
            name=fn.__name__,
            fn=fn,
            params={p.name: (hints[p.name], p.default) for p in list(sig.parameters.values())[1:]},
            signal=signal,
            example=dict(example or {}),
            max_k=max_k,
        )

        @functools.wraps(fn)
        def method(self: RecEnv, *args: Any, **kwargs: Any) -> str:
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError:
                # a plain method fails to bind too: raise Python's own TypeError, whose text TRL shows the model
                fn(self, *args, **kwargs)
                raise
            bound.apply_defaults()
            return self._run(spec, dict(list(bound.arguments.items())[1:])).text

        method.spec = spec  # type: ignore[attr-defined]
        return method

    return declare


# ---- the environment ----------------------------------------------------------------------------------


class RecEnv:
    """One ranking episode (a user, their candidates). Its public methods are the tools, plus `reset`."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources
        self._clear()

    def _clear(self) -> None:
        self._episode_id = ""
        self._user_id = ""
        self._candidates: tuple[str, ...] = ()
        self._history: list[str] = []  # the user's background items, oldest first
        self._history_set: set[str] = set()
        self._labels = Labels(self._res.catalog, ())
        self._n_calls = 0
        self._n_errors = 0
        self._calls_by_tool: Counter[str] = Counter()
        self._errors_by_kind: Counter[str] = Counter()
        self._ok_calls: list[tuple[str, dict[str, Any]]] = []  # successful calls this episode, in order

    def reset(
        self,
        *,
        user_id: str,
        candidates: list[str],
        history: list[str] | tuple[str, ...] = (),
        episode_id: str = "",
        **_: object,
    ) -> str | None:
        """Start an episode from a row with an `Episode`'s fields; clears all state. Returns None.

        Other fields (`target`, `prompt`, ...) are accepted and dropped: no tool can read the target.
        """
        self._clear()
        if not candidates or not all(isinstance(c, str) for c in candidates):
            raise DataError(f"episode {episode_id!r}: candidates must be a non-empty list of item ids")
        self._episode_id, self._user_id = str(episode_id), str(user_id)
        self._candidates = tuple(candidates)
        bg = self._res.user_rows(self._user_id)
        self._history = bg["item_id"].tolist() if len(bg) else [str(h) for h in history]
        self._history_set = set(self._history)
        self._labels = Labels(self._res.catalog, self._candidates)
        return None

    # ---- running a tool (ToolHost calls these by name) ----------------------------------------------------

    def _call(self, name: str, arguments: dict | str | None) -> Observation:
        """Run tool `name` with `arguments` (a dict or its JSON text); model mistakes become error observations."""
        spec = TOOLS.get(name)
        if spec is None:
            return self._mistake(
                "unknown_tool", f"Unknown tool {name!r}. Available tools: {', '.join(TOOLS)}.", name
            )
        if arguments is None or arguments == "":
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            return self._mistake(
                "bad_arguments", f"Arguments of {name} must be a JSON object. Usage: {spec.usage()}", name
            )
        unknown = sorted(set(arguments) - set(spec.params))
        missing = [
            p for p, (_, d) in spec.params.items() if d is inspect.Parameter.empty and p not in arguments
        ]
        if unknown or missing:
            what = f"unknown argument(s) {unknown}" if unknown else f"missing argument(s) {missing}"
            return self._mistake("bad_arguments", f"{name}: {what}. Usage: {spec.usage()}", name)
        return self._run(spec, arguments)

    def _run(self, spec: ToolSpec, arguments: dict[str, Any]) -> Observation:
        """Check `arguments` against `spec`, cap `k`, run the body and count the call."""
        if not self._candidates:
            raise RuntimeError("RecEnv: a tool was called before reset()")
        try:
            values = {p: spec.check(p, v) for p, v in arguments.items()}
            kwargs, note = dict(values), ""
            if spec.max_k:
                kwargs["k"], note = spec.cap_k(values.get("k", spec.params["k"][1]))
            text = spec.fn(self, **kwargs) + note
        except ToolCallError as e:
            return self._mistake(e.kind, str(e), spec.name)
        self._n_calls += 1
        self._calls_by_tool[spec.name] += 1
        self._ok_calls.append((spec.name, values))
        return Observation(text=clip(text))

    def _mistake(self, kind: str, message: str, name: str) -> Observation:
        self._n_calls += 1
        self._n_errors += 1
        self._calls_by_tool[name] += 1
        self._errors_by_kind[kind] += 1
        return Observation(text=clip(message), ok=False, error=kind)

    def _signals(self, models: tuple[str, ...]) -> dict[str, np.ndarray]:
        res, cands, hist = self._res, list(self._candidates), self._history
        out = {
            "popularity": item.popularity(res.index, cands),
            "item_relations": collab.relation_signal(res.index, hist[-RELATION_WINDOW:], cands),
            "similar_users": collab.similar_users_signal(res.index, self._user_id, hist, cands),
            "genre_match": user.category_match(res.catalog, user.summarize(res, self._user_id, hist), cands),
        }
        for m in models:
            out[f"cf_{m}"] = collab.cf_model_scores(res, m, self._user_id, hist, cands)
        return out

    def _item(self, ref: str, *, candidates_only: bool = False) -> str:
        """An item id from what the model wrote: a candidate label `[3]` (or `3`) or an exact item id."""
        ref = ref.strip()
        if ref in self._labels.label or (not candidates_only and ref in self._res.catalog):
            return ref
        m = re.fullmatch(r"\[\s*(\d+)\s*\]\s*(.*)|(\d+)", ref)
        if m:
            n = int(m.group(1) or m.group(3))
            rest = (m.group(2) or "").strip()
            if 1 <= n <= len(self._candidates) and rest in ("", self._candidates[n - 1]):
                return self._candidates[n - 1]
        where = "a candidate" if candidates_only else "an item"
        raise ToolCallError(
            "unknown_item",
            f"Unknown item {ref!r}. Name {where} by its label [1]-[{len(self._candidates)}] or by its id exactly "
            "as shown in the candidate list or the history.",
        )

    # ---- the tools, in the order the model's error messages list them -------------------------------------

    @tool(signal="genre_match", example={})
    def user_profile(self) -> str:
        """Summarise the user: demographics (when known) and preferences from their history.

        Gives top categories with their share of the history, release-year range, rating tendency
        against all users, activity level and how sparse the history is.
        """
        res, hist = self._res, self._history
        summary = user.summarize(res, self._user_id, hist)
        recent = [self._labels(i) for i in hist[-3:][::-1]]
        demo = user.demographics(res.users, self._user_id)
        return user.render_profile(self._user_id, demo, summary, len(res.index.users), recent)

    @tool(signal="genre_match", example={"k": 10}, max_k=15)
    def user_history(self, k: int = 10, keyword: str = "", page: int = 1) -> str:
        """List the user's past items, newest first: id, categories, rating, date.

        Args:
            k: Items per page (1-15).
            keyword: Only items whose title, year or category contains it; empty for all.
            page: Page number, from 1.
        """
        if page < 1:
            raise ToolCallError("bad_arguments", f"user_history: page must be at least 1, got {page}.")
        rows = user.history_rows(self._res, self._user_id, self._history)
        return user.render_history(self._res, rows, k, keyword, page, self._labels)

    @tool(signal="popularity", example={"item_ids": ["[1]", "[2]", "[3]"]})
    def item_info(self, item_ids: list[str]) -> str:
        """Show title, categories, popularity and mean rating of items.

        Args:
            item_ids: Up to 10 candidate labels like "[3]" or item ids.
        """
        if not item_ids:
            raise ToolCallError(
                "bad_arguments", f"item_info: give at least one id. Usage: {usage('item_info')}"
            )
        if len(item_ids) > MAX_INFO_IDS:
            raise ToolCallError(
                "bad_arguments", f"item_info: at most {MAX_INFO_IDS} ids per call, got {len(item_ids)}."
            )
        ids = list(dict.fromkeys(self._item(r) for r in item_ids))
        return item.render_item_info(self._res, ids, self._history_set, self._labels)

    @tool(example={"query": "love war", "scope": "candidates", "k": 5}, max_k=10)
    def search_items(self, query: str, scope: str = "candidates", k: int = 5) -> str:
        """Keyword search (BM25) over item titles, years and categories.

        Args:
            query: Words, e.g. "space war" or "Comedy 1995".
            scope: "candidates", "catalog" (all items) or "history".
            k: Results (1-10).
        """
        if scope not in SEARCH_SCOPES:
            raise ToolCallError(
                "bad_arguments", f"search_items: scope must be one of {list(SEARCH_SCOPES)}, got {scope!r}."
            )
        if not item.tokenize(query):
            raise ToolCallError("bad_arguments", 'search_items: query needs at least one word, e.g. "war".')
        among = {"candidates": list(self._candidates), "history": self._history, "catalog": None}[scope]
        hits = item.search(self._res, query, among, k)
        return item.render_search(self._res, query, scope, hits, self._history_set, self._labels)

    @tool(signal="similar_users", example={"k": 10}, max_k=20)
    def similar_users(self, k: int = 10) -> str:
        """Find the users most similar to this one and which candidates they chose.

        Args:
            k: Similar users (1-20).
        """
        nbrs = collab.similar_users(self._res.index, self._user_id, self._history, k)
        return collab.render_similar_users(self._res.index, nbrs, self._candidates, self._labels)

    @tool(signal="item_relations", example={})
    def item_relations(self, item_id: str = "") -> str:
        """Relate items: co-interaction strength (users who liked one also liked the other), shared categories.

        Args:
            item_id: A candidate label like "[3]" or an item id: its neighbours; empty: every candidate vs the recent history.
        """
        recent = self._history[-RELATION_WINDOW:]
        if not item_id.strip():
            return collab.render_relations(self._res, recent, self._candidates, self._labels)
        target = self._item(item_id)
        return collab.render_item_relations(self._res, target, recent, self._candidates, self._labels)

    @tool(signal="cf_{model}", example={"model": "als"})
    def cf_scores(self, model: str = "als") -> str:
        """Score the candidates with a collaborative-filtering model trained on all users.

        Args:
            model: "als" (matrix factorisation) or "sasrec" (sequential).
        """
        if model not in CF_MODELS:
            raise ToolCallError(
                "bad_arguments", f"cf_scores: model must be one of {list(CF_MODELS)}, got {model!r}."
            )
        scores = collab.cf_model_scores(self._res, model, self._user_id, self._history, self._candidates)
        return collab.render_cf_scores(model, scores, self._candidates, self._labels)


TOOLS: dict[str, ToolSpec] = {
    f.spec.name: f.spec for f in vars(RecEnv).values() if isinstance(getattr(f, "spec", None), ToolSpec)
}  # every declared tool, in the order of the class
TOOL_NAMES = tuple(TOOLS)


def tool_schemas() -> list[dict]:
    """JSON schemas of the tools, derived from their signatures and docstrings by transformers.

    Alphabetical, as TRL lists an environment's tools: GRPO prompts and inference then match.
    """
    from transformers.utils import get_json_schema  # heavy: only when schemas are needed

    # bound to a stand-in instance, so `self` is not a parameter
    return [get_json_schema(types.MethodType(getattr(RecEnv, name), object())) for name in sorted(TOOLS)]


def usage(name: str) -> str:
    """One-line usage of tool `name`, e.g. `similar_users(k: integer = 10)`."""
    return TOOLS[name].usage()


class ToolHost:
    """Our side of a `RecEnv`: run a tool by name, read the evidence signals and the episode's counts.

    The agent loop, rankers, teacher, benchmarks and rewards hold one; the model only sees the tools.
    """

    def __init__(self, env: RecEnv) -> None:
        self.env = env

    def reset_episode(self, episode: Episode) -> None:
        """`reset` from an `Episode`."""
        self.env.reset(**episode.to_dict())

    def call(self, name: str, arguments: dict | str | None = None) -> Observation:
        """Run tool `name` with `arguments` (a dict or its JSON text); model mistakes become error observations."""
        return self.env._call(name, arguments)

    def signals(self, models: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Each tool's numeric signal per candidate (candidate order), for rankers and the teacher.

        Keys: popularity, item_relations, similar_users, genre_match, and `cf_<model>` for each of `models`.
        """
        return self.env._signals(models)

    @property
    def evidence_order(self):
        """The resources' evidence combiner for answer form (c) (`Resources.evidence_order`), or None."""
        return self.resources.evidence_order

    @staticmethod
    def tool_schemas() -> list[dict]:
        """JSON schemas of the tools (`tool_schemas()`)."""
        return tool_schemas()

    @property
    def resources(self) -> Resources:
        return self.env._res

    @property
    def episode_id(self) -> str:
        return self.env._episode_id

    @property
    def user_id(self) -> str:
        return self.env._user_id

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.env._candidates

    @property
    def history(self) -> tuple[str, ...]:
        """The items the tools treat as this user's history (background), oldest first."""
        return tuple(self.env._history)

    @property
    def n_calls(self) -> int:
        """Tool calls this episode, mistakes included."""
        return self.env._n_calls

    @property
    def n_errors(self) -> int:
        return self.env._n_errors

    @property
    def calls_by_tool(self) -> Counter[str]:
        return self.env._calls_by_tool

    @property
    def errors_by_kind(self) -> Counter[str]:
        return self.env._errors_by_kind

    @property
    def ok_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """The successful calls this episode, in order: (tool, checked arguments; TRL's calls with defaults)."""
        return self.env._ok_calls
