"""Prompt text: the packaged templates in `prompts/`, item rendering, and the prompt-mode tool format.

In *prompt mode* (any chat model, e.g. the bundled SmolLM2 whose template has no tool format) tool schemas
go into the system prompt and tool calls / results travel as text in exactly the shape the Qwen2.5 /
Hermes chat template renders them (`<tool_call>` blocks, `<tool_response>` user turns). SFT rows keep the
structured OpenAI form; rendered through a Qwen-style template they become the same text.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import pandas as pd
import yaml

from recthinker.llm.base import render_tool_call
from recthinker.types import Episode


@cache
def template(name: str) -> str:
    """A packaged prompt template (`agent/prompts/<name>.md`)."""
    return resources.files("recthinker.agent").joinpath("prompts", f"{name}.md").read_text(encoding="utf-8")


@cache
def messages() -> dict[str, Any]:
    """The short model-facing texts of the loop (`agent/prompts/messages.yaml`)."""
    text = (
        resources.files("recthinker.agent").joinpath("prompts", "messages.yaml").read_text(encoding="utf-8")
    )
    return yaml.safe_load(text)


def prompts_hash() -> str:
    """sha256 over every packaged prompt file: recorded in each run's config to tie runs to prompts."""
    h = hashlib.sha256()
    for path in sorted(
        resources.files("recthinker.agent").joinpath("prompts").iterdir(), key=lambda p: p.name
    ):
        if path.name.endswith((".md", ".jinja", ".yaml")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def render_item(item_id: str, items: pd.DataFrame | None, max_chars: int = 90) -> str:
    """One line for an item: title (year) | categories, cut to `max_chars`."""
    if items is None or item_id not in items.index:
        return item_id
    row = items.loc[item_id]
    title = str(row.get("title", item_id))
    year = row.get("year")
    if isinstance(year, float) and not math.isnan(year) and f"({int(year)})" not in title:
        title = f"{title} ({int(year)})"
    cats = row.get("categories")
    text = title + (f" | {', '.join(list(cats)[:4])}" if cats is not None and len(cats) else "")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def task_prompt(episode: Episode, items: pd.DataFrame | None, *, n_history: int, instruction: str) -> str:
    """The user message that states the task: recent history and the labelled candidates."""
    history = episode.history[-n_history:] if n_history > 0 else ()
    lines_h = "\n".join(f"- {render_item(i, items)}" for i in history) or "- (none)"
    lines_c = "\n".join(f"[{k}] {render_item(c, items)}" for k, c in enumerate(episode.candidates, start=1))
    return (
        template("task")
        .format(
            user_id=episode.user_id,
            n_history=len(history),
            n_history_total=len(episode.history),
            history=lines_h,
            candidates=lines_c,
            instruction=instruction,
        )
        .strip()
    )


def tool_line(tool: dict[str, Any]) -> str:
    """One tool as one line: `- name(params): first paragraph of the description param: description ...`.

    >>> tool_line({"type": "function", "function": {"name": "f", "description": "Do it.\\n\\nMore.",
    ...     "parameters": {"type": "object", "properties": {"k": {"type": "integer", "description": "How many."}}}}})
    '- f(k): Do it. k: How many.'
    """
    f = tool.get("function", tool)
    props = (f.get("parameters") or {}).get("properties") or {}
    head = (f.get("description") or "").split("\n\n")[0].replace("\n", " ")
    params = "".join(f" {k}: {(p.get('description') or '').replace(chr(10), ' ')}" for k, p in props.items())
    return f"- {f['name']}({', '.join(props)}): {head}{params}"


def tools_block(tools: Sequence[dict[str, Any]]) -> str:
    """The `# Tools` section, one line per tool: the text `prompts/chat_template.jinja` writes for `tools=`."""
    return "\n# Tools\n" + "".join("\n" + tool_line(t) for t in tools) + "\n"


def render_for_prompt_mode(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical OpenAI messages -> plain role/content messages with tool calls and results as text.

    Assistant tool calls become `<tool_call>` blocks after the content; consecutive `tool` messages merge
    into one user turn of `<tool_response>` blocks (what the Qwen2.5 chat template does).
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "assistant":
            blocks = [
                render_tool_call(c["function"]["name"], _args(c["function"]["arguments"]))
                for c in m.get("tool_calls") or []
            ]
            content = "\n".join(x for x in [m.get("content") or "", *blocks] if x)
            out.append({"role": "assistant", "content": content})
        elif role == "tool":
            block = f"<tool_response>\n{m.get('content', '')}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]


def _args(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
