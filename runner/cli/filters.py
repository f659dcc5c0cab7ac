"""``-f/--filter KEY=VALUE`` as Docker's list verbs take it: the same key given twice matches either
value, different keys must all match; a key the verb does not know is refused."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from .errors import UsageError

IMAGE_FILTERS = ("dangling", "reference", "label", "before", "since")
CONTAINER_FILTERS = ("status", "name", "id", "label", "ancestor")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def parse(given: Sequence[str] | None, known: Sequence[str]) -> dict[str, list[str]]:
    """``["status=exited", "label=a"]`` -> ``{"status": ["exited"], "label": ["a"]}``."""
    out: dict[str, list[str]] = {}
    for item in given or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"bad format of filter (expected name=value): {item}")
        key = key.strip().lower()
        if key not in known:
            raise UsageError(f"invalid filter '{key}'")
        out.setdefault(key, []).append(value)
    if any(v not in ("true", "false", "1", "0") for v in out.get("dangling", [])):
        raise UsageError(f"invalid filter 'dangling={out['dangling'][0]}'")
    if any(v not in STATUSES for v in out.get("status", [])):
        bad = next(v for v in out["status"] if v not in STATUSES)
        raise UsageError(f"invalid filter 'status={bad}'")
    return out


def labels_match(wanted: Sequence[str], labels: Mapping[str, str] | None) -> bool:
    """Every ``label=KEY`` (present) or ``label=KEY=VALUE`` (equal) holds."""
    labels = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def reference_matches(patterns: Sequence[str], repo: str, tag: str) -> bool:
    """``reference=PATTERN``: shell-style patterns over ``repo`` or ``repo:tag`` (Docker's path.Match)."""
    for pattern in patterns:
        if ":" in pattern.rsplit("/", 1)[-1]:
            if fnmatch.fnmatchcase(f"{repo}:{tag}", pattern):
                return True
        elif fnmatch.fnmatchcase(repo, pattern):
            return True
    return False
