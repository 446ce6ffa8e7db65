"""`RecEnv`: one ranking episode; its public methods are the tools the model may call.

The class has the shape TRL's `GRPOTrainer(environment_factory=RecEnv)` expects: a no-argument constructor
(resources come from `RecEnv.configure(resources)`), `reset(**row)` that clears all state and returns
`None` (the prompt already holds the task), and tool methods with type hints and Google-style docstrings,
from which `transformers.utils.get_json_schema` derives the schemas (`RecEnv.tool_schemas()`). The agent
loop calls tools through `env.call(name, arguments) -> Observation`, which looks tools up by exact name.

Model mistakes (unknown tool, unknown argument, wrong type, unknown item) come back as error observations
that say how to fix the call, and are counted per episode (`n_calls`, `n_errors`). Our own bugs raise.
`Resources` are shared read-only, so one `RecEnv` per thread may run over the same resources.

    RecEnv.configure(load_resources(ensure_benchmark("ml-1m"), "dense/test"))
    env = RecEnv()
    env.reset_episode(episode)
    print(env.call("user_history", {"k": 5}).text)
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from recthinker.errors import ConfigError, DataError
from recthinker.tools import collab, item, user
from recthinker.tools.item import Labels
from recthinker.tools.resources import CF_MODELS, Resources
from recthinker.types import Episode

MAX_CHARS = 1200  # hard bound on one observation's text
MAX_INFO_IDS = 10  # ids per item_info call
MAX_K = {"user_history": 15, "search_items": 10, "similar_users": 20}  # larger k is capped, with a note
RELATION_WINDOW = 50  # most recent history items that item relations compare against
SEARCH_SCOPES = ("candidates", "catalog", "history")
TOOL_NAMES = (
    "user_profile",
    "user_history",
    "item_info",
    "search_items",
    "similar_users",
    "item_relations",
    "cf_scores",
)


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


class host_method:  # noqa: N801 -- used as a decorator, like `property`
    """A method for our own code (agent loop, teacher, tests) that TRL must not offer the model as a tool.

    TRL lists an environment's tools as the public *functions* of its class
    (`inspect.getmembers(type(env), inspect.isfunction)`). Looked up on the class, this descriptor returns
    itself, which is not a function; on an instance it is an ordinary bound method.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return self if obj is None else types.MethodType(self.fn, obj)


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


