"""Seeded prompt expansion: style words appended to a prompt up to the end of its 75-token chunk.

Like Fooocus V2, an expander fills the prompt's current CLIP chunk (a multiple of 75 tokens) with
comma-separated style words, seeded by the image seed, so one seed gives one expanded prompt:

* ``wordbank_expand`` draws words from ``wordbank.WORDS`` in the order of a numpy PCG64
  permutation of the seed: identical on every machine and independent of torch.
* ``causal_lm_expand`` samples them from a local transformers causal LM (GPT-2 style), with a
  ``torch.Generator`` seeded by the seed (the global RNG is not touched). Sampling is restricted
  to the tokens of the word list's words plus the comma token; within that mask a prefix tree of
  the words' token sequences only lets through tokens that continue a whole word list entry, so
  every added phrase is an entry of the list. Top-k 100, temperature 1.

Both append to the prompt with ", " (trailing whitespace is dropped, and a prompt that already
ends with a comma gets no second one), never add an entry whose words already stand in the prompt
or in an added entry (whole words, case-insensitive: "golden" not after "golden hour"), and
measure with the real CLIP tokenizer (``chunking.count_tokens``): the final count never exceeds
the prompt's chunk capacity, and filling stops when no entry fits. A prompt that exactly fills its
chunk gets nothing, unless ``allow_new_chunk=True``: then, when no entry fits in the current chunk,
the expander may fill the next chunk too (capacity + 75).

Replay rule: the expanded ``text`` is what is stored with an image and what is replayed; restoring
an image uses the stored text verbatim and never runs expansion again. Expansion depends on the
word list (``WORDBANK_VERSION``), numpy's PCG64 stream, the LM weights and torch numerics, none of
which is promised to stay put; the stored text is. ``expander`` and ``seed`` are recorded for
information only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from studio.errors import StudioError
from studio.prompts.chunking import CHUNK, count_tokens
from studio.prompts.wordbank import WORDBANK_VERSION, WORDS

TOP_K = 100
TEMPERATURE = 1.0


@dataclass(frozen=True)
class ExpansionResult:
    text: str  # the full expanded prompt: the prompt, then the added words
    added: tuple[str, ...]  # the words appended, in order
    expander: str  # e.g. "wordbank-v1" or "causal-lm:<folder name>"
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def _normalize(text: str) -> str:
    """Lower-case words and punctuation marks, one space apart and around, so that a whole-word
    test is a substring test (and a phrase never matches across a comma)."""
    return " " + " ".join(re.findall(r"[^\W_]+|[^\w\s]", text.lower())) + " "


class _Filler:
    """The prompt grown entry by entry while its CLIP token count stays within the chunk limit."""

    def __init__(self, prompt: str, tokenizer, allow_new_chunk: bool, words: tuple[str, ...]):
        self.prompt = prompt
        self.text = prompt
        self.added: list[str] = []
        self._tokenizer = tokenizer
        self._seen = _normalize(prompt)
        count = count_tokens(prompt, tokenizer)
        self.tokens = count.tokens
        self.limit = count.capacity
        # Each entry's own token count: with the separator, a lower bound on what it adds.
        self.costs = [len(ids) for ids in tokenizer(list(words), add_special_tokens=False)["input_ids"]]
        self._min_cost = min(self.costs)
        if allow_new_chunk and not self._any_fits(words):
            self.limit += CHUNK

    def _joined(self, phrase: str) -> str:
        if self.added:
            return f"{self.text}, {phrase}"
        base = self.prompt.rstrip()
        if not base:
            return phrase
        return f"{base} {phrase}" if base.endswith(",") else f"{base}, {phrase}"

    def _separator_floor(self) -> int:
        # A comma after a letter or digit is a token of its own; after other punctuation CLIP may
        # merge it ("!," is one token), and after a trailing comma none is added.
        if self.added:
            return 1
        base = self.prompt.rstrip()
        return 1 if base and base[-1].isalnum() else 0

    def seen(self, phrase: str) -> bool:
        return _normalize(phrase) in self._seen

    def might_fit(self, index: int) -> bool:
        return self.tokens + self._separator_floor() + self.costs[index] <= self.limit

    def room_left(self) -> bool:
        return self.tokens + self._separator_floor() + self._min_cost <= self.limit

    def measure(self, phrase: str) -> int:
        """The real CLIP token count of the text with ``phrase`` appended."""
        return count_tokens(self._joined(phrase), self._tokenizer).tokens

    def accept(self, phrase: str, tokens: int) -> None:
        self.text = self._joined(phrase)
        self.added.append(phrase)
        self.tokens = tokens
        self._seen += ", " + _normalize(phrase)[1:]

    def try_add(self, index: int, phrase: str) -> bool:
        if self.seen(phrase) or not self.might_fit(index):
            return False
        tokens = self.measure(phrase)
        if tokens > self.limit:
            return False
        self.accept(phrase, tokens)
        return True

    def _any_fits(self, words: tuple[str, ...]) -> bool:
        for i in sorted(range(len(words)), key=self.costs.__getitem__):
            if not self.might_fit(i):
                return False  # sorted by cost: no later entry fits either
            if not self.seen(words[i]) and self.measure(words[i]) <= self.limit:
                return True
        return False


def wordbank_expand(prompt: str, seed: int, tokenizer, allow_new_chunk: bool = False) -> ExpansionResult:
    """Append word list entries in a seeded order until the prompt's chunk is full.

    ``tokenizer`` is the CLIP tokenizer (``studio.models.tokenizer.clip_tokenizer``).
    """
    filler = _Filler(prompt, tokenizer, allow_new_chunk, WORDS)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(WORDS))
    for index in order.tolist():
        if not filler.room_left():
            break
        filler.try_add(index, WORDS[index])
    return ExpansionResult(filler.text, tuple(filler.added), f"wordbank-v{WORDBANK_VERSION}", seed)


class _Node:
    """A prefix tree node over the LM token sequences of the word list's entries."""

    __slots__ = ("children", "entries", "end")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.entries: set[int] = set()  # the entries whose token sequence passes through here
        self.end: int | None = None  # the entry whose token sequence ends here

    def add(self, ids: list[int], entry: int) -> None:
        node = self
        node.entries.add(entry)
        for token in ids:
            node = node.children.setdefault(token, _Node())
            node.entries.add(entry)
        if node.end is None:
            node.end = entry


