"""The live terminal view of `recthinker recommend`: the user, each turn as it finishes, then the ranking.

    result = watch(Console(), agent, ToolHost(RecEnv(resources)), episode, proposed)

It iterates the agent's run (`RecThinker.stream`) and prints each finished turn as a rich panel (its analysis,
plan, tool calls with their results, format problems, the answer), then the ranking with the evidence behind
its top items (`agent.recommend.recommendation`, whose JSON it returns).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from recthinker.agent.loop import RecThinker
from recthinker.agent.prompting import render_item
from recthinker.agent.recommend import recommendation
from recthinker.agent.trajectory import Step
from recthinker.types import Episode


def turn_panel(step: Step) -> Panel:
    """One finished turn: analysis, plan, each tool call (green: ok, red: an error) and result, the answer."""
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
    return Panel("\n".join(body) or step.content[:500], title=f"turn {step.index + 1}", expand=True)


def watch(console: Console, agent: RecThinker, env, episode: Episode, proposed: bool) -> dict[str, Any]:
    """Run the agent once, showing the investigation live and the final ranking; return the run's JSON.

    `env` is a tool environment of its own for the evidence of the top items (not the agent's)."""
    if proposed:
        console.print(
            "[dim]No candidates given: proposed 7 top ALS items (background) + 3 sampled unseen items.[/dim]"
        )
    console.print(f"[bold]User {escape(episode.user_id)}[/bold], recent history:")
    for i in episode.history[-5:]:
        console.print(f"  - {escape(render_item(i, agent.items))}")
    for item in agent.stream(episode):
        if isinstance(item, Step):
            console.print(turn_panel(item))
    traj = item  # the stream's last item: the trajectory
    result = recommendation(traj, env, episode, proposed)
    if not traj.valid:
        console.print(f"[red]No valid ranking[/red]: {traj.note}")
    else:
        table = Table(title="Ranking")
        for col in ("#", "item", "evidence"):
            table.add_column(col)
        for r, item_id in enumerate(traj.ranking, start=1):
            e = result["evidence"].get(item_id)
            text = (", ".join(f"{k} {v}" for k, v in e.items())) if e else ""
            table.add_row(str(r), escape(render_item(item_id, agent.items)), text)
        console.print(table)
    console.print(
        f"[dim]{traj.n_tool_calls} tool calls, {len(traj.steps)} turns, {traj.latency_s:.1f} s, model {traj.model}[/dim]"
    )
    return result
