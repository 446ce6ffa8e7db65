"""Answer form (b): rank candidates by the model's own probability of "Yes" to a per-candidate question.

For each candidate the model reads the user's recent history, optionally the tool evidence about that
candidate (ALS rank among the candidates, item-relation strength, similar users who chose it, genre
match, popularity), and the question "Will this user pick it next?"; the score is
log P("Yes") - log P("No") from `ChatModel.logprobs_of` (llama.cpp back ends and transformers). The
candidates are then sorted by score -- no text to parse, so the ranking is always valid. The shared prompt
prefix comes first so that llama.cpp's prompt cache reuses it across the ten questions.
"""

from __future__ import annotations

import numpy as np

from recthinker.agent.prompting import render_item
from recthinker.agent.rankers import PerThread
from recthinker.baselines.base import tie_break_keys
from recthinker.tools.env import RecEnv, ToolHost
from recthinker.types import Episode, Ranking

QUESTION = "Will this user pick this item next? Answer Yes or No."


class PointwiseRanker:
    """`Ranker` scoring each candidate by log P(Yes) - log P(No) under a chat model."""

    def __init__(
        self,
        model,
        resources,
        items,
        *,
        with_evidence: bool = True,
        n_history: int = 10,
        name: str | None = None,
    ) -> None:
        if not hasattr(model, "logprobs_of"):
            raise TypeError(f"{type(model).__name__} cannot score options (no logprobs_of)")
        self.model = model
        self.resources = resources
        self.items = items
        self.with_evidence = with_evidence
        self.n_history = n_history
        self.name = name or ("pointwise-evidence" if with_evidence else "pointwise")
        self._envs = PerThread(lambda: ToolHost(RecEnv(self.resources)))

    def _evidence(self, episode: Episode) -> list[str]:
        env = self._envs.get()
        env.reset_episode(episode)
        sig = env.signals(("als",))
        als_rank = np.empty(len(episode.candidates), dtype=int)
        als_rank[np.argsort(-sig["cf_als"], kind="stable")] = np.arange(1, len(episode.candidates) + 1)
        return [
            f"Evidence: collaborative-filtering rank {als_rank[k]} of {len(episode.candidates)}; "
            f"relation strength to the history {sig['item_relations'][k]:.2f}; "
            f"{int(sig['similar_users'][k])} similar users chose it; genre match {sig['genre_match'][k]:.2f}; "
            f"{int(sig['popularity'][k])} interactions overall."
            for k in range(len(episode.candidates))
        ]

    def rank(self, episode: Episode) -> Ranking:
        history = (
            "\n".join(f"- {render_item(i, self.items)}" for i in episode.history[-self.n_history :])
            or "- (none)"
        )
        system = "You predict what a user of a recommender system picks next."
        evidence = self._evidence(episode) if self.with_evidence else [""] * len(episode.candidates)
        scores = []
        for k, item in enumerate(episode.candidates):
            user = f"History (oldest to newest):\n{history}\n\nItem: {render_item(item, self.items)}\n"
            user += (evidence[k] + "\n" if evidence[k] else "") + QUESTION
            yes, no = self.model.logprobs_of(
                [{"role": "system", "content": system}, {"role": "user", "content": user}], ["Yes", "No"]
            )
            scores.append(yes - no)
        scores = np.asarray(scores)
        order = np.lexsort((tie_break_keys(episode.episode_id, episode.candidates), -scores))
        return Ranking(
            items=tuple(episode.candidates[i] for i in order),
            valid=True,
            info={
                "tool_calls": 0,
                "llm_calls": 2 * len(episode.candidates),
                "scores": scores.round(4).tolist(),
            },
        )