class CausalLMExpander:
    """A local causal LM folder, loaded once, that samples style words from the word list.

    Keep one per folder (e.g. on the engine) to avoid reloading; ``expand`` is the expansion.
    """

    def __init__(self, model_dir: Path | str, words: tuple[str, ...] = WORDS, allow_unsafe_pickle: bool = False):
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise StudioError(
                f"no prompt expansion model in {folder.name} (config.json missing): put a transformers causal LM "
                "folder there (config.json, weights, tokenizer files) or use the wordbank expander")
        from studio.models.registry import PICKLE_SUFFIXES

        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not allow_unsafe_pickle and not any(folder.glob("*.safetensors")):
            raise StudioError(f"expansion model {folder.name} has pickle weights ({pickles[0]}), which can run code "
                              "when loaded; convert them to .safetensors, or pass --allow-unsafe-pickle")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.lm_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, dtype=torch.float32,
                use_safetensors=None if allow_unsafe_pickle else True).eval()
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StudioError(
                f"cannot load the prompt expansion model {folder.name} ({reason[:200]}): it must be a local "
                "transformers causal LM folder with its tokenizer; replace it or use the wordbank expander"
            ) from exc
        self.folder = folder
        self.name = f"causal-lm:{folder.name}"
        self.words = tuple(words)
        self._normalized = [_normalize(word) for word in self.words]

        def encode(text: str) -> list[int]:
            return self.lm_tokenizer(text, add_special_tokens=False)["input_ids"]

        comma = encode(",")
        if len(comma) != 1:
            raise StudioError(f"the prompt expansion model in {folder} does not encode ',' as one token; "
                              "use a GPT-2 style (byte-level BPE) model or the wordbank expander")
        self.comma_id = comma[0]
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        unk = self.lm_tokenizer.unk_token_id
        self._roots = {True: _Node(), False: _Node()}  # after a comma (leading space) / at text start
        allowed = {self.comma_id}
        for entry, word in enumerate(self.words):
            for spaced, root in self._roots.items():
                ids = encode(" " + word if spaced else word)
                if ids and max(ids) < vocab and self.comma_id not in ids and unk not in ids:
                    root.add(ids, entry)
                    allowed.update(ids)
        # The logits mask: the tokens of the words, with and without a leading space, and the comma.
        self.allowed_ids = tuple(sorted(allowed))
        if not self._roots[True].children:
            raise StudioError(f"the prompt expansion model in {folder} cannot encode the word list; "
                              "use a GPT-2 style model or the wordbank expander")
        config = self.model.config
        self._positions = (getattr(config, "n_positions", None)
                           or getattr(config, "max_position_embeddings", None))
        start = self.lm_tokenizer.bos_token_id
        self._start_id = start if start is not None else self.lm_tokenizer.eos_token_id
        if self._start_id is None:
            self._start_id = self.comma_id

    def _context(self, prompt: str) -> tuple[list[int], bool]:
        """The LM's input ids for the prompt, and whether the next word takes a leading space."""
        base = prompt.rstrip()
        if not base:
            return [self._start_id], False
        text = base if base.endswith(",") else base + ","
        return self.lm_tokenizer(text, add_special_tokens=False)["input_ids"], True

    def expand(self, prompt: str, seed: int, tokenizer, allow_new_chunk: bool = False,
               max_new_tokens: int | None = None) -> ExpansionResult:
        """``max_new_tokens``: a cap on LM tokens; by default 4 per CLIP token of room, plenty for
        any BPE (GPT-2's own takes about one per CLIP token)."""
        import torch

        filler = _Filler(prompt, tokenizer, allow_new_chunk, self.words)
        if max_new_tokens is None:
            max_new_tokens = 4 * (filler.limit - filler.tokens) + 16
        alive = {i for i, word in enumerate(self.words) if not filler.seen(word)}
        ids, spaced = self._context(prompt)
        if self._positions:
            max_new_tokens = min(max_new_tokens, self._positions // 2)
            ids = ids[-(self._positions - max_new_tokens):]
        generator = torch.Generator().manual_seed(seed)
        root = node = self._roots[spaced]
        candidates: set[int] = set()
        measured: dict[int, int] = {}
        past = None
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                if node is root:
                    candidates = {i for i in alive if filler.might_fit(i)}
                    measured.clear()
                allowed = [token for token, child in node.children.items()
                           if not child.entries.isdisjoint(candidates)]
                if node.end is not None and node.end in candidates:
                    tokens = measured.get(node.end)
                    if tokens is None:
                        tokens = measured[node.end] = filler.measure(self.words[node.end])
                    if tokens <= filler.limit:
                        allowed.append(self.comma_id)
                    else:
                        candidates.discard(node.end)
                if not allowed:
                    break
                out = self.model(input_ids=torch.tensor([ids]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = self._sample(out.logits[0, -1], sorted(allowed), generator)
                ids = [token]
                if token == self.comma_id:
                    phrase = self.words[node.end]
                    filler.accept(phrase, measured[node.end])
                    added = _normalize(phrase)
                    alive = {i for i in alive if self._normalized[i] not in added}
                    node = root = self._roots[True]
                else:
                    node = node.children[token]
        return ExpansionResult(filler.text, tuple(filler.added), self.name, seed)

    @staticmethod
    def _sample(logits, allowed: list[int], generator) -> int:
        import torch

        masked = logits.float()[torch.tensor(allowed)] / TEMPERATURE
        top, index = masked.topk(min(TOP_K, len(allowed)))
        choice = torch.multinomial(torch.softmax(top, dim=-1), 1, generator=generator).item()
        return allowed[int(index[choice])]


def causal_lm_expand(prompt: str, seed: int, model: CausalLMExpander | Path | str, tokenizer,
                     allow_new_chunk: bool = False, max_new_tokens: int | None = None) -> ExpansionResult:
    """Expand with a causal LM: ``model`` is a loaded ``CausalLMExpander`` (reuse it) or a folder.

    ``tokenizer`` is the CLIP tokenizer that measures the chunk boundary.
    """
    expander = model if isinstance(model, CausalLMExpander) else CausalLMExpander(model)
    return expander.expand(prompt, seed, tokenizer, allow_new_chunk, max_new_tokens)
