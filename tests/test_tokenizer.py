from studio.models.tokenizer import VOCAB_SIZE, clip_tokenizer
from studio.prompts.chunking import count_tokens


def test_ids_equal_the_real_clip_tokenizer(cache_dir):
    tok = clip_tokenizer(str(cache_dir))
    assert len(tok) == VOCAB_SIZE
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert tok.model_max_length == 77


def test_sdxl_second_tokenizer_pads_with_bang(cache_dir):
    tok = clip_tokenizer(str(cache_dir), pad_token="!")
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407]
    assert padded[4:] == [0] * 73  # "!" is id 0, as in SDXL's tokenizer_2


def test_token_count_in_75_token_chunks(cache_dir):
    tok = clip_tokenizer(str(cache_dir))
    c = count_tokens("a photograph of an astronaut riding a horse", tok)
    assert (c.tokens, c.chunks, c.capacity, c.to_next_boundary, c.chunk_token_counts) == (8, 1, 75, 67, [8])
    assert c.label() == "8/75"
    long = count_tokens(" ".join(["cat"] * 80), tok)
    assert (long.tokens, long.chunks, long.chunk_token_counts) == (80, 2, [75, 5])
    assert long.label() == "80/150 · 2 chunks"
    empty = count_tokens("", tok)
    assert (empty.tokens, empty.chunks, empty.capacity) == (0, 1, 75)
