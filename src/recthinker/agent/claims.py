"""Are the numbers and labels an agent writes true? Each claim in a turn's analysis and plan is checked
against what the model had seen by then: the task prompt (shown history and candidates, with their
categories) and the observations of the tool calls made before that turn.

The claims checked are the kinds the agent's terse style writes (the teacher's, which the default model
imitates):

- `6 items`: the number of history items the prompt shows, or the history length its header states;
- `Comedy (2/6)`: a category's count among the shown history items, over their number;
- `6/10 candidates share a genre`: candidates sharing a category with the shown history, over all candidates;
- `[9] 0.60`: a candidate label with a value, supported when one line of an earlier observation names
  that label and that value;
- any other `[k]`: a label that exists (1..number of candidates).

Numbers the policy derives from its own weights (`leads by 0.75 sd`) are in no observation and are not
counted. `supported / claims` over an evaluation is the share of true statements (`claim_support`).

    >>> prompt = "History (oldest to newest, 2 of 2 items):\\n- A (1990) | Comedy\\n- B (1991) | Drama\\n\\n"
    >>> prompt += "Candidates:\\n[1] C (1992) | Comedy\\n[2] D (1993) | Horror\\n"
    >>> [(c.text, c.supported) for c in check_text("2 items, mostly Comedy (2/2); 1/2 candidates share a genre.", prompt, [])]
    [('2 items', True), ('Comedy (2/2)', False), ('1/2 candidates share a genre', True)]
    >>> [(c.text, c.supported) for c in check_text("ALS leader [2] 1.00, next [7] 0.60", prompt, ["1. [2] D 1.00"])]
    [('[2] 1.00', True), ('[7] 0.60', False)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_HISTORY_HEAD = re.compile(r"^History\b.*:\s*$")
_HISTORY_TOTAL = re.compile(r"\b(\d+) of (\d+) items\b")
_CANDIDATE_LINE = re.compile(r"^\[(\d{1,4})\]\s+(.*)$")
_ITEMS = re.compile(r"\b(\d{1,4}) items\b")
_SHARE = re.compile(r"\b([A-Z][A-Za-z'\-]*(?:[ \-][A-Z][A-Za-z'\-]*)*) \((\d{1,4})/(\d{1,4})\)")
_OVERLAP = re.compile(r"\b(\d{1,4})/(\d{1,4}) candidates share a genre")
_LABEL_VALUE = re.compile(r"\[(\d{1,4})\]:? (-?\d+(?:\.\d+)?)(?![\d/])")
_LABEL = re.compile(r"\[(\d{1,4})\]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Claim:
    """One checked statement: its text, whether the prompt or an earlier observation supports it, why not."""

    text: str
    supported: bool
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "supported": self.supported, "why": self.why}


@dataclass(frozen=True)
class Shown:
    """What the task prompt showed: each history item's and each candidate's categories, in order."""

    history: tuple[frozenset[str], ...]
    candidates: tuple[frozenset[str], ...]
    total: int = 0  # the user's history length the header states ("10 of 22 items"); 0 when it says none


def _categories(line: str) -> frozenset[str]:
    _, sep, cats = line.rpartition(" | ")
    return frozenset(c.strip() for c in cats.split(",") if c.strip()) if sep else frozenset()


def shown(prompt: str) -> Shown:
    """Parse the task prompt's history and candidate lines (`agent.prompting.task_prompt`'s format)."""
    history: list[frozenset[str]] = []
    candidates: list[frozenset[str]] = []
    in_history = False
    total = 0
    for line in prompt.splitlines():
        if _HISTORY_HEAD.match(line):
            in_history = True
            m = _HISTORY_TOTAL.search(line)
            total = int(m.group(2)) if m else 0
            continue
        if in_history and line.startswith("- "):
            history.append(_categories(line))
            continue
        in_history = False
        if _CANDIDATE_LINE.match(line):
            candidates.append(_categories(line))
    return Shown(tuple(history), tuple(candidates), total)


def _value_in(label: str, value: str, observations: Sequence[str]) -> bool:
    want = float(value)
    for obs in observations:
        for line in obs.splitlines():
            if f"[{label}]" not in line:
                continue
            rest = line.split(f"[{label}]", 1)[1]
            if any(abs(float(n) - want) < 1e-9 for n in _NUMBER.findall(rest)):
                return True
    return False


def check_text(text: str, prompt: str, observations: Sequence[str]) -> list[Claim]:
    """The claims of one turn's text, each checked against `prompt` and the earlier `observations`."""
    seen = shown(prompt)
    n_hist, n_cand = len(seen.history), len(seen.candidates)
    claims: list[tuple[int, Claim]] = []
    spans: list[tuple[int, int]] = []
    for m in _ITEMS.finditer(text):
        n = int(m.group(1))
        ok = n in (n_hist, seen.total)
        claims.append(
            (m.start(), Claim(m.group(0), ok, "" if ok else f"{n_hist} shown of {seen.total or n_hist}"))
        )
    history_cats = frozenset().union(*seen.history) if seen.history else frozenset()
    for m in _OVERLAP.finditer(text):
        a, b = int(m.group(1)), int(m.group(2))
        true = sum(bool(c & history_cats) for c in seen.candidates)
        ok = (a, b) == (true, n_cand)
        claims.append((m.start(), Claim(m.group(0), ok, "" if ok else f"{true}/{n_cand}")))
        spans.append(m.span())
    for m in _SHARE.finditer(text):
        if any(s <= m.start() < e for s, e in spans):
            continue
        # the category, or the last word of a capitalised run such as "Focused Comedy (3/6)"
        words, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        genre = words if any(words in h for h in seen.history) else words.split()[-1]
        true = sum(genre in h for h in seen.history)
        ok = (a, b) == (true, n_hist)
        claims.append(
            (m.start(), Claim(f"{genre} ({a}/{b})", ok, "" if ok else f"{genre} on {true}/{n_hist} shown"))
        )
    for m in _LABEL_VALUE.finditer(text):
        ok = _value_in(m.group(1), m.group(2), observations)
        claims.append((m.start(), Claim(m.group(0), ok, "" if ok else "no observation shows it")))
        spans.append(m.span())
    for m in _LABEL.finditer(text):
        if any(s <= m.start() < e for s, e in spans):
            continue
        ok = 1 <= int(m.group(1)) <= n_cand
        claims.append((m.start(), Claim(m.group(0), ok, "" if ok else f"no candidate {m.group(0)}")))
    return [c for _, c in sorted(claims, key=lambda t: t[0])]


def trajectory_claims(traj) -> list[list[Claim]]:
    """Per assistant turn of `traj` (an `agent.trajectory.Trajectory`), its checked claims (analysis and plan)."""
    prompt = next((m.get("content") or "" for m in traj.messages if m.get("role") == "user"), "")
    out: list[list[Claim]] = []
    observations: list[str] = []
    for step in traj.steps:
        text = " ".join(t for t in (step.analyze, step.plan) if t)
        out.append(check_text(text, prompt, observations))
        observations += [c.observation for c in step.tool_calls if c.ok and c.observation]
    return out


def claim_counts(traj) -> dict[str, Any]:
    """`claims`, `claims_supported` and up to five `unsupported_claims` of a trajectory (a ranking's info)."""
    flat = [c for turn in trajectory_claims(traj) for c in turn]
    bad = [f"{c.text} ({c.why})" for c in flat if not c.supported]
    return {"claims": len(flat), "claims_supported": len(flat) - len(bad), "unsupported_claims": bad[:5]}
