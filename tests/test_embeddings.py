"""Textual-inversion embeddings (A1111 style) on the tiny models: files written here, nothing downloaded."""

from __future__ import annotations

import numpy as np
import pytest

from adapter_files import write_embedding
from studio.errors import StudioError

STEPS = dict(steps=2, width=64, height=64)


@pytest.fixture(scope="module")
def tiny_pipe(engine):
    return engine.registry.load(engine.registry.resolve("tiny"))


@pytest.fixture(scope="module")
def folder(config):
    return config.embedding_folder


def run(engine, request):
    plan = engine.plan(request)
    return plan, engine.run(plan).images


def test_embedding_changes_the_image_and_leaves_no_trace(engine, tiny_request, tiny_pipe, folder):
    word = tiny_request(prompt="a photo of tiword", **STEPS)
    base = tiny_request(prompt="a photo of a cat", **STEPS)
    _, plain = run(engine, word)  # no such file yet: the plain word
    _, before = run(engine, base)
    write_embedding(folder / "tiword.safetensors", tiny_pipe, vectors=2, seed=1)
    plan, with_emb = run(engine, word)
    [used] = plan.prompt.embeddings
    assert (used.name, used.file, used.vectors, used.where) == ("tiword", "tiword.safetensors", 2, "prompt")
    assert len(used.sha256) == 64 and len(used.short_hash) == 12
    assert not np.array_equal(with_emb, plain)
    _, after = run(engine, base)
    assert np.array_equal(after, before)  # no embedding after an embedding run: the base image bit for bit
    _, again = run(engine, word)
    assert np.array_equal(again, with_emb)
    # A weight applies to the embedding's vectors like any token's.
    _, weighted = run(engine, tiny_request(prompt="a photo of (tiword:1.4)", **STEPS))
    assert not np.array_equal(weighted, with_emb)


def test_vectors_are_counted_and_never_split_across_chunks(engine, tiny_request, tiny_pipe, folder):
    from studio.prompts.chunking import PLACEHOLDER, chunk_prompt, count_tokens

    tok = engine.tokenizer()
    three = {"tithree": 3}
    assert count_tokens("cat tithree", tok).tokens == 1 + len(tok("tithree", add_special_tokens=False).input_ids)
    assert count_tokens("cat tithree", tok, embeddings=three).tokens == 4
    # 73 tokens, then 3 vectors: they do not fit, so the first chunk closes and they start the second.
    chunks, counted = chunk_prompt("cat " * 73 + "TiThree", tok, embeddings=three)  # CLIP lowercases: any case
    assert [len(c.tokens) for c in chunks] == [73, 3] and counted == 78
    assert chunks[1].fixes == [(0, "tithree")] and chunks[1].tokens == [PLACEHOLDER] * 3
    # Comma backtrack moves the words after the comma, the embedding among them, to the next chunk.
    chunks, _ = chunk_prompt("cat " * 70 + ", tithree dog horse", tok, embeddings=three)
    assert [len(c.tokens) for c in chunks] == [71, 5] and chunks[0].fixes == []
    assert chunks[1].fixes == [(0, "tithree")]
    # The plan counts them too, in the prompt and in the negative.
    write_embedding(folder / "tithree.safetensors", tiny_pipe, vectors=3, seed=3)
    plan = engine.plan(tiny_request(prompt="cat " * 73 + "tithree", negative_prompt="(tithree:1.2), blurry",
                                    **STEPS))
    assert (plan.prompt.tokens, plan.prompt.chunks, plan.prompt.negative_tokens) == (78, 2, 5)
    assert [(e.name, e.where) for e in plan.prompt.embeddings] == [("tithree", "prompt"), ("tithree", "negative")]
    # What a token counter passes: the folder's embeddings the text uses.
    assert engine.embeddings.counts_in("cat tithree", "no embedding") == {"tithree": 3}


def test_pickle_embedding_needs_the_switch(engine, config, tiny_request, tiny_pipe, folder):
    from studio.engine.engine import Engine

    write_embedding(folder / "tipickle.pt", tiny_pipe, fmt="pt", vectors=2)
    with pytest.raises(StudioError) as err:
        engine.plan(tiny_request(prompt="a photo of tipickle", **STEPS))
    assert "tipickle.pt" in str(err.value) and "--allow-unsafe-pickle" in str(err.value)
    assert "\n" not in str(err.value)
    trusting = Engine(config.model_copy(update={"allow_unsafe_pickle": True}))
    [used] = trusting.plan(tiny_request(prompt="a photo of tipickle", **STEPS)).prompt.embeddings
    assert (used.file, used.vectors) == ("tipickle.pt", 2)
    [vectors] = trusting.embeddings.load([used])["tipickle"]
    assert tuple(vectors.shape) == (2, 32)
    # diffusers' learned_embeds.bin: one {token: [width]} tensor
    import torch

    from studio.adapters.embeddings import inspect

    torch.save({"<tibin>": torch.ones(32)}, str(folder / "tibin.bin"))
    assert inspect(folder / "tibin.bin", allow_unsafe_pickle=True).vectors == 1


