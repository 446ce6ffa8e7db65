"""Range-checked value types for the command line's numeric options (argparse `type=` callables).

A value that means nothing (`--threads 0`, `--limit -3`, `--port 70000`) is refused when the command line is
parsed, with the option's name and the accepted range, as the HTTP API's request validation does.

>>> at_least(1)("4")
4
>>> at_least(1)("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be an integer >= 1, got '0'
>>> port("8000")
8000
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

# ASCII digits only: int() also takes "5_0" (50) and other scripts' digits, which no user means as a number.
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (high: no upper bound when None)."""
    what = f">= {low}" if high is None else f"between {low} and {high}"

    def parse(text: str) -> int:
        if not INTEGER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}")
        return value

    parse.__name__ = f"integer {what}"
    return parse


def real(low: float, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or (low, high] with `low_open`)."""
    what = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")

    def parse(text: str) -> float:
        if not NUMBER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"must be a number {what}, got {text!r}")
        value = float(text)
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a number {what}, got {text!r}")
        return value

    parse.__name__ = f"number {what}"
    return parse


count = at_least(1)  # users, steps, samples: at least one
threads = at_least(1, 512)  # CPU threads of an in-process model
workers = at_least(1, 256)  # episodes run concurrently
limit = at_least(0)  # 0 means "no limit" (or "none" for a budget)
seed = at_least(0, 2**32 - 1)  # numpy seeds are non-negative
port = at_least(1, 65535)
