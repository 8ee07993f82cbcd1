"""CLIP token counting in 75-token chunks (77 with BOS/EOS), as A1111's counter shows it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

CHUNK = 75


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


def prompt_token_ids(text: str, tokenizer) -> list[int]:
    """The prompt's token ids without BOS/EOS and without truncation."""
    return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]


def count_tokens(text: str, tokenizer) -> TokenCount:
    n = len(prompt_token_ids(text, tokenizer))
    chunks = max(1, -(-n // CHUNK))
    counts = [min(CHUNK, n - i * CHUNK) for i in range(chunks)] if n else [0]
    return TokenCount(n, chunks, chunks * CHUNK, chunks * CHUNK - n, counts)
