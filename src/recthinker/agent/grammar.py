"""GBNF grammars (llama.cpp) that keep a small model's agent turns well-formed.

A constrained turn is `<analyze>..</analyze>`, `<plan>..</plan>`, then exactly one tool call naming a real
tool with a JSON-object argument, or an `<answer>` listing `n` candidate labels. The newlines around a
call's JSON are optional: a trained model writes `<tool_call>\n{json}\n</tool_call>` as the chat template
renders it in its training rows (and in the transcript sent back next turn, so llama.cpp's prompt cache
keeps the whole turn), an untrained one may follow the system prompt's one-line example; the grammar
forces neither. The grammar cannot force a
permutation (that needs a grammar exponential in `n`); duplicates are caught by the parser and fed back.
Tool arguments are any flat JSON object: the environment validates them and returns error observations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence


def _lit(text: str) -> str:
    return json.dumps(text)


def turn_grammar(
    tool_names: Sequence[str],
    n_candidates: int,
    *,
    allow_tools: bool = True,
    analyze_chars: int = 200,
    plan_chars: int = 120,
    evidence_answer: bool = False,
) -> str:
    """The grammar of one agent turn.

    >>> g = turn_grammar(["user_history"], 3)
    >>> 'name ::= "\\\\"user_history\\\\""' in g, 'lab ::= "[" ("1" | "2" | "3") "]"' in g
    (True, True)
    """
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    action = "(call | answer)" if allow_tools and tool_names else "answer"
    labels = " | ".join(_lit(str(k)) for k in range(1, n_candidates + 1))
    rest = ' (" > " lab)' * (n_candidates - 1)
    rules = [
        f'root ::= "<analyze>" analyze "</analyze>\\n<plan>" plan "</plan>\\n" {action}',
        f"analyze ::= [^<\\n]{{1,{analyze_chars}}}",
        f"plan ::= [^<\\n]{{1,{plan_chars}}}",
        (
            'answer ::= "<answer>promote" (" " lab){0,3} "; demote" (" " lab){0,3} "</answer>"'
            if evidence_answer
            else f'answer ::= "<answer>" lab{rest} "</answer>"'
        ),
        f'lab ::= "[" ({labels}) "]"',
    ]
    if allow_tools and tool_names:
        names = " | ".join(_lit(json.dumps(n)) for n in tool_names)
        rules += [
            'call ::= "<tool_call>" "\\n"? "{\\"name\\": " name ", \\"arguments\\": " obj "}" "\\n"? "</tool_call>"',
            f"name ::= {names}",
            'obj ::= "{" ( kv ( ", " kv ){0,3} )? "}"',
            'kv ::= key ": " val',
            'key ::= "\\"" [a-z_]{1,20} "\\""',
            'val ::= str | num | "[" ( str ( ", " str ){0,9} )? "]"',
            'str ::= "\\"" [^"\\\\\\n]{0,60} "\\""',
            'num ::= "-"? [0-9]{1,5}',
        ]
    return "\n".join(rules) + "\n"
