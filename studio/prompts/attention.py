"""A1111's prompt emphasis syntax → (text, weight) segments.

`(word)` ×1.1, `[word]` ÷1.1, `(word:1.3)` ×1.3, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\`
are literal, and `BREAK` (upper case, a word of its own) starts a new 75-token chunk. Like
A1111, broken syntax is text, never an error: a bracket never closed weighs everything after it,
a stray closing bracket is dropped, and a weight that is not a number is part of the text.
"""

from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK_MARK = -1.0  # the weight of a BREAK segment

_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]                    # an escaped bracket or backslash: literal
  | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ":1.2)" closes a weighted group
  | [()\[\]]                        # a bracket
  | [^\\()\[\]:]+                   # plain text
  | [\\:]                           # a lone backslash or colon: text
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse(text: str) -> list[tuple[str, float]]:
    """Segments of (text, weight); a BREAK is ("BREAK", -1.0). Adjacent equal weights are merged."""
    out: list[list] = []
    opened: list[tuple[str, int]] = []  # (bracket, index in `out` where its text starts)

    def scale(start: int, factor: float) -> None:
        for seg in out[start:]:
            if seg[1] != BREAK_MARK:  # a BREAK inside brackets is still a BREAK
                seg[1] *= factor

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if m.group("weight") is not None:
            if opened and opened[-1][0] == "(":
                scale(opened.pop()[1], float(m.group("weight")))
            else:  # ":1.2)" with no "(" open: text, as A1111 would show it
                out.append([tok, 1.0])
        elif tok == "(" or tok == "[":
            opened.append((tok, len(out)))
        elif tok == ")" and opened and opened[-1][0] == "(":
            scale(opened.pop()[1], ROUND)
        elif tok == "]" and opened and opened[-1][0] == "[":
            scale(opened.pop()[1], SQUARE)
        elif tok in (")", "]"):
            continue  # a stray closing bracket
        elif tok.startswith("\\") and len(tok) == 2:
            out.append([tok[1], 1.0])
        else:
            parts = _BREAK.split(tok)
            for i, part in enumerate(parts):
                if i:
                    out.append(["BREAK", BREAK_MARK])
                if part:
                    out.append([part, 1.0])
    for bracket, start in reversed(opened):  # never closed: applies to the rest of the prompt
        scale(start, ROUND if bracket == "(" else SQUARE)

    merged: list[list] = []
    for seg in out:
        if merged and seg[1] == merged[-1][1] and seg[1] != BREAK_MARK:
            merged[-1][0] += seg[0]
        else:
            merged.append(seg)
    if not merged:
        return [("", 1.0)]
    return [(t, w) for t, w in merged]
