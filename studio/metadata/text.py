"""Text read from other tools' files must be text: JSON can still spell a lone surrogate (``"\\ud800"``).

Such a string is no Unicode character: no file, terminal or tokenizer can take it (printing it, saving
a preset with it or counting its tokens fails), so the readers refuse it where they read it.
"""

from __future__ import annotations


def lone_surrogate(value) -> str | None:
    """The first text (a key or a value, at any depth) of parsed JSON holding a lone surrogate, else None.

    Without recursion: the value may be nested as deeply as its reader allows.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def describe(text: str) -> str:
    """A short, printable view of ``text`` for a one-line message."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return ascii(shown)
