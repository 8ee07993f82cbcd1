"""Textual-inversion embeddings, A1111's way: a word of the prompt or negative prompt that is an embedding's
file name stands for the embedding's vectors (prompts/chunking.py places them, prompts/encode.py encodes them).

Files are found in the embeddings folder by name or hash (adapters/files.py), checked against the model's text
encoder widths before anything runs, and read in the layouts in use: A1111/kohya ``emb_params`` [n, 768|1024],
SDXL ``clip_l`` [n, 768] + ``clip_g`` [n, 1280], diffusers' one ``{token: tensor}``, and, only with
--allow-unsafe-pickle, A1111's .pt ``string_to_param`` {'*': tensor} (loaded with ``weights_only``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.adapters.files import AdapterFile, AdapterFolder, read_header
from studio.errors import StudioError
from studio.plan import UsedEmbedding
from studio.prompts.chunking import CHUNK, embeddings_in
from studio.settings import AppConfig, EmbeddingUse

SDXL_KEYS = ("clip_l", "clip_g")  # in the order of SDXL's text encoders
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
KNOWN_WIDTHS = {(768,): "SD1", (1024,): "SD2", (768, 1280): "SDXL"}


@dataclass(frozen=True)
class EmbeddingInfo:
    layout: str  # "a1111" (emb_params), "sdxl" (clip_l + clip_g), "diffusers" (one token) or "a1111-pt"
    vectors: int
    widths: tuple[int, ...]  # one per text encoder the file is for


def _family_of(widths: tuple[int, ...], layout: str) -> str:
    name = KNOWN_WIDTHS.get(tuple(widths))
    if layout == "sdxl":
        return "SDXL (clip_l+clip_g)"
    return f"{name} ({widths[0]} wide)" if name else f"a text encoder {widths[0]} wide"


def _describe_model(widths: list[int], family: str) -> str:
    if len(widths) == 2:
        return f"{family} (clip_l {widths[0]} + clip_g {widths[1]} wide)"
    return f"{family} (text encoder {widths[0]} wide)"


def _shape_vectors(name: str, key: str, shape) -> tuple[int, int]:
    """(vectors, width) of a tensor [width] or [vectors, width]."""
    shape = list(shape)
    if len(shape) == 1:
        shape = [1, *shape]
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise StudioError(f"embedding {name}: {key!r} has shape {shape}, not [vectors, width]: it is not a "
                          "textual-inversion embedding")
    return int(shape[0]), int(shape[1])


def _layout(name: str, shapes: dict, pickle: bool) -> EmbeddingInfo:
    """The layout of an embedding from its tensors' shapes (key → shape)."""
    if all(key in shapes for key in SDXL_KEYS):
        parts = [_shape_vectors(name, key, shapes[key]) for key in SDXL_KEYS]
        if parts[0][0] != parts[1][0]:
            raise StudioError(f"embedding {name} has {parts[0][0]} clip_l vectors but {parts[1][0]} clip_g ones: "
                              "the file is broken; copy it again")
        return EmbeddingInfo("sdxl", parts[0][0], tuple(width for _, width in parts))
    if "emb_params" in shapes:
        key, layout = "emb_params", "a1111"
    elif len(shapes) == 1:
        key, layout = next(iter(shapes)), "diffusers"
    else:
        shown = ", ".join(sorted(shapes)[:4]) or "no tensors"
        raise StudioError(f"embedding {name} holds {shown}: not a textual-inversion embedding studio reads (A1111 "
                          "emb_params, SDXL clip_l + clip_g, or diffusers' one token)")
    vectors, width = _shape_vectors(name, key, shapes[key])
    return EmbeddingInfo("a1111-pt" if pickle and layout != "diffusers" else layout, vectors, (width,))


def _safetensors_shapes(path: Path) -> dict:
    header = read_header(path)
    shapes = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in FLOAT_DTYPES:
            raise StudioError(f"embedding {path.name}: tensor {key[:40]!r} is not a float tensor; the file is not "
                              "a textual-inversion embedding")
        shapes[key] = entry.get("shape", [])
    return shapes


def _pickle_tensors(path: Path) -> dict:
    """The tensors of an A1111 .pt / diffusers .bin embedding, loaded with ``weights_only`` (no code runs)."""
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a broken file, or one that needs code to load: name it
        why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise StudioError(f"embedding {path.name} cannot be read ({why}); use a .safetensors embedding or copy "
                          "it again") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]  # A1111's own .pt: {'*': tensor}
    if isinstance(data, torch.Tensor):
        data = {"*": data}
    if not isinstance(data, dict):
        raise StudioError(f"embedding {path.name} holds a {type(data).__name__}, not an embedding's tensors")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if "emb_params" in tensors or all(k in tensors for k in SDXL_KEYS):
        return tensors
    return tensors if len(tensors) == 1 else {k: v for k, v in tensors.items() if v.is_floating_point()}


def inspect(path: Path, allow_unsafe_pickle: bool = False) -> EmbeddingInfo:
    """What an embedding file holds; a .safetensors file from its header alone."""
    if path.suffix.lower() == ".safetensors":
        return _layout(path.name, _safetensors_shapes(path), pickle=False)
    _refuse_pickle(path, allow_unsafe_pickle)
    return _layout(path.name, {k: list(v.shape) for k, v in _pickle_tensors(path).items()}, pickle=True)


