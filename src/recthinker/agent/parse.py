"""Parsing model text: the `<analyze>`/`<plan>`/`<answer>` tags of an agent turn and candidate rankings.

Nothing here raises on model text: every problem comes back as a message the loop can show the model,
and an unusable answer becomes an invalid ranking (which scores 0; we never fill in candidate order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recthinker.llm import parse_hermes_tool_calls

_TAG_RE = {
    tag: re.compile(rf"<{tag}>(.*?)(?:</{tag}>|$)", re.DOTALL | re.IGNORECASE)
    for tag in ("analyze", "plan", "answer")
}
_LABEL_RE = re.compile(r"\[\s*(\d{1,4})\s*\]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One assistant turn split into its parts."""

    analyze: str  # "" when absent
    plan: str
    tool_calls: list[dict[str, Any]]  # OpenAI tool_calls (name + JSON-string arguments)
    answer: str | None  # text inside <answer>, None when absent
    content: str  # the text without valid tool-call blocks
    malformed_calls: int = 0  # <tool_call> blocks that did not parse


def parse_turn(text: str, native_tool_calls: Sequence[dict[str, Any]] = ()) -> Turn:
    """Split an assistant message into analysis, plan, tool calls and answer.

    >>> t = parse_turn('<analyze>a</analyze><plan>p</plan><tool_call>{"name": "x", "arguments": {}}</tool_call>')
    >>> t.analyze, t.plan, t.tool_calls[0]["function"]["name"], t.answer
    ('a', 'p', 'x', None)
    """
    text = text or ""
    content, calls = parse_hermes_tool_calls(text)
    calls = [*native_tool_calls, *calls]
    malformed = content.count("<tool_call>")
    parts = {}
    for tag, rx in _TAG_RE.items():
        m = rx.search(content)
        parts[tag] = m.group(1).strip() if m else None
    return Turn(
        analyze=parts["analyze"] or "",
        plan=parts["plan"] or "",
        tool_calls=list(calls),
        answer=parts["answer"],
        content=content,
        malformed_calls=malformed,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedRanking:
    """Candidate ids in the model's order, and what was wrong (empty `problems` = valid)."""

    items: tuple[str, ...]
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def parse_ranking(text: str | None, candidates: Sequence[str]) -> ParsedRanking:
    """Map an answer such as "[3] > [1] > [2]" back to candidate ids.

    Labels [1]..[n] refer to `candidates` in prompt order; exact candidate ids are accepted too (one per
    line or separated by ">"). A ranking is valid only if it lists every candidate exactly once; a repeated
    label keeps its first position but still makes the answer invalid.

    >>> parse_ranking("[2] > [1] > [3]", ["a", "b", "c"]).items
    ('b', 'a', 'c')
    >>> parse_ranking("[2] > [2] > [9]", ["a", "b", "c"]).problems
    ['label [2] listed twice', 'label [9] is not a candidate (use [1]..[3])', 'missing [1], [3]']
    """
    if text is None or not text.strip():
        return ParsedRanking(items=(), problems=["no <answer> with a ranking"])
    n = len(candidates)
    order: list[int] = []
    problems: list[str] = []
    labels = _LABEL_RE.findall(text)
    if labels:
        for raw in labels:
            k = int(raw)
            if not 1 <= k <= n:
                problems.append(f"label [{k}] is not a candidate (use [1]..[{n}])")
            elif k - 1 in order:
                problems.append(f"label [{k}] listed twice")
            else:
                order.append(k - 1)
    else:
        index = {c: i for i, c in enumerate(candidates)}
        for piece in re.split(r"\s*(?:>|\n|;)\s*", text.strip()):
            piece = piece.strip().strip(",").strip()
            if not piece:
                continue
            if piece not in index:
                problems.append(f"{piece[:60]!r} is neither a label [k] nor a candidate id")
            elif index[piece] in order:
                problems.append(f"{piece[:60]!r} listed twice")
            else:
                order.append(index[piece])
    missing = [k for k in range(n) if k not in order]
    if missing:
        problems.append("missing " + ", ".join(f"[{k + 1}]" for k in missing))
    return ParsedRanking(items=tuple(candidates[k] for k in order), problems=problems)


def resolve_candidate(ref: object, candidates: Sequence[str]) -> str | None:
    """A candidate id from a label ("[3]", "3", 3) or an exact id; None if it is neither.

    >>> resolve_candidate("[2]", ["a", "b"]), resolve_candidate("a", ["a", "b"]), resolve_candidate("z", ["a"])
    ('b', 'a', None)
    """
    if isinstance(ref, int) and not isinstance(ref, bool):
        return candidates[ref - 1] if 1 <= ref <= len(candidates) else None
    if not isinstance(ref, str):
        return None
    text = ref.strip()
    if text in candidates:
        return text
    m = re.fullmatch(r"\[?\s*(\d{1,4})\s*\]?", text)
    if m and 1 <= int(m.group(1)) <= len(candidates):
        return candidates[int(m.group(1)) - 1]
    return None
