"""Chunked prompt encoding, A1111's way: each 75-token chunk encoded alone, weights applied, concatenated.

Weights scale each token's embedding, then the chunk is rescaled so its mean is what it was before
weighting (A1111's "restore the original mean"). The prompt and the negative are padded with empty
chunks to the same count k, so both are 77·k tokens: nothing is ever cut at 77 tokens.
SDXL: both text encoders per chunk, features side by side; the pooled embedding comes from the
second encoder's first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

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


def _encode_chunk_sd(pipe, chunk: Chunk, clip_skip: int):
    import torch

    te = pipe.text_encoder
    ids = torch.tensor([_ids(chunk, pipe.tokenizer)], device=te.device)
    if clip_skip <= 1:
        return te(ids)[0]
    out = te(ids, output_hidden_states=True)
    # A1111's Clip skip N: the output of the N-th layer from the end, through the final layer norm.
    return te.text_model.final_layer_norm(out.hidden_states[-clip_skip])


def _encode_chunk_sdxl(pipe, chunk: Chunk, clip_skip: int):
    import torch

    parts, pooled = [], None
    for tokenizer, te in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = torch.tensor([_ids(chunk, tokenizer)], device=te.device)
        out = te(ids, output_hidden_states=True)
        parts.append(out.hidden_states[-(clip_skip + 1)])  # SDXL's default: the penultimate layer
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds
    return torch.cat(parts, dim=-1), pooled


def encode_text(pipe, text: str, chunk_count: int, clip_skip: int = 1, sdxl: bool = False,
                comma_backtrack: int = COMMA_BACKTRACK):
    """Embeddings [1, 77·chunk_count, D] (and, for SDXL, the pooled embedding [1, P])."""
    import torch

    chunks, _ = chunk_prompt(text, pipe.tokenizer, comma_backtrack)
    chunks += [Chunk() for _ in range(chunk_count - len(chunks))]
    zs, pooled = [], None
    with torch.no_grad():
        for i, chunk in enumerate(chunks):
            if sdxl:
                z, p = _encode_chunk_sdxl(pipe, chunk, clip_skip)
                pooled = p if i == 0 else pooled
            else:
                z = _encode_chunk_sd(pipe, chunk, clip_skip)
            zs.append(_apply_weights(z.float(), chunk))
    return torch.cat(zs, dim=1), pooled


def encode(pipe, prompt: str, negative: str, chunk_count: int, clip_skip: int = 1,
           comma_backtrack: int = COMMA_BACKTRACK) -> Conditioning:
    import torch

    sdxl = hasattr(pipe, "text_encoder_2")
    pos, pooled = encode_text(pipe, prompt, chunk_count, clip_skip, sdxl, comma_backtrack)
    _check_finite("prompt", pos, pooled)
    if sdxl and not negative and pipe.config.get("force_zeros_for_empty_prompt", False):
        # SDXL's convention (as in diffusers): an empty negative is zeros, not the empty string's embedding.
        return Conditioning(pos, torch.zeros_like(pos), pooled, torch.zeros_like(pooled))
    neg, neg_pooled = encode_text(pipe, negative, chunk_count, clip_skip, sdxl, comma_backtrack)
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
