"""`recthinker recommend`: run the agent for one user and show the investigation live, or print JSON.

Any user id of the dataset works; a user outside it can be described by an explicit history. Without given
candidates, ten are proposed -- the user's top unseen items under ALS fitted on the background plus sampled
unseen items, shuffled -- and the output says so. The evidence behind the top items is each tool signal's
value for them (ALS rank, relation strength, similar users, genre match, popularity).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from recthinker.agent.loop import RecThinker
from recthinker.agent.prompting import render_item
from recthinker.agent.trajectory import Step, Trajectory
from recthinker.types import Episode

SIGNALS = ("cf_als", "item_relations", "similar_users", "genre_match", "popularity")


def evidence(env, episode: Episode, ranking: Sequence[str], top: int = 3) -> dict[str, dict[str, float]]:
    """Tool signals of the top-ranked items: what the ranking can be checked against."""
    env.reset_episode(episode)
    sig = env.signals(("als",))
    pos = {c: i for i, c in enumerate(episode.candidates)}
    als_rank = {episode.candidates[j]: r + 1 for r, j in enumerate(np.argsort(-sig["cf_als"], kind="stable"))}
    out = {}
    for item in ranking[:top]:
        row: dict[str, float] = {"als_rank": als_rank[item]}
        for name in SIGNALS[1:]:
            row[name] = round(float(sig[name][pos[item]]), 4)
        out[item] = row
    return out


def to_json(traj: Trajectory, episode: Episode, proposed: bool, ev: dict) -> dict[str, Any]:
    return {
        "user_id": episode.user_id,
        "ranking": traj.ranking,
        "candidates": list(episode.candidates),
        "candidates_proposed": proposed,
        "valid": traj.valid,
        "note": traj.note,
        "tool_calls": traj.n_tool_calls,
        "evidence": ev,
        "trajectory": [s for s in traj.to_dict()["steps"]],
        "latency_s": round(traj.latency_s, 3),
        "model": traj.model,
    }


class LiveView:
    """Prints each turn as it happens (rich panels on the terminal)."""

    def __init__(self, console, items) -> None:
        self.console = console
        self.items = items

    def on_step(self, traj: Trajectory, step: Step) -> None:
        from rich.panel import Panel

        body = []
        if step.analyze:
            body.append(f"[bold]analyze[/bold] {step.analyze}")
        if step.plan:
            body.append(f"[bold]plan[/bold] {step.plan}")
        for call in step.tool_calls:
            args = (
                json.dumps(call.arguments, ensure_ascii=False)
                if isinstance(call.arguments, dict)
                else call.arguments
            )
            colour = "green" if call.ok else "red"
            body.append(f"[{colour}]→ {call.name}({args})[/{colour}]\n{call.observation}")
        for p in step.problems:
            body.append(f"[yellow]format problem:[/yellow] {p}")
        if step.answer is not None and not step.problems:
            body.append(f"[bold]answer[/bold] {step.answer}")
        self.console.print(
            Panel("\n".join(body) or step.content[:500], title=f"turn {step.index + 1}", expand=True)
        )


def run_recommend(
    agent: RecThinker, env, episode: Episode, proposed: bool, *, console=None
) -> dict[str, Any]:
    """Run the agent once; with a console, show the investigation live and the final ranking."""
    if console is not None:
        from rich.markup import escape

        if proposed:
            console.print(
                "[dim]No candidates given: proposed 7 top ALS items (background) + 3 sampled unseen items.[/dim]"
            )
        console.print(f"[bold]User {escape(episode.user_id)}[/bold], recent history:")
        for i in episode.history[-5:]:
            console.print(f"  - {escape(render_item(i, agent.items))}")
        view = LiveView(console, agent.items)
        agent.on_step = view.on_step
    traj = agent.run(episode)
    ev = evidence(env, episode, traj.ranking) if traj.valid else {}
    if console is not None:
        from rich.markup import escape
        from rich.table import Table

        if not traj.valid:
            console.print(f"[red]No valid ranking[/red]: {traj.note}")
        else:
            table = Table(title="Ranking")
            for col in ("#", "item", "evidence"):
                table.add_column(col)
            for r, item in enumerate(traj.ranking, start=1):
                e = ev.get(item)
                text = (", ".join(f"{k} {v}" for k, v in e.items())) if e else ""
                table.add_row(str(r), escape(render_item(item, agent.items)), text)
            console.print(table)
        console.print(
            f"[dim]{traj.n_tool_calls} tool calls, {len(traj.steps)} turns, {traj.latency_s:.1f} s, model {traj.model}[/dim]"
        )
    return to_json(traj, episode, proposed, ev)