def load_vectors(path: Path, allow_unsafe_pickle: bool = False) -> tuple:
    """The embedding's vectors, one float32 tensor [vectors, width] per text encoder (SDXL: clip_l, clip_g)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        info = inspect(path)
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # a truncated or corrupt file: name it
            raise StudioError(f"embedding {path.name} cannot be read ({str(exc).splitlines()[0][:120]}); copy it "
                              "again") from None
    else:
        _refuse_pickle(path, allow_unsafe_pickle)
        tensors = _pickle_tensors(path)
        info = _layout(path.name, {k: list(v.shape) for k, v in tensors.items()}, pickle=True)
    if info.layout == "sdxl":
        keys = SDXL_KEYS
    else:
        keys = ("emb_params",) if "emb_params" in tensors else (next(iter(tensors)),)
    return tuple(tensors[key].detach().float().reshape(info.vectors, -1).contiguous() for key in keys)


def _refuse_pickle(path: Path, allow_unsafe_pickle: bool) -> None:
    if not allow_unsafe_pickle:
        raise StudioError(f"embedding {path.name} is a pickle, which can run code when loaded: use a .safetensors "
                          "embedding, or start studio with --allow-unsafe-pickle if you trust it")


class EmbeddingLibrary:
    def __init__(self, config: AppConfig):
        self.files = AdapterFolder(config.embedding_folder, config.cache_dir, "embedding", "--embeddings-dir",
                                   config.allow_unsafe_pickle)

    def names(self) -> list[str]:
        return self.files.names()

    def vocabulary(self, requested: list[EmbeddingUse]) -> dict[str, Optional[str]]:
        """The words that stand for embeddings (→ the sha256 asked for, if any): the folder's file names and the
        request's names (a file found by hash may sit here under another name)."""
        words: dict[str, Optional[str]] = {name: None for name in self.names()}
        for use in requested:
            # One spelling per word: CLIP lowercases, so "Style" and "style" are the same word.
            for known in [w for w in words if w.lower() == use.name.lower()]:
                del words[known]
            words[use.name] = use.sha256
        return words

    def resolve(self, texts: dict[str, list[str]], requested: list[EmbeddingUse], text_widths: list[int],
                family: str) -> list[UsedEmbedding]:
        """The embeddings ``texts`` ("prompt" / "negative" → the texts encoded) use, each found here by name or
        hash and checked against the model's text encoder widths."""
        words = self.vocabulary(requested)
        if not words:
            return []
        used: list[UsedEmbedding] = []
        checked: dict[str, UsedEmbedding] = {}
        for where, group in texts.items():
            names = list(dict.fromkeys(name for text in group for name in embeddings_in(text, words)))
            for name in names:
                if name not in checked:
                    checked[name] = self._check(name, words[name], text_widths, family)
                used.append(checked[name].model_copy(update={"where": where}))
        return used

    def _check(self, name: str, sha256: Optional[str], text_widths: list[int], family: str) -> UsedEmbedding:
        found = self.files.find(name, sha256)
        file = found.file
        self.files.check_loadable(file)
        info = inspect(file.path, self.files.allow_unsafe_pickle)
        if text_widths and list(info.widths) != list(text_widths):
            raise StudioError(f"embedding {file.path.name} is for {_family_of(info.widths, info.layout)}; this model "
                              f"is {_describe_model(text_widths, family)}: pick an embedding made for this "
                              "model's family")
        if info.vectors > CHUNK:
            raise StudioError(f"embedding {file.path.name} has {info.vectors} vectors; at most {CHUNK} fit a "
                              "chunk: use another embedding")
        return UsedEmbedding(name=name, file=file.path.name, sha256=file.sha256, short_hash=file.short_hash,
                             vectors=info.vectors, where="prompt", notes=[found.note] if found.note else [])

    def counts_in(self, *texts: str) -> dict[str, int]:
        """Name → vector count of the folder's embeddings that ``texts`` use, for a token counter (the app's,
        the CLI's). A file that cannot be read here (a pickle without the switch, a broken file) counts as its
        word: the counter never fails on it, the plan says why."""
        names = self.names()
        out: dict[str, int] = {}
        for name in dict.fromkeys(n for text in texts for n in embeddings_in(text, names)):
            try:
                self.files.check_loadable(self.files.describe(name))
                out[name] = inspect(self.files.paths()[name], self.files.allow_unsafe_pickle).vectors
            except StudioError:
                continue
        return out

    def load(self, used: list[UsedEmbedding]) -> dict[str, tuple]:
        """The vectors of a plan's embeddings by name, each file found again by its hash (the folder may have
        changed since the plan was made) and checked to still hold what was planned."""
        out: dict[str, tuple] = {}
        for emb in used:
            if emb.name in out:
                continue
            file: AdapterFile = self.files.find(emb.name, emb.sha256).file
            vectors = load_vectors(file.path, self.files.allow_unsafe_pickle)
            if vectors[0].shape[0] != emb.vectors:
                raise StudioError(f"embedding {file.path.name} has {vectors[0].shape[0]} vectors, not the "
                                  f"{emb.vectors} planned: plan the run again")
            out[emb.name] = vectors
        return out


def counts(used: list[UsedEmbedding]) -> dict[str, int]:
    """Name → vector count: what the token counter and the chunker need."""
    return {emb.name: emb.vectors for emb in used}
