"""Prompts: A1111-compatible chunks, emphasis, BREAK, and chunked encoding with no silent truncation."""

import numpy as np
import pytest
import torch

from studio.errors import StudioError
from studio.models.tokenizer import clip_tokenizer
from studio.prompts.attention import parse
from studio.prompts.chunking import chunk_prompt, count_tokens
from studio.prompts.encode import encode


@pytest.fixture(scope="module")
def tok(cache_dir):
    return clip_tokenizer(str(cache_dir))


@pytest.mark.parametrize("text,expected", [
    ("a (cat:1.2) on [mat]", [("a ", 1.0), ("cat", 1.2), (" on ", 1.0), ("mat", 1 / 1.1)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("x) y]", [("x) y]", 1.0)]),  # a stray closer is text, as in A1111
    (r"\(literal\) \[x\]", [("(literal) [x]", 1.0)]),
    ("(word:abc)", [("word:abc", 1.1)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", pytest.approx(1.5 / 1.1)), (" c", 1.5)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a (b BREAK c)", [("a ", 1.0), ("b", 1.1), ("BREAK", -1.1), ("c", 1.1)]),  # the word, not a break
    ("aBREAK b, break", [("aBREAK b, break", 1.0)]),
    ("", [("", 1.0)]),
])
def test_emphasis_parsing(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text,tokens,chunks,per_chunk", [
    (" ".join(["cat"] * 75), 75, 1, [75]),
    (" ".join(["cat"] * 76), 76, 2, [75, 1]),
    (" ".join(["cat"] * 150), 150, 2, [75, 75]),
    (" ".join(["cat"] * 151), 151, 3, [75, 75, 1]),
    ("BREAK a cat", 77, 2, [0, 2]),
    ("a cat BREAK", 75, 1, [2]),
    ("a BREAK BREAK b", 151, 3, [1, 0, 1]),
    ("(cat:1.5) [dog] (((bird)))", 3, 1, [3]),  # weight syntax is not counted
    ("東京の夜景 🌃", None, 1, None),
    ("x" * 400, None, None, None),  # one long word: many tokens, split over chunks
    ("", 0, 1, [0]),
])
def test_chunk_counts_on_tricky_prompts(tok, text, tokens, chunks, per_chunk):
    c = count_tokens(text, tok)
    ids = tok(text.replace("BREAK", ""), add_special_tokens=False)["input_ids"]
    if tokens is not None:
        assert c.tokens == tokens
    if chunks is not None:
        assert c.chunks == chunks
    if per_chunk is not None:
        assert c.chunk_token_counts == per_chunk
    if "BREAK" not in text and "(" not in text:
        assert sum(c.chunk_token_counts) == len(ids)  # nothing lost
    assert c.capacity == 75 * c.chunks and c.to_next_boundary == c.capacity - c.tokens
    assert all(n <= 75 for n in c.chunk_token_counts)


def test_comma_backtrack_moves_the_phrase(tok):
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks, counted = chunk_prompt(text, tok)
    assert [len(c.tokens) for c in chunks] == [71, 10]  # the dogs stay together in chunk 2
    assert chunks[0].tokens[-1] == tok.convert_tokens_to_ids(",</w>")
    assert counted == 85
    off, _ = chunk_prompt(text, tok, comma_backtrack=0)
    assert [len(c.tokens) for c in off] == [75, 6]
    far = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 40)  # comma too far back: no move
    assert [len(c.tokens) for c in chunk_prompt(far, tok)[0]] == [75, 6]


def test_counter_label(tok):
    assert count_tokens("a photograph of an astronaut riding a horse", tok).label() == "8/75"
    assert count_tokens(" ".join(["cat"] * 140), tok).label() == "140/150 · 2 chunks"


def test_over_twenty_chunks_is_a_clear_error(engine, tiny_request):
    with pytest.raises(StudioError, match="the most is 20"):
        engine.plan(tiny_request(prompt=" ".join(["cat"] * (75 * 20 + 1))))
    with pytest.raises(StudioError, match="negative prompt"):
        engine.plan(tiny_request(negative_prompt="BREAK " * 21))


@pytest.fixture(scope="module")
def pipes(engine):
    return {name: engine.registry.load(engine.registry.resolve(name)) for name in ("tiny", "tiny-sdxl")}


def test_one_chunk_matches_diffusers_encoding(pipes):
    """With no weights and one chunk, the embeddings are diffusers' own, bit for bit."""
    pipe = pipes["tiny"]
    cond = encode(pipe, "a red fox in snow", "blurry", 1)
    ref, ref_neg = pipe.encode_prompt("a red fox in snow", "cpu", 1, True, "blurry")
    assert torch.equal(cond.prompt_embeds, ref) and torch.equal(cond.negative_prompt_embeds, ref_neg)
    xl = pipes["tiny-sdxl"]
    cond = encode(xl, "a red fox in snow", "blurry", 1)
    p, n, pp, npp = xl.encode_prompt("a red fox in snow", device="cpu", negative_prompt="blurry")
    assert torch.equal(cond.prompt_embeds, p) and torch.equal(cond.negative_prompt_embeds, n)
    assert torch.equal(cond.pooled_prompt_embeds, pp) and torch.equal(cond.negative_pooled_prompt_embeds, npp)


def test_shapes_and_equalised_chunk_counts(pipes):
    pipe = pipes["tiny"]
    long = " ".join(["cat"] * 80)
    cond = encode(pipe, long, "", 2)
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 154, 32)
    empty = encode(pipe, "", "", 1).prompt_embeds
    assert torch.equal(cond.negative_prompt_embeds[:, 77:], empty)  # padded with empty chunks
    cond = encode(pipe, "a cat", "ugly BREAK blurry BREAK dark", 3)  # positive 1 chunk, negative 3
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 231, 32)
    xl = encode(pipes["tiny-sdxl"], long, "", 2)
    assert xl.prompt_embeds.shape == (1, 154, 80) and xl.pooled_prompt_embeds.shape == (1, 32)
    assert not xl.negative_prompt_embeds.any()  # SDXL: an empty negative is zeros