class RecEnv:
    """One ranking episode (a user, their candidates). Public methods are the tools the model may call."""

    _default_resources: ClassVar[Resources | None] = None

    def __init__(self, resources: Resources | None = None) -> None:
        resources = resources or RecEnv._default_resources
        if resources is None:
            raise ConfigError("RecEnv has no Resources: pass them, or call RecEnv.configure(resources) first")
        self._res = resources
        self._clear()

    @classmethod
    def configure(cls, resources: Resources | None) -> None:
        """Set the resources that `RecEnv()` (as TRL constructs it, without arguments) uses."""
        cls._default_resources = resources

    @classmethod
    def tool_schemas(cls) -> list[dict]:
        """JSON schemas of the tools, derived from their signatures and docstrings by transformers."""
        from transformers.utils import get_json_schema

        # Alphabetical, as TRL lists an environment's tools: GRPO prompts and inference then match.
        return [
            get_json_schema(types.MethodType(getattr(cls, name), object())) for name in sorted(TOOL_NAMES)
        ]

    @property
    def resources(self) -> Resources:
        return self._res

    @property
    def history(self) -> tuple[str, ...]:
        """The items the tools treat as this user's history (background), oldest first."""
        return tuple(self._history)

    # ---- episode state ----------------------------------------------------------------------------------

    def _clear(self) -> None:
        self.episode_id = ""
        self.user_id = ""
        self.candidates: tuple[str, ...] = ()
        self._history: list[str] = []  # the user's background items, oldest first
        self._history_set: set[str] = set()
        self._labels = Labels(self._res.catalog, ())
        self.n_calls = 0
        self.n_errors = 0
        self.calls_by_tool: Counter[str] = Counter()
        self.errors_by_kind: Counter[str] = Counter()
        self.ok_calls: list[tuple[str, dict[str, Any]]] = []  # successful calls this episode, in order

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
        self.episode_id, self.user_id = str(episode_id), str(user_id)
        self.candidates = tuple(candidates)
        bg = self._res.user_rows(self.user_id)
        self._history = bg["item_id"].tolist() if len(bg) else [str(h) for h in history]
        self._history_set = set(self._history)
        self._labels = Labels(self._res.catalog, self.candidates)
        return None

    @host_method
    def reset_episode(self, episode: Episode) -> None:
        """`reset` from an `Episode`."""
        self.reset(**episode.to_dict())

    @host_method
    def call(self, name: str, arguments: dict | str | None = None) -> Observation:
        """Run tool `name` with `arguments` (a dict or its JSON text); model mistakes become error observations."""
        if name not in TOOL_NAMES:
            return self._mistake(
                "unknown_tool", f"Unknown tool {name!r}. Available tools: {', '.join(TOOL_NAMES)}.", name
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
                "bad_arguments", f"Arguments of {name} must be a JSON object. Usage: {usage(name)}", name
            )
        params = _signature(name)
        unknown = sorted(set(arguments) - set(params))
        missing = [p for p, (_, default) in params.items() if default is inspect.Parameter.empty]
        missing = [p for p in missing if p not in arguments]
        if unknown or missing:
            what = f"unknown argument(s) {unknown}" if unknown else f"missing argument(s) {missing}"
            return self._mistake("bad_arguments", f"{name}: {what}. Usage: {usage(name)}", name)
        return self._run(name, arguments)

    @host_method
    def signals(self, models: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Each tool's numeric signal per candidate (candidate order), for rankers and the teacher.

        Keys: popularity, item_relations, similar_users, genre_match, and `cf_<model>` for each of `models`.
        """
        res, cands, hist = self._res, list(self.candidates), self._history
        out = {
            "popularity": item.popularity(res.index, cands),
            "item_relations": collab.relation_signal(res.index, hist[-RELATION_WINDOW:], cands),
            "similar_users": collab.similar_users_signal(res.index, self.user_id, hist, cands),
            "genre_match": user.category_match(res.catalog, user.summarize(res, self.user_id, hist), cands),
        }
        for m in models:
            out[f"cf_{m}"] = collab.cf_model_scores(res, m, self.user_id, hist, cands)
        return out

    def _mistake(self, kind: str, message: str, name: str) -> Observation:
        self.n_calls += 1
        self.n_errors += 1
        self.calls_by_tool[name] += 1
        self.errors_by_kind[kind] += 1
        return Observation(text=clip(message), ok=False, error=kind)

    def _run(self, name: str, arguments: dict[str, Any]) -> Observation:
        if not self.candidates:
            raise RuntimeError("RecEnv: a tool was called before reset()")
        try:
            values = {p: _check(name, p, v) for p, v in arguments.items()}
            text = getattr(self, f"_{name}")(**values)
        except ToolCallError as e:
            return self._mistake(e.kind, str(e), name)
        self.n_calls += 1
        self.calls_by_tool[name] += 1
        self.ok_calls.append((name, values))
        return Observation(text=clip(text))

    def _item(self, ref: str, *, candidates_only: bool = False) -> str:
        """An item id from what the model wrote: a candidate label `[3]` (or `3`) or an exact item id."""
        ref = ref.strip()
        if ref in self._labels.label or (not candidates_only and ref in self._res.catalog):
            return ref
        m = re.fullmatch(r"\[\s*(\d+)\s*\]\s*(.*)|(\d+)", ref)
        if m:
            n = int(m.group(1) or m.group(3))
            rest = (m.group(2) or "").strip()
            if 1 <= n <= len(self.candidates) and rest in ("", self.candidates[n - 1]):
                return self.candidates[n - 1]
        where = "a candidate" if candidates_only else "an item"
        raise ToolCallError(
            "unknown_item",
            f"Unknown item {ref!r}. Name {where} by its label [1]-[{len(self.candidates)}] or by its id exactly "
            "as shown in the candidate list or the history.",
        )

    def _k(self, name: str, k: int) -> tuple[int, str]:
        if k < 1:
            raise ToolCallError(
                "bad_arguments", f"{name}: k must be at least 1, got {k}. Usage: {usage(name)}"
            )
        cap = MAX_K[name]
        return (cap, f"\n(k capped at {cap})") if k > cap else (k, "")

    # ---- tools ----------------------------------------------------------------------------------------

    def user_profile(self) -> str:
        """Summarise the user: demographics (when known) and preferences from their history.

        Gives top categories with their share of the history, release-year range, rating tendency
        against all users, activity level and how sparse the history is.
        """
        return self._run("user_profile", {}).text

    def _user_profile(self) -> str:
        res, hist = self._res, self._history
        summary = user.summarize(res, self.user_id, hist)
        recent = [self._labels(i) for i in hist[-3:][::-1]]
        demo = user.demographics(res.users, self.user_id)
        return user.render_profile(self.user_id, demo, summary, len(res.index.users), recent)

    def user_history(self, k: int = 10, keyword: str = "", page: int = 1) -> str:
        """List the user's past items, newest first: id, categories, rating, date.

        Args:
            k: Items per page (1-15).
            keyword: Only items whose title, year or category contains it; empty for all.
            page: Page number, from 1.
        """
        return self._run("user_history", {"k": k, "keyword": keyword, "page": page}).text

    def _user_history(self, k: int = 10, keyword: str = "", page: int = 1) -> str:
        k, note = self._k("user_history", k)
        if page < 1:
            raise ToolCallError("bad_arguments", f"user_history: page must be at least 1, got {page}.")
        rows = user.history_rows(self._res, self.user_id, self._history)
        return user.render_history(self._res, rows, k, keyword, page, self._labels) + note

    def item_info(self, item_ids: list[str]) -> str:
        """Show title, categories, popularity and mean rating of items.

        Args:
            item_ids: Up to 10 candidate labels like "[3]" or item ids.
        """
        return self._run("item_info", {"item_ids": item_ids}).text

    def _item_info(self, item_ids: list[str]) -> str:
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

    def search_items(self, query: str, scope: str = "candidates", k: int = 5) -> str:
        """Keyword search (BM25) over item titles, years and categories.

        Args:
            query: Words, e.g. "space war" or "Comedy 1995".
            scope: "candidates", "catalog" (all items) or "history".
            k: Results (1-10).
        """
        return self._run("search_items", {"query": query, "scope": scope, "k": k}).text

    def _search_items(self, query: str, scope: str = "candidates", k: int = 5) -> str:
        k, note = self._k("search_items", k)
        if scope not in SEARCH_SCOPES:
            raise ToolCallError(
                "bad_arguments", f"search_items: scope must be one of {list(SEARCH_SCOPES)}, got {scope!r}."
            )
        if not item.tokenize(query):
            raise ToolCallError("bad_arguments", 'search_items: query needs at least one word, e.g. "war".')
        among = {"candidates": list(self.candidates), "history": self._history, "catalog": None}[scope]
        hits = item.search(self._res, query, among, k)
        return item.render_search(self._res, query, scope, hits, self._history_set, self._labels) + note

    def similar_users(self, k: int = 10) -> str:
        """Find the users most similar to this one and which candidates they chose.

        Args:
            k: Similar users (1-20).
        """
        return self._run("similar_users", {"k": k}).text

    def _similar_users(self, k: int = 10) -> str:
        k, note = self._k("similar_users", k)
        nbrs = collab.similar_users(self._res.index, self.user_id, self._history, k)
        return collab.render_similar_users(self._res.index, nbrs, self.candidates, self._labels) + note

    def item_relations(self, item_id: str = "") -> str:
        """Relate items: co-interaction strength (users who liked one also liked the other), shared categories.

        Args:
            item_id: A candidate label like "[3]" or an item id: its neighbours; empty: every candidate vs the recent history.
        """
        return self._run("item_relations", {"item_id": item_id}).text

    def _item_relations(self, item_id: str = "") -> str:
        recent = self._history[-RELATION_WINDOW:]
        if not item_id.strip():
            return collab.render_relations(self._res, recent, self.candidates, self._labels)
        target = self._item(item_id)
        return collab.render_item_relations(self._res, target, recent, self.candidates, self._labels)

    def cf_scores(self, model: str = "als") -> str:
        """Score the candidates with a collaborative-filtering model trained on all users.

        Args:
            model: "als" (matrix factorisation) or "sasrec" (sequential).
        """
        return self._run("cf_scores", {"model": model}).text

    def _cf_scores(self, model: str = "als") -> str:
        if model not in CF_MODELS:
            raise ToolCallError(
                "bad_arguments", f"cf_scores: model must be one of {list(CF_MODELS)}, got {model!r}."
            )
        scores = collab.cf_model_scores(self._res, model, self.user_id, self._history, self.candidates)
        return collab.render_cf_scores(model, scores, self.candidates, self._labels)


# ---- argument checking, derived from the tool signatures --------------------------------------------------

_SIGNATURES: dict[str, dict[str, tuple[Any, Any]]] = {}


def _signature(name: str) -> dict[str, tuple[Any, Any]]:
    """Tool `name`'s parameters: name -> (type hint, default)."""
    if name not in _SIGNATURES:
        fn = getattr(RecEnv, name)
        hints = typing.get_type_hints(fn)
        _SIGNATURES[name] = {
            p.name: (hints[p.name], p.default)
            for p in inspect.signature(fn).parameters.values()
            if p.name != "self"
        }
    return _SIGNATURES[name]


_TYPE_WORDS = {int: "an integer", str: "a string", list[str]: "a list of strings"}


def usage(name: str) -> str:
    """One-line usage of a tool, e.g. `search_items(query: string, scope: string = "candidates", k: integer = 5)`."""
    words = {int: "integer", str: "string", list[str]: "list of strings"}
    parts = []
    for p, (hint, default) in _signature(name).items():
        text = f"{p}: {words.get(hint, str(hint))}"
        parts.append(text if default is inspect.Parameter.empty else f"{text} = {json.dumps(default)}")
    return f"{name}({', '.join(parts)})"


def _check(name: str, param: str, value: object) -> object:
    """`value` if it has the type the tool declares for `param` (an integral float counts as an int)."""
    hint = _signature(name)[param][0]
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    ok = (
        (hint is int and isinstance(value, int) and not isinstance(value, bool))
        or (hint is str and isinstance(value, str))
        or (hint == list[str] and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        raise ToolCallError(
            "bad_arguments",
            f"{name}: argument {param!r} must be {_TYPE_WORDS.get(hint, hint)}, got {json.dumps(value, default=str)}. "
            f"Usage: {usage(name)}",
        )
    return list(value) if hint == list[str] else value  # type: ignore[arg-type]
