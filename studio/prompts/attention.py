"""A1111's prompt emphasis syntax → (text, weight) segments, exactly as A1111 parses it.

The result equals AUTOMATIC1111's ``parse_prompt_attention`` (webui 1.6.0 and later) for every
input, quirks included, down to the last bit of every weight:

- ``(x)`` ×1.1, ``[x]`` ×(1/1.1), ``(x:1.3)`` ×1.3; nesting multiplies. The weight is a sign and a
  run of digits and dots, and may have whitespace around it: ``(x: 1.3 )`` is ×1.3 too (A1111 1.6.0,
  PR #12177; before that no whitespace was allowed).
- ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal character; a backslash before anything else
  vanishes (it leaves an empty segment behind, which the final merge swallows).
- Round and square brackets are counted on two separate stacks, so their ranges may interleave:
  in ``(a [b) c]`` the ``)`` closes the ``(`` although the ``[`` opened inside it is still open.
- A stray ``)`` or ``]`` (nothing of its kind open) is kept as text, and so is a ``:1.2)`` with no
  ``(`` open. Brackets never closed apply at the end of the prompt, round ones first.
- ``BREAK`` (upper case, a word of its own) splits text into parts with a ``("BREAK", -1.0)`` segment
  between them (empty parts kept). Inside brackets that segment is multiplied like any other, so
  ``(a BREAK b)`` gives ``("BREAK", -1.1)``, which A1111's tokenizer takes for the word BREAK, not a
  break: a chunk break is a segment with text ``"BREAK"`` and weight exactly -1 (`is_break`).
- Finally runs of neighbouring segments whose weights compare equal (``==``) are merged.

The one difference: where A1111 raises ValueError (``(a:1.2.3)``, ``(a:.)``: a weight that matches
the syntax but is not a number), studio does not raise: that ``:`` is text, and the ``)`` closes the
group as a plain ×1.1, so ``(a:1.2.3)`` is ``[("a:1.2.3", 1.1)]``. Weights that overflow (400 nines
→ inf) are returned as they are; the chunker refuses out-of-range weights (prompts/chunking.py).

Hostile prompts stay fast: the BREAK split and the weight products are computed without the quadratic
corners of the straightforward code (a long run of spaces, 10,000 nested brackets), with the same result.
"""

from __future__ import annotations

import re

import numpy as np

ROUND, SQUARE = 1.1, 1 / 1.1
BREAK_MARK = -1.0  # the weight of the segment a BREAK leaves ("BREAK", -1.0)

_ESCAPABLE = "()[]\\"
_WEIGHT_CLOSER = re.compile(r":\s*([+-]?[.\d]+)\s*\)")  # ":1.2)" or ": 1.2 )": closes a weighted "("
_TEXT = re.compile(r"[^\\()\[\]:]+")
_BREAK_WORD = re.compile(r"\bBREAK\b")


def is_break(text: str, weight: float) -> bool:
    """Whether a segment is a chunk break, as A1111's tokenizer decides it."""
    return text == "BREAK" and weight == BREAK_MARK


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "1.2.3", ".", "+.": A1111 raises here
        return None


def split_break(text: str) -> list[str]:
    """``re.split(r"\\s*\\bBREAK\\b\\s*", text)``, as A1111 splits, in linear time.

    That regex tries every position of a whitespace run that no BREAK follows, each try running to the
    run's end: 20,000 spaces took seven seconds. Here each BREAK word is found once, and the whitespace
    on either side of it (str.isspace is re's \\s) is taken with it, as the greedy regex takes it.
    """
    parts, start = [], 0
    for match in _BREAK_WORD.finditer(text):
        left, right = match.start(), match.end()
        while left > start and text[left - 1].isspace():
            left -= 1
        while right < len(text) and text[right].isspace():
            right += 1
        parts.append(text[start:left])
        start = right  # the next BREAK starts at or after it: whitespace holds no "B"
    parts.append(text[start:])
    return parts


@np.errstate(all="ignore")  # overflow to inf, and inf·0 = nan, are results, as in A1111
def parse(text: str) -> list[tuple[str, float]]:
    """Segments of (text, weight), as A1111's parse_prompt_attention gives them (see the module doc)."""
    texts: list[str] = []
    weights = np.empty(64)  # weights[i] is texts[i]'s; grown by doubling
    round_open: list[int] = []  # for each open "(" / "[", the index of the first segment it covers
    square_open: list[int] = []

    def append(part: str, weight: float) -> None:
        nonlocal weights
        if len(texts) == len(weights):
            weights = np.concatenate([weights, np.empty(len(weights))])
        weights[len(texts)] = weight
        texts.append(part)

    def scale(start: int, factor: float) -> None:
        # A1111 multiplies each weight from `start` on, one by one; numpy makes the same IEEE double
        # multiplications (bit for bit), without a Python loop: nesting 10,000 deep stays milliseconds.
        weights[start:len(texts)] *= factor

    def add_text(chunk: str) -> None:
        for i, part in enumerate(split_break(chunk)):
            if i:
                append("BREAK", BREAK_MARK)
            append(part, 1.0)

    opens = {"(": round_open, "[": square_open}  # one stack per bracket kind, as A1111 keeps them
    closes = {")": (round_open, ROUND), "]": (square_open, SQUARE)}
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char == "\\":
            if pos + 1 < end and text[pos + 1] in _ESCAPABLE:
                append(text[pos + 1], 1.0)
                pos += 2
            else:
                append("", 1.0)
                pos += 1
        elif char in opens:
            opens[char].append(len(texts))
            pos += 1
        elif char in closes:
            stack, factor = closes[char]
            if stack:
                scale(stack.pop(), factor)
            else:  # nothing of its kind open: literal text
                add_text(char)
            pos += 1
        elif char == ":":
            closer = _WEIGHT_CLOSER.match(text, pos)
            weight = _number(closer.group(1)) if closer and round_open else None
            if weight is not None:
                scale(round_open.pop(), weight)
                pos = closer.end()
            elif closer and not round_open:
                add_text(closer.group(0))
                pos = closer.end()
            else:  # a lone ":" (or one before a number that is not a number): text
                add_text(char)
                pos += 1
        else:
            run = _TEXT.match(text, pos)
            add_text(run.group(0))
            pos = run.end()

    for start in round_open:  # never closed: each applies to the rest of the prompt, first opened first
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    if not texts:
        return [("", 1.0)]
    return _merge(texts, weights[:len(texts)].tolist())


def _merge(texts: list[str], values: list[float]) -> list[tuple[str, float]]:
    """Runs of neighbours whose weights compare equal (==) become one segment with the run's first weight."""
    merged: list[tuple[str, float]] = []
    start = 0
    for i in range(1, len(texts) + 1):
        if i == len(texts) or values[i] != values[start]:
            merged.append(("".join(texts[start:i]), values[start]))
            start = i
    return merged
