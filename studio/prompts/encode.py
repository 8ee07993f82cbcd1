"""Chunked prompt encoding, A1111's way: each 75-token chunk encoded alone, weights applied, concatenated.

Weights scale each token's embedding, then the chunk is rescaled so its mean is what it was before
weighting (A1111's "restore the original mean"). The prompt and the negative are padded with empty
chunks to the same count k, so both are 77·k tokens: nothing is ever cut at 77 tokens.
SDXL: both text encoders per chunk, features side by side; the pooled embedding comes from the
second encoder's first chunk.

Textual-inversion embeddings: the chunker leaves placeholder tokens where an embedding's name was; while a chunk
is encoded, a forward hook on the text encoder's token-embedding layer puts the embedding's vectors at those
positions (SDXL: the clip_l vectors in the first encoder, the clip_g ones in the second). The hook is removed
after each chunk and no weight is ever changed, so a run without embeddings is the base model's run bit for
bit, whatever ran before. (diffusers' load_textual_inversion adds tokens to the shared tokenizer and resizes the
embedding matrix: state that outlives the run and that the chunker's own token ids would have to track.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from studio.errors import StudioError
from studio.prompts.chunking import CHUNK, COMMA_BACKTRACK, Chunk, chunk_prompt


@dataclass
class Conditioning:
    prompt_embeds: object
    negative_prompt_embeds: object
    pooled_prompt_embeds: Optional[object] = None
    negative_pooled_prompt_embeds: Optional[object] = None

    def pipeline_kwargs(self) -> dict:
        kw = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kw["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kw["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kw


def _ids(chunk: Chunk, tokenizer) -> list[int]:
    pad = [tokenizer.pad_token_id] * (CHUNK - len(chunk.tokens))
    return [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id, *pad]


def _apply_weights(z, chunk: Chunk):
    import torch

    if all(w == 1.0 for w in chunk.weights):
        return z
    weights = [1.0, *chunk.weights, *[1.0] * (CHUNK + 1 - len(chunk.weights))]
    w = torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    mean_before = z.mean()
    z = z * w
    return z * (mean_before / z.mean())


# name → one tensor [vectors, width] per text encoder (SD1/SD2: one; SDXL: clip_l, clip_g)
Embeddings = Mapping[str, Sequence[object]]


@contextmanager
def _placed(te, chunk: Chunk, embeddings: Optional[Embeddings], encoder: int):
    """While encoding ``chunk`` with text encoder number ``encoder`` (0, or 1 for SDXL's second), its
    embeddings' vectors replace the placeholders' input embeddings (offset + 1: after BOS)."""
    if not chunk.fixes:
        yield
        return
    missing = next((name for _, name in chunk.fixes if len(embeddings[name]) <= encoder), None)
    if missing is not None:  # planned without the model's widths (a folder without text encoder configs)
        raise StudioError(f"embedding {missing!r} has vectors for one text encoder; this model has two (SDXL): "
                          "pick an SDXL embedding (clip_l + clip_g)")
    fixes = [(offset, embeddings[name][encoder], name) for offset, name in chunk.fixes]

    def hook(_module, _args, output):
        output = output.clone()  # the layer's own output is left as it was
        for offset, vectors, name in fixes:
            if vectors.shape[-1] != output.shape[-1]:
                raise StudioError(f"embedding {name!r} has vectors {vectors.shape[-1]} wide; this text encoder "
                                  f"takes {output.shape[-1]}: pick an embedding made for this model")
            output[:, 1 + offset:1 + offset + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    handle = te.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _encode_chunk_sd(pipe, chunk: Chunk, clip_skip: int, embeddings: Optional[Embeddings] = None):
    import torch

    te = pipe.text_encoder
    ids = torch.tensor([_ids(chunk, pipe.tokenizer)], device=te.device)
    with _placed(te, chunk, embeddings, 0):
        if clip_skip <= 1:
            return te(ids)[0]
        out = te(ids, output_hidden_states=True)
    # A1111's Clip skip N: the output of the N-th layer from the end, through the final layer norm.
    return te.text_model.final_layer_norm(out.hidden_states[-clip_skip])


def _encode_chunk_sdxl(pipe, chunk: Chunk, clip_skip: int, embeddings: Optional[Embeddings] = None):
    import torch

    parts, pooled = [], None
    for i, (tokenizer, te) in enumerate(((pipe.tokenizer, pipe.text_encoder),
                                         (pipe.tokenizer_2, pipe.text_encoder_2))):
        ids = torch.tensor([_ids(chunk, tokenizer)], device=te.device)
        with _placed(te, chunk, embeddings, i):
            out = te(ids, output_hidden_states=True)
        parts.append(out.hidden_states[-(clip_skip + 1)])  # SDXL's default: the penultimate layer
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds
    return torch.cat(parts, dim=-1), pooled


def encode_text(pipe, text: str, chunk_count: int, clip_skip: int = 1, sdxl: bool = False,
                comma_backtrack: int = COMMA_BACKTRACK, embeddings: Optional[Embeddings] = None):
    """Embeddings [1, 77·chunk_count, D] (and, for SDXL, the pooled embedding [1, P])."""
    import torch

    counts = {name: int(tensors[0].shape[0]) for name, tensors in (embeddings or {}).items()}
    chunks, _ = chunk_prompt(text, pipe.tokenizer, comma_backtrack, counts)
    chunks += [Chunk() for _ in range(chunk_count - len(chunks))]
    zs, pooled = [], None
    with torch.no_grad():
        for i, chunk in enumerate(chunks):
            if sdxl:
                z, p = _encode_chunk_sdxl(pipe, chunk, clip_skip, embeddings)
                pooled = p if i == 0 else pooled
            else:
                z = _encode_chunk_sd(pipe, chunk, clip_skip, embeddings)
            zs.append(_apply_weights(z.float(), chunk))
    return torch.cat(zs, dim=1), pooled


def encode(pipe, prompt: str, negative: str, chunk_count: int, clip_skip: int = 1,
           comma_backtrack: int = COMMA_BACKTRACK, embeddings: Optional[Embeddings] = None) -> Conditioning:
    """The conditioning of the prompt pair; ``embeddings`` are the plan's textual-inversion embeddings by name
    (their names in either text stand for their vectors)."""
    import torch

    sdxl = hasattr(pipe, "text_encoder_2")
    pos, pooled = encode_text(pipe, prompt, chunk_count, clip_skip, sdxl, comma_backtrack, embeddings)
    _check_finite("prompt", pos, pooled)
    if sdxl and not negative and pipe.config.get("force_zeros_for_empty_prompt", False):
        # SDXL's convention (as in diffusers): an empty negative is zeros, not the empty string's embedding.
        return Conditioning(pos, torch.zeros_like(pos), pooled, torch.zeros_like(pooled))
    neg, neg_pooled = encode_text(pipe, negative, chunk_count, clip_skip, sdxl, comma_backtrack, embeddings)
    _check_finite("negative prompt", neg, neg_pooled)
    return Conditioning(pos, neg, pooled, neg_pooled)


def _check_finite(what: str, *tensors) -> None:
    """Stop before the UNet when the conditioning is already NaN/inf, naming the text encoder as the cause."""
    import torch

    if all(t is None or bool(torch.isfinite(t).all()) for t in tensors):
        return
    raise StudioError(f"the text encoder gave NaN/inf embeddings for the {what}; nothing was run or saved: lower "
                      "its emphasis weights (A1111's mean restore divides by the chunk's mean), or run the text "
                      "encoder in fp32")
