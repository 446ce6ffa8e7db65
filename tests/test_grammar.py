"""The constrained turn grammar lets a model write tool calls byte for byte as the chat template renders them."""

from __future__ import annotations

import json
import re

from recthinker.agent.grammar import turn_grammar
from recthinker.agent.prompting import render_for_prompt_mode

_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _literals(rule: str) -> list[str]:
    """The quoted GBNF literals of a rule's right-hand side, unescaped (GBNF escapes are JSON's)."""
    return [json.loads(f'"{m}"') for m in _LITERAL.findall(rule.split("::=", 1)[1])]


def _rule(grammar: str, name: str) -> str:
    return next(line for line in grammar.splitlines() if line.startswith(f"{name} ::= "))


def test_constrained_tool_call_turn_can_equal_the_rendered_transcript() -> None:
    grammar = turn_grammar(["cf_scores", "user_history"], 10)
    root, call = _literals(_rule(grammar, "root")), _literals(_rule(grammar, "call"))
    # root: "<analyze>" analyze "</analyze>\n<plan>" plan "</plan>\n" (call | answer)
    # call: "<tool_call>" "\n"? "{\"name\": " name ", \"arguments\": " obj "}" "\n"? "</tool_call>"
    assert call == ["<tool_call>", "\n", '{"name": ', ', "arguments": ', "}", "\n", "</tool_call>"]
    assert _rule(grammar, "call").count('"\\n"?') == 2  # both newlines optional
    name, args = json.dumps("cf_scores"), json.dumps({"model": "als"})
    head = root[0] + "a" + root[1] + "p" + root[2]
    with_newlines = head + call[0] + call[1] + call[2] + name + call[3] + args + call[4] + call[5] + call[6]

    message = {
        "role": "assistant",
        "content": "<analyze>a</analyze>\n<plan>p</plan>",
        "tool_calls": [
            {"type": "function", "function": {"name": "cf_scores", "arguments": {"model": "als"}}}
        ],
    }
    # What the next turn sends back (and what SFT rows train on): the prompt cache and the model agree.
    assert render_for_prompt_mode([message])[0]["content"] == with_newlines
