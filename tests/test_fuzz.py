"""Property tests for everything studio reads from outside: the seven targets of bench/fuzz.py, driven by hypothesis.

The inputs come from hypothesis strategies (derandomized: CI sees the same examples on every run); each one
goes through the same target code that bench/fuzz.py runs, with the real tokenizer, engine and CLI. The
property: the input is accepted, or refused with a StudioError whose message is one clear line (the CLI: exit
code 2 and exactly one `error:` line on stderr) -- never another exception, a hang or a broken promise.

The bugs the fuzzer found each have a `test_known_*` test at the end with its minimal reproducer, so
that they stay fixed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.errors import StudioError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("studio_bench_fuzz", ROOT / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz
_spec.loader.exec_module(fuzz)

PROPERTY = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
def check(target, case):
    outcome, problem = fuzz.execute(target, case)
    assert outcome in ("accepted", "refused"), f"{problem}\nreproducer: {target.reproducer(case)[:2000]}"
    return outcome


@pytest.fixture(scope="module")
def ctx(cache_dir, tmp_path_factory):
    """A work folder like a fuzz worker's: the CLI's default folders point into it, and it is the working
    directory (a relative path in an argv lands there)."""
    work = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_MODELS_DIR", str(work / "models"))
        mp.setenv("STUDIO_OUTPUT_DIR", str(work / "out"))
        mp.chdir(work)
        (work / "models").mkdir()
        yield fuzz.Context(work, Path(cache_dir))


# ---------------------------------------------------------------------------------------------- strategies

# Line breaks of every kind included: user text echoed in a refusal must still make one line.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
weird = st.sampled_from([t for t in fuzz.WEIRD_TEXT if t.encode("utf-8", "ignore").decode() == t])
surrogates = st.sampled_from(["\ud800", "a\udcff", "\udfff\ud800"])  # JSON can spell them: "\\ud800"
scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from(fuzz.WEIRD_INTS)
           | st.floats() | st.sampled_from(fuzz.WEIRD_FLOATS) | texts | weird)


def json_values(keys=(), lone_surrogates=False):
    key = st.sampled_from(list(keys)) | texts if keys else texts
    leaves = scalars | surrogates if lone_surrogates else scalars
    return st.recursive(leaves, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(key | surrogates if lone_surrogates else key, children, max_size=4),
                        max_leaves=12)


@st.composite
def edited_text(draw, bases, pieces):
    """A base text with a few insertions, deletions and replacements."""
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(pieces) | texts)
        cut = draw(st.integers(0, 8))
        text = draw(st.sampled_from([text[:at] + piece + text[at:], text[:at] + text[at + cut:],
                                     text[:at] + piece + text[at + cut:], text[:at]]))
    return text


@st.composite
def edited_json(draw, base, keys, lone_surrogates=False):
    """A JSON value with a few of its nodes replaced, removed or added to."""
    import copy

    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        nodes = fuzz._nodes(value, [])
        parent, key, node = nodes[draw(st.integers(0, len(nodes) - 1))]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "add" and isinstance(node, dict):
            node[draw(st.sampled_from(list(keys)) | texts)] = draw(json_values(keys, lone_surrogates))
        elif op == "delete" and parent is not None:
            del parent[key]
        elif parent is None:
            value = draw(json_values(keys, lone_surrogates))
        else:
            parent[key] = draw(json_values(keys, lone_surrogates))
    return value


# ---------------------------------------------------------------------------------------------- targets

@pytest.fixture(scope="module")
def prompts(ctx):
    return fuzz.Prompts(ctx)


@settings(max_examples=300, **PROPERTY)
@given(st.lists(st.sampled_from(fuzz.PROMPT_PIECES), max_size=40).map("".join) | st.text(max_size=200)
       | edited_text(fuzz.PROMPTS, fuzz.PROMPT_PIECES))
def test_prompts_weights_syntax(prompts, text):
    check(prompts, {"text": text})


@pytest.fixture(scope="module")
def infotext(ctx):
    return fuzz.Infotext(ctx)


@st.composite
def fields_line(draw):
    pairs = draw(st.lists(st.tuples(st.sampled_from(fuzz.A1111_KEYS) | weird,
                                    st.sampled_from(fuzz.A1111_PIECES) | texts | scalars.map(str)), max_size=12))
    prompt = draw(st.lists(st.sampled_from(fuzz.PROMPT_PIECES), max_size=6).map("".join))
    negative = draw(st.sampled_from(["", "\nNegative prompt: ugly", "\nNegative prompt: "]))
    return prompt + negative + "\n" + ", ".join(f"{k}: {v}" for k, v in pairs)


@settings(max_examples=300, **PROPERTY)
@given(edited_text(fuzz.A1111_TEXTS, fuzz.A1111_PIECES) | fields_line() | st.text(max_size=300))
def test_a1111_infotext(infotext, text):
    check(infotext, {"text": text})


@settings(max_examples=50, **PROPERTY)
@given(st.binary(max_size=400) | edited_text(fuzz.A1111_TEXTS, fuzz.A1111_PIECES).map(
    lambda t: t.encode("utf-8", "surrogatepass")))
def test_a1111_infotext_bytes(infotext, data):
    check(infotext, {"bytes": list(data)})


@pytest.fixture(scope="module")
def fooocus(ctx):
    return fuzz.Fooocus(ctx)


@settings(max_examples=250, **PROPERTY)
@given(edited_json(fuzz.FOOOCUS_PRESET, fuzz.FOOOCUS_KEYS, True) | json_values(fuzz.FOOOCUS_KEYS, True))
def test_fooocus_presets(fooocus, data):
    check(fooocus, {"preset": data})


@settings(max_examples=80, **PROPERTY)
@given(edited_json(fuzz.FOOOCUS_PRESET, fuzz.FOOOCUS_KEYS).map(json.dumps).map(str.encode) | st.binary(max_size=200))
def test_fooocus_preset_files(fooocus, data):
    check(fooocus, {"preset_file": list(data)})


@settings(max_examples=250, **PROPERTY)
@given(edited_json(fuzz.FOOOCUS_IMAGE, fuzz.FOOOCUS_IMAGE_KEYS, True).map(json.dumps)
       | edited_text([json.dumps(fuzz.FOOOCUS_IMAGE)], fuzz.JSON_PIECES[:-6]))
def test_fooocus_image_json(fooocus, text):
    check(fooocus, {"image_json": text})


@pytest.fixture(scope="module")
def presets(ctx):
    return fuzz.Presets(ctx)


@settings(max_examples=150, **PROPERTY)
@given(st.data())
def test_studio_presets(presets, data):
    base = json.loads(data.draw(st.sampled_from(presets.bases)))
    if data.draw(st.booleans()):
        text = json.dumps(data.draw(edited_json(base, presets.KEYS, True)))
    else:
        text = data.draw(edited_text([json.dumps(base)], fuzz.JSON_PIECES))
    check(presets, {"text": text})


@pytest.fixture(scope="module")
def metadata(ctx):
    return fuzz.Metadata(ctx)


@st.composite
def image_cases(draw, target):
    fmt = draw(st.sampled_from(["png", "jpeg", "webp"]))
    kind = draw(st.sampled_from(["studio", "a1111", "fooocus"]))
    studio = parameters = None
    if kind == "studio":
        studio = json.dumps(draw(edited_json(draw(st.sampled_from(target.records)), target.RECORD_KEYS, True)),
                            ensure_ascii=draw(st.booleans()))
        parameters = draw(st.none() | st.sampled_from(target.texts))
    elif kind == "a1111":
        parameters = draw(edited_text(target.texts, fuzz.A1111_PIECES))
    else:
        parameters = json.dumps(draw(edited_json(fuzz.FOOOCUS_IMAGE, fuzz.FOOOCUS_IMAGE_KEYS, True)))
    ops = draw(st.lists(st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10**5), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.integers(0, 10**5)),
        st.tuples(st.just("word"), st.integers(0, 999), st.sampled_from([2, 4]), st.integers(0, 2**32 - 1),
                  st.booleans()),
        st.tuples(st.sampled_from(["png_drop", "png_dup", "png_move"]), st.integers(0, 99), st.integers(0, 99)),
    ).map(list), max_size=3))
    case = {"format": fmt, "ext": {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[fmt], "ops": ops}
    if fmt == "png":
        texts = [[draw(st.sampled_from(["tEXt", "zTXt", "iTXt", "iTXt-z"])), "parameters", parameters]] \
            if parameters is not None else []
        if studio is not None:
            texts.append([draw(st.sampled_from(["iTXt", "iTXt-z"])), "studio", studio])
        case.update(texts=texts, after_idat=draw(st.booleans()))
    else:
        case.update(description=studio, comment=parameters, in_ifd0=draw(st.booleans()),
                    encoding=draw(st.sampled_from(["unicode-be", "unicode-le", "ascii", "none"])),
                    order=draw(st.sampled_from([">", "<"])))
    return case


@settings(max_examples=80, **PROPERTY)
@given(st.data())
def test_image_metadata_info_and_import(metadata, data):
    check(metadata, data.draw(image_cases(metadata)))


@pytest.fixture(scope="module")
def cli(ctx):
    return fuzz.Cli(ctx)


CLI_VALUES = list(fuzz.Cli.VALUES)


@settings(max_examples=120, **PROPERTY)
@given(st.data())
def test_cli_arguments(cli, data):
    argv = cli.base(data.draw(st.randoms(use_true_random=False)), data.draw(st.sampled_from(cli.COMMANDS)))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(1, len(argv)))
        op = data.draw(st.sampled_from(["pair", "flag", "value", "delete", "text"]))
        if op == "pair":
            argv[at:at] = [data.draw(st.sampled_from(cli.FLAGS)), data.draw(st.sampled_from(CLI_VALUES + cli.files))]
        elif op == "flag":
            argv.insert(at, data.draw(st.sampled_from(cli.FLAGS)))
        elif op == "value":
            argv.insert(at, data.draw(st.sampled_from(CLI_VALUES)))
        elif op == "delete" and len(argv) > 1:
            del argv[data.draw(st.integers(1, len(argv) - 1))]
        else:
            argv.insert(at, data.draw(texts.filter(lambda t: "/" not in t and t.lstrip("-")[:1] != "h")))
    if argv[0] == "verify":
        argv = [a for a in argv if not any(flag.startswith(a.split("=")[0]) and len(a) > 2
                                           for flag in ("--twice", "--against"))]
    check(cli, {"argv": argv})


@pytest.fixture(scope="module")
def http(ctx):
    return fuzz.Http(ctx)


hostile = (scalars | st.sampled_from([[], [1], ["a"], {}, {"a": 1}, {"name": "torch"}])
           | st.integers().map(str) | st.floats().map(str))


@settings(max_examples=200, **PROPERTY)
@given(st.data())
def test_http_api_payloads(http, data):
    values = dict(data.draw(st.sampled_from(http.bases)))
    keys = [k for k in values if k not in ("replay", "live_preview")]  # page state, not controls
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4)):
        values[key] = data.draw(st.sampled_from(http.valid[key]) | hostile)
    check(http, {"values": values})


# ---------------------------------------------------------------------------------------------- known bugs
# Found by bench/fuzz.py (each was a traceback or a refusal of more than one line); each test is the minimal
# reproducer.

def _refuses(fn):
    try:
        fn()
    except StudioError as exc:
        return fuzz.clear_line(str(exc))
    return True


def test_known_broken_model_folder(ctx, tiny_request):
    from studio.engine.engine import Engine
    from studio.settings import AppConfig

    models = ctx.work / "known-models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "model_index.json").write_text("{not json")
    engine = Engine(AppConfig(cache_dir=ctx.cache_dir, output_dir=ctx.out_dir, models_dir=models))
    assert _refuses(lambda: engine.plan(tiny_request(model="broken")))


@pytest.mark.parametrize("batch", ["x", None, float("inf"), [2]])
def test_known_replay_with_hostile_batch(http, batch):
    values = {**http.bases[0], "expansion": True, "batch": batch,
              "replay": {"prompt": "a fox", "seed": 7, "texts": ["a fox, x"]}}
    outcome, problem = fuzz.execute(http, {"values": values})
    assert outcome in ("accepted", "refused"), problem


def test_known_preset_with_lone_surrogate(presets):
    text = json.dumps({"schema_version": 1, "description": "a\ud800", "model": {"file": "tiny"}, "request": {}})
    outcome, problem = fuzz.execute(presets, {"text": text})
    assert outcome in ("accepted", "refused"), problem


def test_known_cli_prints_undecodable_path(cli):
    outcome, problem, _ = fuzz.check_cli(["models", "--models-dir", "\udcff", "--json"])
    assert outcome in ("accepted", "refused"), problem


@pytest.mark.parametrize("argv", [["tokens", "a", "\r.."], ["info", "\x85"]])
def test_known_line_breaks_in_messages(cli, argv):
    outcome, problem, _ = fuzz.check_cli(argv)
    assert outcome in ("accepted", "refused"), problem


def test_fuzz_cases_are_reproducible():
    """bench/fuzz.py's case i is the same on every run, so counts compare between runs and --case replays it."""
    for name in ("prompts", "fooocus"):
        target = fuzz.TARGETS[name].__new__(fuzz.TARGETS[name])  # make() needs no set-up for these two
        first, again = (repr(target.make(fuzz.case_rng(fuzz.DEFAULT_SEED, name, 17))) for _ in range(2))
        assert first == again
