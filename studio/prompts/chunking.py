"""CLIP tokens in 75-token chunks (77 with BOS/EOS), as A1111 makes them.

A prompt is parsed for emphasis and BREAK (prompts/attention.py), tokenized segment by segment,
and laid into chunks of 75 tokens, each with a weight per token. BREAK ends a chunk early. When a
chunk fills up within `comma_backtrack` tokens after a comma, the words after that comma move to
the next chunk, so a phrase is not cut in two. The counter shows A1111's count: every chunk but the
last counts as full, and `to_next_boundary` says how far the next chunk (a recompile, for a static-
shape backend) is. A weight outside ±MAX_WEIGHT (or inf, or nan) is refused with a StudioError here,
so planning, generating and counting all refuse it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from studio.errors import StudioError
from studio.prompts.extra_networks import strip_tags
from studio.prompts.attention import is_break, parse

CHUNK = 75
MAX_CHUNKS = 20
COMMA_BACKTRACK = 20  # A1111's default
MAX_WEIGHT = 1000.0  # |weight| above this (or inf/nan) is refused: A1111 would make inf/nan embeddings
# Characters, checked before tokenizing: MAX_CHUNKS of real words fit well within it, and a
# megabyte of text would hold the tokenizer (and a server's queue) for minutes before being refused.
MAX_PROMPT_CHARS = 20_000


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # prompt tokens only: no BOS/EOS, no padding
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    chunks: int
    capacity: int
    to_next_boundary: int
    chunk_token_counts: list[int]

    def as_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """The UI counter: "63/75", or "140/150 · 2 chunks"."""
        text = f"{self.tokens}/{self.capacity}"
        return text if self.chunks == 1 else f"{text} · {self.chunks} chunks"


def _comma_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(",</w>")


def chunk_prompt(text: str, tokenizer, comma_backtrack: int = COMMA_BACKTRACK) -> tuple[list[Chunk], int]:
    """The prompt's chunks and A1111's token count (every chunk but the last counts as full). Extra-network
    tags (``<lora:…>``) are not words: they are taken out first, as A1111 does."""
    check_unicode(text)
    text = strip_tags(text)
    comma = _comma_id(tokenizer)
    chunks: list[Chunk] = []
    current = Chunk()
    counted = 0
    last_comma = -1

    def close(last: bool = False) -> None:
        nonlocal current, counted, last_comma
        counted += len(current.tokens) if last else CHUNK
        chunks.append(current)
        current = Chunk()
        last_comma = -1

    segments = parse(text)
    for segment, weight in segments:
        if not is_break(segment, weight):  # ("BREAK", -1.1) from inside brackets is the word BREAK
            check_weight(segment, weight)
    # Each segment tokenized on its own, as A1111 does, in one call: 10,000 calls took half a second.
    words = [segment for segment, weight in segments if not is_break(segment, weight)]
    ids = iter(tokenizer(words, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
               if words else [])
    for segment, weight in segments:
        if is_break(segment, weight):
            close()
            continue
        for token in next(ids):
            if token == comma:
                last_comma = len(current.tokens)
            elif (comma_backtrack and len(current.tokens) == CHUNK and last_comma != -1
                  and len(current.tokens) - last_comma <= comma_backtrack):
                moved = Chunk(current.tokens[last_comma + 1:], current.weights[last_comma + 1:])
                del current.tokens[last_comma + 1:], current.weights[last_comma + 1:]
                close()
                current = moved
            if len(current.tokens) == CHUNK:
                close()
            current.tokens.append(token)
            current.weights.append(weight)
    if current.tokens or not chunks:
        close(last=True)
    return chunks, counted


def check_weight(segment: str, weight: float) -> None:
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        shown = " ".join(segment.split())
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise StudioError(f"prompt weight {weight!r} (on {shown!r}) is out of range: "
                          f"use a weight between {-MAX_WEIGHT:g} and {MAX_WEIGHT:g}")


def check_unicode(text: str, what: str = "prompt") -> None:
    """A lone surrogate (a JSON "\\ud800", or an argv byte that is not UTF-8) is no character: the tokenizer
    cannot take it, and no file or terminal can hold it. Refused here, before tokenizing."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StudioError(f"the {what} holds {text[exc.start]!r} at character {exc.start}, which is not a valid "
                          "Unicode character (a lone surrogate): remove it or fix the text's encoding") from None


def check_chars(text: str, what: str = "prompt") -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise StudioError(f"the {what} is {len(text)} characters; the most is {MAX_PROMPT_CHARS}: shorten it")


def count_tokens(text: str, tokenizer, comma_backtrack: int = COMMA_BACKTRACK) -> TokenCount:
    check_chars(text)
    chunks, counted = chunk_prompt(text, tokenizer, comma_backtrack)
    capacity = len(chunks) * CHUNK
    return TokenCount(counted, len(chunks), capacity, capacity - counted, [len(c.tokens) for c in chunks])


def check_length(count: TokenCount, what: str = "prompt") -> None:
    if count.chunks > MAX_CHUNKS:
        raise StudioError(f"the {what} has {count.chunks} chunks of 75 tokens ({count.tokens} tokens); "
                          f"the most is {MAX_CHUNKS} ({MAX_CHUNKS * CHUNK} tokens): shorten it")
