"""The real CLIP tokenizer, built offline from the BPE merges that open_clip's wheel ships.

No hub download: the merges file `bpe_simple_vocab_16e6.txt.gz` gives the exact vocabulary
(49408 ids) that OpenAI's CLIP and every SD checkpoint's tokenizer use.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from studio.errors import StudioError
from studio.fsutil import atomic_dir

VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's BPE file has a header line, then the merges used by the 49408-id vocabulary.
_N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def bpe_file() -> Path:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise StudioError("open-clip-torch is not installed; run `python launch.py` to install studio") from exc
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise StudioError(f"CLIP BPE file missing at {path}; reinstall open-clip-torch")
    return path


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path, pad_token: str = EOS) -> Path:
    """Write a transformers CLIPTokenizer folder (vocab, merges, config) to ``folder``."""
    folder = Path(folder)
    if (folder / "tokenizer_config.json").is_file():
        return folder
    vocab, merges = _vocab_and_merges()
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
    }
    with atomic_dir(folder) as tmp:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(
            json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}, indent=2),
            encoding="utf-8",
        )
    return folder


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tok) != VOCAB_SIZE:
        # A missing or partial folder silently yields an empty tokenizer; refuse it loudly.
        raise StudioError(f"tokenizer at {folder} has {len(tok)} ids, expected {VOCAB_SIZE}; delete it to rebuild")
    return tok


@lru_cache(maxsize=4)
def clip_tokenizer(cache_dir: str, pad_token: str = EOS):
    """The CLIP tokenizer, its files cached under ``cache_dir``."""
    name = "clip" if pad_token == EOS else "clip-pad-" + pad_token.encode().hex()
    return load_tokenizer(write_tokenizer_files(Path(cache_dir) / "tokenizers" / name, pad_token))
