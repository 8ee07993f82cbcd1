"""Parsing JSON that came from elsewhere (presets, image records, other tools' files)."""

from __future__ import annotations

import json

from studio.errors import StudioError

MAX_JSON_DEPTH = 64


def json_depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH):
    """The parsed JSON, or a StudioError "<what> is not valid JSON (...)" / "<what> is nested too deeply"."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise StudioError(f"{what} is JSON nested too deeply") from None
    except ValueError as exc:  # also a bytes input that is not UTF-8
        raise StudioError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if json_depth(data) > max_depth:
        raise StudioError(f"{what} is JSON nested too deeply (over {max_depth} levels)")
    return data
