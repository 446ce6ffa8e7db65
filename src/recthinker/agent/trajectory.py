"""`Trajectory`: everything one agent episode did -- messages, typed steps, tool calls, timings, tokens,
errors and the final ranking -- saved as JSONL and convertible to a TRL SFT row (`messages` + `tools`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recthinker.errors import DataError
from recthinker.jsonl import load_jsonl


@dataclass(slots=True, kw_only=True)
class ToolCallRecord:
    """One tool call the model asked for and what came back."""

    name: str
    arguments: dict[str, Any] | str  # the parsed arguments, or the raw string when they did not parse
    observation: str
    ok: bool
    error: str = ""  # "" | "unknown_tool" | "bad_arguments" | "budget" | ... (set by the environment)
    latency_s: float = 0.0


@dataclass(slots=True, kw_only=True)
class Step:
    """One assistant turn."""

    index: int
    content: str  # the raw assistant text
    analyze: str = ""
    plan: str = ""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    answer: str | None = None
    problems: list[str] = field(default_factory=list)  # format problems shown back to the model
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # model time for this turn


@dataclass(slots=True, kw_only=True)
class Trajectory:
    """One episode: built while the agent runs, then frozen into JSONL."""

    episode_id: str
    user_id: str
    candidates: list[str]
    target: str | None = None  # None when serving (unknown)
    kind: str = "agent"  # agent | zero-shot | fixed-workflow | teacher
    model: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)  # canonical OpenAI messages
    tools: list[dict[str, Any]] = field(default_factory=list)  # tool JSON schemas shown to the model
    steps: list[Step] = field(default_factory=list)
    ranking: list[str] = field(default_factory=list)
    valid: bool = False
    note: str = ""
    error: str = ""  # traceback when our own code failed on this episode
    latency_s: float = 0.0  # wall time of the whole episode
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [c for s in self.steps for c in s.tool_calls]

    @property
    def n_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def n_tool_errors(self) -> int:
        return sum(not c.ok for c in self.tool_calls)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def model_latency_s(self) -> float:
        return sum(s.latency_s for s in self.steps)

    def summary(self) -> dict[str, Any]:
        """Per-episode numbers the evaluation harness copies into its rows."""
        return {
            "tool_calls": self.n_tool_calls,
            "tool_errors": self.n_tool_errors,
            "turns": len(self.steps),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "model_latency_s": round(self.model_latency_s, 4),
            "format_problems": sum(len(s.problems) for s in self.steps),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Trajectory:
        row = dict(row)
        steps = []
        for s in row.pop("steps", []):
            s = dict(s)
            s["tool_calls"] = [ToolCallRecord(**c) for c in s.get("tool_calls", [])]
            steps.append(Step(**s))
        return cls(steps=steps, **row)

    def to_sft_row(self) -> dict[str, Any]:
        """`{"messages", "tools"}` in the TRL / Hugging Face tool-calling format.

        Assistant tool calls carry their arguments as objects (what chat templates render); tool results are
        `tool` messages. The model is trained on exactly the conversation it produced.
        """
        messages = []
        for m in self.messages:
            m = {k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "name")}
            if m.get("tool_calls"):
                m["tool_calls"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": _as_object(c["function"]["arguments"]),
                        },
                    }
                    for c in m["tool_calls"]
                ]
            messages.append(m)
        return {"messages": messages, "tools": self.tools}


def _as_object(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments)
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def read_trajectories(path: Path) -> Iterator[Trajectory]:
    """Trajectories from JSONL; a truncated last line (crash) is skipped, any other bad line is an error."""
    rows, _ = load_jsonl(Path(path))
    for n, row in enumerate(rows, start=1):
        try:
            yield Trajectory.from_dict(row)
        except TypeError as e:
            raise DataError(f"{path}: row {n}: bad trajectory fields: {e}") from e
