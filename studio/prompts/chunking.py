"""CLIP tokens in 75-token chunks (77 with BOS/EOS), as A1111 makes them.

A prompt is parsed for emphasis and BREAK (prompts/attention.py), tokenized segment by segment,
and laid into chunks of 75 tokens, each with a weight per token. BREAK ends a chunk early. When a
chunk fills up within `comma_backtrack` tokens after a comma, the words after that comma move to
the next chunk, so a phrase is not cut in two. The counter shows A1111's count: every chunk but the
last counts as full, and `to_next_boundary` says how far the next chunk (a recompile, for a static-
shape backend) is. A weight outside ±MAX_WEIGHT (or inf, or nan) is refused with a StudioError here,
so planning, generating and counting all refuse it.

Textual-inversion embeddings (A1111's): given their names and vector counts, a word of the prompt that is an
embedding's name becomes that many placeholder tokens, recorded in the chunk's ``fixes`` so the encoder can put
the embedding's vectors there. An embedding is never split: if it does not fit the chunk, the chunk is closed
and it starts the next one.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

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
# The token an embedding's positions hold (A1111's 0, "!"): the encoder replaces its input embedding there.
PLACEHOLDER = 0


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)  # prompt tokens only: no BOS/EOS, no padding
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (offset in tokens, embedding name)


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


def embedding_pattern(names) -> Optional[re.Pattern]:
    """The regex of embedding names as whole words. A1111 finds an embedding by the CLIP tokens of its name,
    and CLIP lowercases, so the match ignores case; the longest name is tried first (``style-v2`` before
    ``style``), as A1111 does."""
    names = sorted(set(names), key=lambda n: (-len(n), n))
    if not names:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)", re.IGNORECASE)


def _split_embeddings(text: str, pattern: Optional[re.Pattern], canonical: dict[str, str]) -> list:
    """``text`` as pieces: plain text (str) and embedding names (a 1-tuple holding the name)."""
    if pattern is None:
        return [text]
    pieces, at = [], 0
    for match in pattern.finditer(text):
        pieces += [text[at:match.start()], (canonical[match.group(0).lower()],)]
        at = match.end()
    return pieces + [text[at:]]


def _canonical(names) -> dict[str, str]:
    return {name.lower(): name for name in names}


def embeddings_in(text: str, names) -> list[str]:
    """The embeddings of ``names`` that ``text`` uses, in order of first use, found as the chunker finds them
    (outside extra-network tags, in each emphasis segment, not in a BREAK)."""
    pattern, canonical = embedding_pattern(names), _canonical(names)
    found: dict[str, None] = {}
    for segment, weight in parse(strip_tags(text)):
        if not is_break(segment, weight):
            for piece in _split_embeddings(segment, pattern, canonical):
                if isinstance(piece, tuple):
                    found.setdefault(piece[0])
    return list(found)


def chunk_prompt(text: str, tokenizer, comma_backtrack: int = COMMA_BACKTRACK,
                 embeddings: Optional[Mapping[str, int]] = None) -> tuple[list[Chunk], int]:
    """The prompt's chunks and A1111's token count (every chunk but the last counts as full). Extra-network
    tags (``<lora:…>``) are not words: they are taken out first, as A1111 does. ``embeddings`` (name → vector
    count) are the textual-inversion embeddings whose names stand for vectors; without it every word is text."""
    check_unicode(text)
    text = strip_tags(text)
    embeddings = dict(embeddings or {})
    for name, vectors in embeddings.items():
        if not 1 <= vectors <= CHUNK:
            raise StudioError(f"embedding {name!r} has {vectors} vectors; one that fits a {CHUNK}-token chunk has "
                              f"1 to {CHUNK}: use another embedding")
    pattern, canonical = embedding_pattern(embeddings), _canonical(embeddings)
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

    def make_room() -> None:
        """Before a token or an embedding: A1111's comma backtrack, then a new chunk if this one is full."""
        nonlocal current
        if (comma_backtrack and len(current.tokens) == CHUNK and last_comma != -1
                and len(current.tokens) - last_comma <= comma_backtrack):
            cut = last_comma + 1
            # The words after the comma move to the next chunk, with the embeddings among them (an embedding
            # never straddles the cut: the cut follows a comma token).
            moved = Chunk(current.tokens[cut:], current.weights[cut:],
                          [(offset - cut, name) for offset, name in current.fixes if offset >= cut])
            del current.tokens[cut:], current.weights[cut:]
            current.fixes = [fix for fix in current.fixes if fix[0] < cut]
            close()
            current = moved
        if len(current.tokens) == CHUNK:
            close()

    segments = parse(text)
    for segment, weight in segments:
        if not is_break(segment, weight):  # ("BREAK", -1.1) from inside brackets is the word BREAK
            check_weight(segment, weight)
    pieces = [_split_embeddings(segment, pattern, canonical) if not is_break(segment, weight) else []
              for segment, weight in segments]
    # Each piece of text tokenized on its own, as A1111 tokenizes each segment, in one call: 10,000 calls took
    # half a second. An embedding's name splits a segment only at word boundaries, where CLIP splits anyway.
    words = [piece for segment in pieces for piece in segment if isinstance(piece, str)]
    ids = iter(tokenizer(words, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
               if words else [])
    for (segment, weight), segment_pieces in zip(segments, pieces):
        if is_break(segment, weight):
            close()
            continue
        for piece in segment_pieces:
            if isinstance(piece, tuple):
                make_room()
                vectors = embeddings[piece[0]]
                if len(current.tokens) + vectors > CHUNK:
                    close()  # A1111: an embedding that does not fit starts the next chunk
                current.fixes.append((len(current.tokens), piece[0]))
                current.tokens += [PLACEHOLDER] * vectors
                current.weights += [weight] * vectors
                continue
            for token in next(ids):
                if token == comma:
                    last_comma = len(current.tokens)
                else:
                    make_room()
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


def count_tokens(text: str, tokenizer, comma_backtrack: int = COMMA_BACKTRACK,
                 embeddings: Optional[Mapping[str, int]] = None) -> TokenCount:
    """A1111's count; each use of one of ``embeddings`` (name → vector count) counts as its vectors."""
    check_chars(text)
    chunks, counted = chunk_prompt(text, tokenizer, comma_backtrack, embeddings)
    capacity = len(chunks) * CHUNK
    return TokenCount(counted, len(chunks), capacity, capacity - counted, [len(c.tokens) for c in chunks])


def check_length(count: TokenCount, what: str = "prompt") -> None:
    if count.chunks > MAX_CHUNKS:
        raise StudioError(f"the {what} has {count.chunks} chunks of 75 tokens ({count.tokens} tokens); "
                          f"the most is {MAX_CHUNKS} ({MAX_CHUNKS * CHUNK} tokens): shorten it")
