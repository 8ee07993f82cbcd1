"""Seeded prompt expansion: the word list, the wordbank expander and a causal LM expander.

The causal LM is a tiny random GPT-2 with a byte-level BPE tokenizer trained here on the word list:
nothing is downloaded.
"""

import pytest

from conftest import build_tiny_lm

from studio.errors import StudioError
from studio.models.tokenizer import clip_tokenizer
from studio.prompts.chunking import CHUNK, count_tokens
from studio.prompts.expansion import (
    CausalLMExpander,
    ExpansionResult,
    causal_lm_expand,
    wordbank_expand,
)
from studio.prompts.wordbank import WORDBANK_VERSION, WORDS

PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def tok(cache_dir):
    return clip_tokenizer(str(cache_dir))


@pytest.fixture(scope="module")
def longest(tok):
    """The most CLIP tokens any word list entry takes."""
    return max(len(ids) for ids in tok(list(WORDS), add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def full_prompt(tok):
    text = " ".join(["cat"] * CHUNK)
    assert count_tokens(text, tok).tokens == CHUNK
    return text


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def one_thread():
    """Token-by-token decoding of a tiny model is fastest on one thread (and on a busy machine,
    two threads can be ten times slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tiny_lm, one_thread):
    return CausalLMExpander(tiny_lm)


def check_expansion(result: ExpansionResult, prompt: str, tok, longest: int, limit: int) -> None:
    assert result.text.startswith(prompt.rstrip())
    assert set(result.added) <= set(WORDS)
    assert len(set(result.added)) == len(result.added)
    if result.added:
        base = prompt.rstrip()
        joined = ", ".join(result.added)
        separator = "" if not base else " " if base.endswith(",") else ", "
        assert result.text == base + separator + joined
    tokens = count_tokens(result.text, tok).tokens
    assert tokens <= limit
    assert limit - tokens < longest  # stopped only when no entry fit


def test_word_list_is_sorted_deduplicated_and_large():
    assert WORDBANK_VERSION == 1
    assert len(WORDS) >= 400
    assert list(WORDS) == sorted(set(WORDS))
    for word in WORDS:
        assert word == word.strip().lower() and "," not in word
        assert 1 <= len(word.split()) <= 3 and " ".join(word.split()) == word
        assert not set(word) & set("()[]:\\"), word  # no emphasis syntax


def test_wordbank_is_seeded(tok):
    a = wordbank_expand(PROMPT, 1234, tok)
    assert a == wordbank_expand(PROMPT, 1234, tok)
    assert (a.expander, a.seed) == (f"wordbank-v{WORDBANK_VERSION}", 1234)
    assert a.added
    others = {wordbank_expand(PROMPT, seed, tok).text for seed in (1, 2, 3)}
    assert a.text not in others and len(others) == 3


@pytest.mark.parametrize("prompt", [PROMPT, "", "a cat!", "a cat,", "portrait of a woman, golden hour "])
def test_wordbank_fills_the_chunk(tok, longest, prompt):
    result = wordbank_expand(prompt, 7, tok)
    check_expansion(result, prompt, tok, longest, limit=CHUNK)


def test_wordbank_does_not_repeat_prompt_words(tok):
    prompt = "a cat at Golden Hour, TEAL"
    for seed in range(5):
        added = wordbank_expand(prompt, seed, tok).added
        assert not {"golden hour", "golden", "teal"} & set(added)


def test_full_chunk_adds_nothing_unless_a_new_chunk_is_allowed(tok, longest, full_prompt):
    result = wordbank_expand(full_prompt, 5, tok)
    assert result.text == full_prompt and result.added == ()
    more = wordbank_expand(full_prompt, 5, tok, allow_new_chunk=True)
    check_expansion(more, full_prompt, tok, longest, limit=2 * CHUNK)
    assert count_tokens(more.text, tok).chunks == 2


def test_second_chunk_fills_toward_150(tok, longest, full_prompt):
    prompt = full_prompt + " dog"
    assert count_tokens(prompt, tok).tokens == CHUNK + 1
    result = wordbank_expand(prompt, 9, tok)
    check_expansion(result, prompt, tok, longest, limit=2 * CHUNK)


def test_causal_lm_is_seeded_and_uses_only_the_word_list(tok, longest, lm):
    import torch

    state = torch.random.get_rng_state()
    a = causal_lm_expand(PROMPT, 42, lm, tok)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not touched
    assert a == causal_lm_expand(PROMPT, 42, lm, tok)
    assert (a.expander, a.seed) == (f"causal-lm:{lm.folder.name}", 42)
    assert a.added
    check_expansion(a, PROMPT, tok, longest, limit=CHUNK)
    assert causal_lm_expand(PROMPT, 43, lm, tok).text != a.text


def test_causal_lm_mask_is_word_tokens_and_comma(lm):
    encode = lm.lm_tokenizer
    ids = {lm.comma_id}
    for word in WORDS:
        ids.update(encode(word, add_special_tokens=False)["input_ids"])
        ids.update(encode(" " + word, add_special_tokens=False)["input_ids"])
    assert set(lm.allowed_ids) == ids


def test_causal_lm_respects_chunk_boundaries(tok, longest, lm, tiny_lm, full_prompt):
    empty = causal_lm_expand("", 3, tiny_lm, tok)  # a folder works too
    check_expansion(empty, "", tok, longest, limit=CHUNK)
    assert causal_lm_expand(full_prompt, 3, lm, tok).added == ()
    more = causal_lm_expand(full_prompt, 3, lm, tok, allow_new_chunk=True)
    check_expansion(more, full_prompt, tok, longest, limit=2 * CHUNK)


def test_missing_or_invalid_model_folder(tmp_path, tok):
    with pytest.raises(StudioError, match="config.json missing"):
        CausalLMExpander(tmp_path / "nope")
    with pytest.raises(StudioError):
        causal_lm_expand(PROMPT, 1, tmp_path / "nope", tok)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(StudioError, match="cannot load") as info:
        CausalLMExpander(tmp_path)
    assert "\n" not in str(info.value)


# -- in the engine: seeded, shown, stored, replayed verbatim ------------------------------------------


def test_engine_expands_with_the_image_seed_and_stores_the_text(engine, tiny_request, tmp_path):
    import json

    from studio.metadata.png import read_text_chunks
    from studio.outputs import save_result

    plan = engine.plan(tiny_request(prompt="a lighthouse", seed=7, expansion=True))
    final = plan.prompt.prompt_final
    assert final.startswith("a lighthouse, ") and plan.prompt.tokens <= 75
    assert plan.prompt.expansion["seeds"] == [7] and not plan.prompt.expansion["replayed"]
    assert plan.request.expanded_prompt == final
    assert engine.plan(tiny_request(prompt="a lighthouse", seed=7, expansion=True)).prompt.prompt_final == final
    assert engine.plan(tiny_request(prompt="a lighthouse", seed=8, expansion=True)).prompt.prompt_final != final
    assert "prompt_expansion" in {r.code for r in plan.risks}
    path = save_result(engine.run(plan), tmp_path)[0]["path"]
    chunks = read_text_chunks(path)
    assert chunks["parameters"].split("\n")[0] == final
    assert json.loads(chunks["studio"])["plan"]["request"]["expanded_prompt"] == final


def test_replay_uses_the_stored_text_and_never_expands_again(engine, tiny_request, monkeypatch):
    from studio.prompts import expansion

    plan = engine.plan(tiny_request(prompt="a lighthouse", seed=7, expansion=True))

    def refuse(*a, **k):
        raise AssertionError("expansion ran again on replay")

    monkeypatch.setattr(expansion, "wordbank_expand", refuse)
    replay = engine.plan(plan.request)
    assert replay.prompt.prompt_final == plan.prompt.prompt_final
    assert replay.prompt.expansion["replayed"] is True
    # even a hand-edited stored text is used as it is
    edited = engine.plan(plan.request.model_copy(update={"expanded_prompt": "a lighthouse, by hand"}))
    assert edited.prompt.prompt_final == "a lighthouse, by hand"


def test_each_image_of_a_batch_is_expanded_with_its_own_seed(engine, tiny_request, tmp_path):
    import json

    import numpy as np

    from studio.metadata.png import read_text_chunks
    from studio.outputs import save_result

    plan = engine.plan(tiny_request(prompt="a lighthouse", seed=7, batch=3, expansion=True))
    alone = [engine.plan(tiny_request(prompt="a lighthouse", seed=s, expansion=True)) for s in (7, 8, 9)]
    texts = [p.prompt.prompt_final for p in alone]
    assert len(set(texts)) == 3  # three seeds, three expansions
    assert plan.prompt.per_image == texts and plan.request.expanded_prompt == texts
    assert plan.prompt.expansion["seeds"] == [7, 8, 9] and len(plan.prompt.expansion["added"]) == 3
    # one chunk count for the whole batch (the longest text's), so one compiled variant serves it
    assert plan.prompt.chunk_count == max(p.prompt.chunk_count for p in alone)
    result = engine.run(plan)
    third = engine.run(alone[2])
    np.testing.assert_array_equal(result.images[2], third.images[0])  # image 3 = seed 9 run alone
    assert not np.array_equal(result.images[0], result.images[1])
    saved = save_result(result, tmp_path)
    for i, entry in enumerate(saved):
        assert entry["prompt_final"] == texts[i]
        chunks = read_text_chunks(entry["path"])
        assert chunks["parameters"].split("\n")[0] == texts[i]
        record = json.loads(chunks["studio"])
        assert record["image"]["index"] == i and record["plan"]["request"]["expanded_prompt"] == texts


def test_a_batch_replays_its_texts_verbatim(engine, tiny_request, monkeypatch):
    import numpy as np

    from studio.prompts import expansion

    plan = engine.plan(tiny_request(prompt="a lighthouse", seed=7, batch=2, expansion=True))
    first = engine.run(plan)
    monkeypatch.setattr(expansion, "wordbank_expand", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("expansion ran again on replay")))
    replay = engine.plan(plan.request)
    assert replay.prompt.per_image == plan.prompt.per_image and replay.prompt.expansion["replayed"] is True
    np.testing.assert_array_equal(engine.run(replay).images, first.images)
    # one stored text replays for every image of the batch
    one = engine.plan(plan.request.model_copy(update={"expanded_prompt": "a lighthouse, by hand"}))
    assert one.prompt.per_image is None and one.prompt.final_for(1) == "a lighthouse, by hand"


def test_a_list_of_texts_must_match_the_batch():
    from studio.errors import StudioError
    from studio.settings import build_request

    with pytest.raises(StudioError, match="expanded_prompt has 2 texts for a batch of 3: give one text per image"):
        build_request(prompt="x", batch=3, expansion=True, expanded_prompt=["x, a", "x, b"])