def test_wrong_width_is_a_clear_error(engine, tiny_request, tiny_pipe, folder):
    write_embedding(folder / "tixl.safetensors", tiny_pipe, fmt="sdxl", widths=(32, 48))
    with pytest.raises(StudioError, match=r"embedding tixl\.safetensors is for SDXL \(clip_l\+clip_g\); this "
                                          r"model is sd1 \(text encoder 32 wide\)"):
        engine.plan(tiny_request(prompt="tixl, a cat", **STEPS))
    write_embedding(folder / "tiwide.safetensors", tiny_pipe, widths=(768,))
    with pytest.raises(StudioError, match=r"tiwide\.safetensors is for SD1 \(768 wide\)"):
        engine.plan(tiny_request(negative_prompt="tiwide", **STEPS))


def test_openvino_text_encoder_is_refused_with_embeddings(engine, tiny_request, tiny_pipe, folder):
    pytest.importorskip("openvino")
    write_embedding(folder / "tiov.safetensors", tiny_pipe)
    backend = {"name": "openvino", "device": "CPU", "text_encoder": "openvino"}
    with pytest.raises(StudioError, match=r"tiov\.safetensors needs the PyTorch text encoder.*--text-encoder torch"):
        engine.plan(tiny_request(prompt="tiov", backend=backend, **STEPS))


def test_found_by_hash_under_another_name(engine, tiny_request, tiny_pipe, folder):
    from studio.settings import EmbeddingUse

    write_embedding(folder / "tinew.safetensors", tiny_pipe, fmt="diffusers", seed=5)
    sha = engine.plan(tiny_request(prompt="tinew", **STEPS)).prompt.embeddings[0].sha256
    request = tiny_request(prompt="a photo of tiold", embeddings=[EmbeddingUse(name="tiold", sha256=sha)], **STEPS)
    plan, old = run(engine, request)
    [used] = plan.prompt.embeddings
    assert (used.name, used.file, used.sha256) == ("tiold", "tinew.safetensors", sha)
    assert "tinew.safetensors" in used.notes[0]
    _, new = run(engine, tiny_request(prompt="a photo of tinew", **STEPS))
    assert np.array_equal(old, new)  # the word is only a placeholder: the same vectors, the same image
    with pytest.raises(StudioError, match="tigone"):
        engine.plan(tiny_request(prompt="tigone", embeddings=[EmbeddingUse(name="tigone", sha256="0" * 64)],
                                 **STEPS))


def test_sdxl_embedding_with_clip_l_and_clip_g(engine, tiny_request, folder):
    pipe = engine.registry.load(engine.registry.resolve("tiny-sdxl"))
    write_embedding(folder / "tisdxl.safetensors", pipe, vectors=2, seed=7)
    assert engine.plan(tiny_request(model="tiny-sdxl", prompt="tisdxl", **STEPS)).prompt.embeddings
    _, base = run(engine, tiny_request(model="tiny-sdxl", prompt="a photo of a cat", **STEPS))
    _, with_emb = run(engine, tiny_request(model="tiny-sdxl", prompt="a photo of tisdxl", **STEPS))
    assert not np.array_equal(base, with_emb)
    _, again = run(engine, tiny_request(model="tiny-sdxl", prompt="a photo of a cat", **STEPS))
    assert np.array_equal(again, base)
    # The SD1 embedding of another test is refused here: SDXL needs clip_l and clip_g.
    with pytest.raises(StudioError, match=r"tiword\.safetensors is for a text encoder 32 wide; this model is sdxl"):
        write_embedding(folder / "tiword.safetensors", pipe, widths=(32,), seed=1)
        engine.plan(tiny_request(model="tiny-sdxl", prompt="tiword", **STEPS))


def test_infotext_records_ti_hashes_and_the_request_the_hash(config, tiny_pipe, folder):
    from pathlib import Path

    from studio.metadata.a1111 import parse_infotext
    from studio.metadata.png import read_text_chunks
    from studio.service import Studio
    from studio.settings import build_request

    write_embedding(folder / "tiinfo.safetensors", tiny_pipe, vectors=2, seed=7)
    studio = Studio(config)
    plan = studio.plan(build_request(prompt="a photo of tiinfo", negative_prompt="tiinfo", seed=3, sampler="euler",
                                     model="tiny", **STEPS))
    [used_p, used_n] = plan.prompt.embeddings
    assert [u.model_dump() for u in plan.request.embeddings] == [{"name": "tiinfo", "sha256": used_p.sha256}]
    text = read_text_chunks(Path(studio.run_job(plan).saved[0]["path"]))["parameters"]
    assert f"TI hashes: \"tiinfo: {used_p.short_hash}\"" in text.splitlines()[-1]
    assert parse_infotext(text)["request"]["embeddings"] == [{"name": "tiinfo", "sha256": used_p.short_hash}]
