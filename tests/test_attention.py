"""Emphasis parsing is exactly A1111's parse_prompt_attention, quirks and float bits included.

`parse` is checked three ways: A1111's own doctests, hand-worked quirks, and a second, independent
implementation of the same rules (`oracle`, below) on random bracket soups.
"""

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studio.cli import main
from studio.errors import StudioError
from studio.models.tokenizer import clip_tokenizer
from studio.prompts.attention import BREAK_MARK, is_break, parse, split_break
from studio.prompts.chunking import MAX_WEIGHT, chunk_prompt, count_tokens

S = 1 / 1.1  # A1111's square-bracket multiplier, computed the way it computes it


# -- A1111's doctests: exact, floats compared with == -------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_a1111_doctests(text, expected):
    assert parse(text) == expected


# -- quirks, worked by hand from the rules ------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    # a stray closer (its stack empty) is text
    ("a) b]", [("a) b]", 1.0)]),
    ("())", [(")", 1.0)]),
    ("(a]b)", [("a]b", 1.1)]),
    # separate stacks: ")" closes "(" while "[" is open inside it; "b" gets 1.1 then 1/1.1 (== 1.0)
    ("(a [b) c]", [("a ", 1.1), ("b", 1.0), (" c", S)]),
    # a weight may have whitespace around it (A1111 1.6.0+, PR #12177)
    ("(a: 1.2)", [("a", 1.2)]),
    ("(a: 1.2 ) b", [("a", 1.2), (" b", 1.0)]),
    ("(a :1.2)", [("a ", 1.2)]),
    # BREAK: its segment is multiplied inside brackets; empty parts are kept; it merges like any segment
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("[BREAK]", [("", S), ("BREAK", -S), ("", S)]),
    ("(BREAK:0)", [("BREAK", 0.0)]),  # 0.0 == -0.0: the three segments merge
    ("BREAK a", [("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
    ("a BREAK", [("a", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("BREAK BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("a (b:1.2) BREAK c", [("a ", 1.0), ("b", 1.2), ("", 1.0), ("BREAK", -1.0), ("c", 1.0)]),
    ("aBREAK b, break", [("aBREAK b, break", 1.0)]),
    # a lone backslash leaves an empty segment (the backslash vanishes); it does not escape BREAK
    ("a\\b", [("ab", 1.0)]),
    ("a\\", [("a", 1.0)]),
    ("x \\BREAK y", [("x ", 1.0), ("BREAK", -1.0), ("y", 1.0)]),
    ("\\\\", [("\\", 1.0)]),  # two backslashes → one
    ("\\\\(a)", [("\\", 1.0), ("a", 1.1)]),
    # an unused weight closer (no "(" open) is text, even inside [ ]
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("[x:1.2)]", [("x:1.2)", S)]),
    ("a:b", [("a:b", 1.0)]),
    ("(a:1.2", [("a:1.2", 1.1)]),  # no ")": not a weight; the "(" applies at the end
    # a number that is not a number (A1111 raises ValueError): ":" and number are text, ")" is ×1.1
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
    ("(a:.)", [("a:.", 1.1)]),
    ("(a:+)", [("a:+", 1.1)]),  # not weight syntax at all
    ("(a:1.2.3) (b:2)", [("a:1.2.3", 1.1), (" ", 1.0), ("b", 2.0)]),
    # a negative weight is a weight, not a BREAK
    ("(x:-1)", [("x", -1.0)]),
    ("((a:1.5):2)", [("a", 3.0)]),
    # never closed: round first, in opening order, then square (the float bits show the order)
    ("((([a", [("a", 1.2100000000000004)]),
    ("[[a]", [("a", 0.8264462809917354)]),
    ("((a)", [("a", 1.2100000000000002)]),
    ("(a [b (c", [("a ", 1.1), ("b ", 1.0), ("c", 1.1)]),
    ("[[[a]]]", [("a", 0.7513148009015777)]),
    ("", [("", 1.0)]),
    ("([)]", [("", 1.0)]),
])
def test_quirks(text, expected):
    assert parse(text) == expected


def test_break_is_only_text_break_with_weight_minus_one():
    assert is_break("BREAK", -1.0) and is_break("BREAK", -1) and is_break("BREAK", BREAK_MARK)
    assert not is_break("BREAK", -1.1) and not is_break("x", -1.0) and not is_break("BREAK", 1.0)


@pytest.mark.parametrize("text", ["(a:" + "9" * 400 + ")", "((a:0):" + "9" * 400 + ")", "(a:١٫٢)", "(a:١.٢)",
                                  "\\", "(" * 500 + ")" * 700, "[" * 300 + "BREAK" * 3, ":" * 50 + ")"])
def test_never_raises(text):
    assert parse(text)


def test_overflowing_weight_is_returned_not_raised():
    assert parse("(a:" + "9" * 400 + ")") == [("a", math.inf)]


# -- an independent oracle, written from the rule list --------------------------------------------------
# One master regex tokenizes the whole prompt first; the token list is then evaluated. A weight closer
# whose number does not parse is re-tokenized as a ":" and what follows it; with no "(" open that gives
# the same segments (all weight 1.0, merged) as keeping the closer whole, so the tokenizer need not know
# the stacks.
_ORACLE_TOKEN = re.compile(r"""
    (?P<esc>\\[()\[\]\\])
  | (?P<backslash>\\)
  | (?P<open>[(\[])
  | (?P<weight>:\s*(?P<num>[+-]?[.\d]+)\s*\))
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
""", re.X)


def _oracle_tokens(text):
    pos = 0
    while pos < len(text):
        m = _ORACLE_TOKEN.match(text, pos)
        kind = m.lastgroup if m.lastgroup != "num" else "weight"
        if kind == "weight":
            try:
                number = float(m.group("num"))
            except ValueError:
                yield "text", ":", None
                pos += 1
                continue
            yield "weight", m.group(0), number
        else:
            yield kind, m.group(0), None
        pos = m.end()


def oracle(text):
    res = []
    stacks = {"(": [], "[": []}

    def mul(start, factor):
        for i in range(start, len(res)):
            res[i][1] = res[i][1] * factor

    def literal(s):
        pieces = re.split(r"\s*\bBREAK\b\s*", s, flags=re.DOTALL)
        res.append([pieces[0], 1.0])
        for piece in pieces[1:]:
            res.append(["BREAK", -1])
            res.append([piece, 1.0])

    for kind, tok, number in _oracle_tokens(text):
        if kind == "esc":
            res.append([tok[1], 1.0])
        elif kind == "backslash":
            res.append(["", 1.0])
        elif kind == "open":
            stacks[tok].append(len(res))
        elif kind == "weight" and stacks["("]:
            mul(stacks["("].pop(), number)
        elif kind == "close" and stacks["(" if tok == ")" else "["]:
            mul(stacks["(" if tok == ")" else "["].pop(), 1.1 if tok == ")" else 1 / 1.1)
        else:
            literal(tok)
    for start in stacks["("]:
        mul(start, 1.1)
    for start in stacks["["]:
        mul(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i < len(res) - 1:
        if res[i][1] == res[i + 1][1]:
            res[i][0] = res[i][0] + res[i + 1][0]
            del res[i + 1]
        else:
            i += 1
    return [(t, w) for t, w in res]


SOUP = st.lists(st.sampled_from(list("()[]\\: ab.1-+0") + ["BREAK", " BREAK ", "  ", "\n"]), max_size=40)


@settings(max_examples=3000, deadline=None)
@given(SOUP.map("".join))
def test_parse_matches_the_oracle_on_bracket_soup(text):
    got = parse(text)  # must not raise
    want = oracle(text)
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == [w for _, w in want]  # == on the floats: bit-exact (no nan here)
    assert all(math.copysign(1, a) == math.copysign(1, b) for (_, a), (_, b) in zip(got, want))


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=60))
def test_parse_never_raises_on_any_text(text):
    got = parse(text)
    assert got and all(isinstance(t, str) and isinstance(w, float) for t, w in got)
    want = oracle(text)
    assert [t for t, _ in got] == [t for t, _ in want]


def test_the_oracle_agrees_with_the_pinned_cases():
    for text, expected in [("(a [b) c]", [("a ", 1.1), ("b", 1.0), (" c", S)]), ("BREAK a", parse("BREAK a")),
                           ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                            parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")),
                           ("(a:1.2.3)", [("a:1.2.3", 1.1)])]:
        assert oracle(text) == expected


# -- hostile prompts stay fast (found by bench/fuzz.py) ---------------------------------------------------
WHITESPACE_SOUP = st.lists(st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2028", "\u3000", "BREAK", "B", "K", "x",
                                            "_", "é", "BREAKx", "xBREAK", "(", "."]), max_size=30).map("".join)


@settings(max_examples=2000, deadline=None)
@given(WHITESPACE_SOUP)
def test_split_break_is_the_regex_split(text):
    assert split_break(text) == re.split(r"\s*\bBREAK\b\s*", text, flags=re.S)


@pytest.mark.parametrize("depth", [1, 2, 50, 300])
@pytest.mark.parametrize("shape", ["(a", "[a", "(a:1.3)(", "a([", "[\\ ", "(a BREAK b["])
def test_deep_nesting_matches_the_oracle_bit_for_bit(shape, depth):
    text = shape * depth + ")" * (depth // 2) + "]" * (depth // 3)
    got, want = parse(text), oracle(text)
    assert [t for t, _ in got] == [t for t, _ in want]
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for (_, a), (_, b) in zip(got, want))


@pytest.mark.parametrize("text", [" " * 20000 + "x", "\t" * 19990 + "BREAKx", "(a" * 10000, "[\\ " * 6666,
                                  "a(" * 5000 + ")" * 5000, "(" * 19999 + "a"])
def test_hostile_prompts_parse_and_count_fast(tok, text):
    """The BREAK regex backtracked over every space of a run no BREAK follows (20,000 spaces: seven seconds),
    and each closing bracket multiplied every weight after its opening one in a Python loop (10,000 nested
    brackets: two seconds, repeated by every count the prompt expander makes: a plan took 19 s)."""
    import time

    start = time.perf_counter()
    parse(text)
    try:
        count_tokens(text, tok)
    except StudioError:  # a weight out of range: refused, as it should be
        pass
    assert time.perf_counter() - start < 1.0


# -- chunking -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(cache_dir):
    return clip_tokenizer(str(cache_dir))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_negative_weight_is_text_not_a_break(tok):
    chunks, counted = chunk_prompt("(x:-1)", tok)
    assert len(chunks) == 1 and counted == 1
    assert chunks[0].tokens == _ids(tok, "x") and chunks[0].weights == [-1.0]


def test_break_inside_a_group_is_the_word_break(tok):
    chunks, _ = chunk_prompt("(a BREAK b)", tok)
    assert len(chunks) == 1
    assert chunks[0].tokens == _ids(tok, "a") + _ids(tok, "BREAK") + _ids(tok, "b")
    assert chunks[0].weights == [1.1, -1.1, 1.1]
    assert count_tokens("(a BREAK b)", tok).chunk_token_counts == [3]


def test_plain_break_still_splits(tok):
    c = count_tokens("a BREAK b", tok)
    assert c.chunks == 2 and c.chunk_token_counts == [1, 1] and c.tokens == 76


@pytest.mark.parametrize("text,shown", [
    ("(a:1" + "0" * 39 + ")", "1e+39"),
    ("(a:" + "9" * 400 + ")", "inf"),
    ("((a:0):" + "9" * 400 + ")", "nan"),
    ("((a:999):999)", "998001.0"),
    ("x, (cat:-1000.5)", "-1000.5"),
])
def test_out_of_range_weight_is_refused(tok, text, shown):
    with pytest.raises(StudioError) as err:
        chunk_prompt(text, tok)
    msg = err.value.message
    assert f"prompt weight {shown} " in msg and "out of range" in msg and "between -1000 and 1000" in msg
    assert "\n" not in msg


def test_weights_at_the_bound_are_accepted(tok):
    assert MAX_WEIGHT == 1000
    assert chunk_prompt("(a:1000) (b:-1000)", tok)[0][0].weights == [1000.0, -1000.0]


# -- the CLI ----------------------------------------------------------------------------------------------
def test_tokens_json_segments(capsys, cache_dir):
    code = main(["tokens", "a (b:1.2) BREAK c", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    # the space after ")" is eaten by BREAK's \s*, leaving an empty part before the BREAK
    assert doc["segments"] == [["a ", 1.0], ["b", 1.2], ["", 1.0], ["BREAK", -1], ["c", 1.0]]
    assert isinstance(doc["segments"][3][1], int) and isinstance(doc["segments"][0][1], float)
    assert doc["chunks"] == 2 and doc["chunk_token_counts"] == [2, 1] and doc["tokens"] == 76
    assert set(doc) == {"tokens", "chunks", "capacity", "to_next_boundary", "chunk_token_counts", "segments"}


def test_tokens_json_break_in_a_group_is_a_weighted_word(capsys, cache_dir):
    assert main(["tokens", "(a BREAK b)", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["segments"] == [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]] and doc["chunks"] == 1


def test_tokens_text_output_lists_segments(capsys, cache_dir):
    assert main(["tokens", "a (b:1.2) BREAK c"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "76/150 · 2 chunks"
    assert out[1] == "'a '×1  'b'×1.2  ''×1  BREAK  'c'×1"


@pytest.mark.parametrize("argv", [
    ["tokens", "(a:99999)", "--json"],
    ["plan", "--prompt", "(a:99999)", "--width", "64", "--height", "64", "--json"],
    ["plan", "--prompt", "a", "--negative", "[(b:1" + "0" * 39 + ")]", "--width", "64", "--height", "64"],
    ["plan", "--prompt", "(a:1" + "0" * 39 + ")", "--width", "64", "--height", "64"],
])
def test_cli_refuses_out_of_range_weights(capsys, cache_dir, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: prompt weight ") and "out of range" in err and err.count("\n") == 1