def test_weights_scale_tokens_and_keep_the_mean(pipes):
    pipe = pipes["tiny"]
    plain = encode(pipe, "a cat on a mat", "", 1).prompt_embeds
    weighted = encode(pipe, "a (cat:1.5) on a mat", "", 1).prompt_embeds
    assert not torch.equal(plain, weighted)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5)
    # only the weighted token's row changes direction; the others are only rescaled
    ratio = weighted[0] / plain[0]
    assert torch.allclose(ratio[1], ratio[1][0].expand_as(ratio[1]), rtol=1e-4)  # "a": uniform rescale
    assert not torch.allclose(ratio[2] / ratio[1][0], torch.ones_like(ratio[2]))  # "cat": ×1.5


def test_clip_skip_changes_the_embedding(pipes):
    pipe = pipes["tiny"]
    assert not torch.equal(encode(pipe, "a cat", "", 1).prompt_embeds,
                           encode(pipe, "a cat", "", 1, clip_skip=2).prompt_embeds)


def test_no_silent_truncation_past_77_tokens(engine, tiny_request):
    head = " ".join(["cat"] * 75)
    a = engine.run(engine.plan(tiny_request(prompt=head + " dog", steps=2)))
    b = engine.run(engine.plan(tiny_request(prompt=head + " fish", steps=2)))
    assert a.plan.prompt.chunk_count == 2
    assert np.abs(a.images - b.images).max() > 1e-4  # the 76th token reached the UNet


def test_pad_policy_sets_the_chunk_count(engine, tiny_request):
    assert engine.plan(tiny_request(prompt="a cat", chunk_policy="pad:2")).prompt.chunk_count == 2
    assert engine.plan(tiny_request(prompt="a cat")).prompt.chunk_count == 1
    plan = engine.plan(tiny_request(prompt="a cat", negative_prompt="a BREAK b BREAK c"))
    assert (plan.prompt.chunks, plan.prompt.negative_chunks, plan.prompt.chunk_count) == (1, 3, 3)
    assert engine.run(plan).images.shape == (1, 64, 64, 3)  # positive 1 chunk, negative 3: runs


@pytest.mark.parametrize("text", ["\ud800", "a \udcff cat", "(x:1.2) \udfff"])
def test_lone_surrogate_is_a_clear_error(tok, capsys, text):
    # Found by bench/fuzz.py: an argv byte that is not UTF-8 (Python reads it as a lone surrogate) or a JSON
    # "\ud800" reached the tokenizer, which raised TypeError: `studio tokens $'\xff'` printed a traceback.
    from studio.cli import main

    with pytest.raises(StudioError, match="not a valid Unicode character") as info:
        count_tokens(text, tok)
    assert "\n" not in str(info.value) and str(info.value).isascii()
    assert main(["tokens", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the prompt holds") and err.count("\n") == 1
