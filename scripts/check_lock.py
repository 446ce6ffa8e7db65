"""Check that requirements.lock agrees with pyproject.toml; CI runs it after the install.

    python scripts/check_lock.py            # exit 1 with the reasons when they disagree
    python scripts/check_lock.py --print-hash

Agreement means: the lock was generated from the current dependency lists (their hash is in its header),
every dependency of the project and of every extra is pinned there, and each pin satisfies its specifier.
Refresh the lock with `bash scripts/lock.sh`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HASH_LINE = re.compile(r"^# pyproject-dependencies-sha256: ([0-9a-f]{64})$", re.MULTILINE)


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", []))
    for extra in sorted(project.get("optional-dependencies", {})):
        reqs += project["optional-dependencies"][extra]
    return reqs


def dependencies_hash() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = {"dependencies": project.get("dependencies", []), **project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()


def main(argv: list[str]) -> int:
    if "--print-hash" in argv:
        print(dependencies_hash())
        return 0
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    problems = []
    m = HASH_LINE.search(text)
    if m is None or m.group(1) != dependencies_hash():
        problems.append("pyproject.toml's dependency lists changed since the lock was generated")
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                problems.append(f"requirements.lock: {line!r} is not an exact pin (name==version)")
                continue
            pins[canonicalize_name(name)] = version
    for spec in requirements():
        req = Requirement(spec)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is a dependency but has no pin in requirements.lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"requirements.lock pins {req.name}=={version}, outside pyproject's {req.specifier}"
            )
    for p in problems:
        print(f"lock check: {p}", file=sys.stderr)
    if problems:
        print(
            "lock check: refresh it with `bash scripts/lock.sh`, run the tests, commit both", file=sys.stderr
        )
        return 1
    print(f"lock check: requirements.lock agrees with pyproject.toml ({len(pins)} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
