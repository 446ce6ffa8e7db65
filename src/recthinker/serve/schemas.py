"""Request and response bodies of `recthinker serve` (pydantic), and the limits they enforce.

Every field is an id, a count or a text the server produced: no field is a path or a URL, so a request can
neither read files nor make the server reach a host (the model is fixed when the server starts).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CANDIDATES = 50  # candidates per request (given or proposed)
MAX_HISTORY = 200  # items in an explicit history
MAX_STEPS = 10  # upper bound on a request's max_steps
MAX_TOOL_CALLS = 10  # upper bound on a request's max_tool_calls
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"  # ids: 1-200 printable characters (ML-1M item ids are titles)


class RecommendRequest(BaseModel):
    """Rank candidates for a user of the dataset, or for a user described by an explicit history."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "3" or true is not a count

    user_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="A user of the dataset; may be omitted (or unknown) when `history` is given.",
    )
    history: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_HISTORY,
        description="Item ids the user interacted with, oldest first (replaces the dataset history).",
    )
    candidates: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_CANDIDATES,
        description="Item ids to rank, distinct; omit to let the collaborative tools propose `propose` items.",
    )
    propose: int | None = Field(
        default=None,
        ge=2,
        le=MAX_CANDIDATES,
        description="How many candidates to propose when `candidates` is omitted (default 10).",
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Assistant turns, answer included."
    )
    max_tool_calls: int | None = Field(default=None, ge=0, le=MAX_TOOL_CALLS, description="Tool-call budget.")

    @field_validator("history", "candidates")
    @classmethod
    def _ids(cls, ids: list[str] | None) -> list[str] | None:
        if ids is None:
            return ids
        bad = [i for i in ids if not re.fullmatch(ID_PATTERN, i)]
        if bad:
            raise ValueError(
                f"malformed item id(s) {bad[:3]}: ids are 1-200 characters, no control characters"
            )
        return ids

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, ids: list[str] | None) -> list[str] | None:
        if ids is not None and len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"candidate ids must be distinct; repeated: {dup[:5]}")
        return ids

    @model_validator(mode="after")
    def _who_and_what(self) -> RecommendRequest:
        if self.user_id is None and not self.history:
            raise ValueError("give `user_id` (a user of the dataset) or an explicit `history`")
        if self.candidates is not None and self.propose is not None:
            raise ValueError("give either `candidates` or `propose`, not both")
        return self


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: str = Field(description="What was wrong, in one sentence.")
    details: list[dict[str, Any]] = Field(default_factory=list, description="Per-field validation errors.")


class ItemInfo(BaseModel):
    id: str
    title: str
    line: str = Field(description="Title (year) | categories, as the model sees it.")


class RecommendResponse(BaseModel):
    """The agent's ranking and the investigation behind it (`recthinker recommend --json` plus titles)."""

    user_id: str
    ranking: list[str] = Field(description="Candidate ids, best first; empty when `valid` is false.")
    valid: bool = Field(
        description="False when the model gave no valid full ranking (never a fallback order)."
    )
    note: str
    candidates: list[str]
    candidates_proposed: bool
    tool_calls: int
    evidence: dict[str, dict[str, float]] = Field(description="Tool signals of the top-ranked items.")
    trajectory: list[dict[str, Any]] = Field(description="Every assistant turn: analysis, plan, tool calls.")
    latency_s: float
    model: str
    items: dict[str, ItemInfo] = Field(description="Titles of the candidates and the shown history.")


class SampleUser(BaseModel):
    user_id: str
    n_items: int
    recent: list[str] = Field(description="Titles of the latest few items, newest last.")
    top_categories: list[str]


class Health(BaseModel):
    """`GET /healthz`: 200 when ready, 503 when the model back end cannot be reached."""

    status: str = Field(description='"ok", or "unavailable" when the model back end cannot be reached.')
    ready: bool = Field(description="Whether a request can run now (false: requests get 503).")
    reason: str = Field(default="", description="Why the server is not ready; empty when it is.")
    dataset: str
    model: str
    busy: int
    max_concurrency: int
