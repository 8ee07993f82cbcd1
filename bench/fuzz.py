"""Seeded fuzzing of everything studio reads from outside, with counts.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/fuzz.py [--cases N] [--seed S] [--target NAME ...] [--jobs J]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/fuzz.py --target prompts --case 123   # replay one case, full traceback

Targets (each drives the real code in-process; nothing is mocked):
- metadata: PNG/JPEG/WebP files (mutated studio records, A1111 `parameters`, Fooocus JSON, damaged bytes)
  through read_metadata, `studio info` and `studio preset import --from image` (whose preset is read back);
- infotext: A1111 infotext → parse_infotext → to_request_values → build_request (model tiny);
- fooocus: Fooocus presets (objects and files) → import_fooocus / load_fooocus_preset, Fooocus image JSON →
  parse_fooocus_json; what they give → build_request;
- presets: studio presets (shipped, saved, schema 0) → presets.parse → locate_model, plan, diff (what
  `studio preset diff` does) → saved again and read back;
- prompts: weights syntax → attention.parse and count_tokens with the real CLIP tokenizer;
- cli: studio.cli.main(argv) for plan, tokens, info, verify (two images), models, preset diff/import/save,
  and generate argvs that refuse before running;
- http: the app's handler path with hostile control values: request_values → build_request →
  Engine.plan → preview fingerprints → plan_markdown.

Case i of a target is made from random.Random(f"{seed}:{target}:{i}"): a run is repeatable and one case can
be replayed alone (--case). Each case ends one way:
- accepted: the input was taken;
- refused: a StudioError with a clear one-line message (CLI: exit code 2 and exactly one `error:` line);
- unclear refusal: a StudioError whose message is not one line (str.splitlines, or a "\r"), or CLI stderr
  with lines besides `note:` and the one `error:` (a library's warning, say);
- traceback: any other exception, or a broken promise (a preset studio wrote that studio cannot read, a CLI
  exit code other than 0 or 2, values a parser vouched for that build_request refuses);
- hang: over the watchdog (10 s); the worker process is killed and restarted at the next case.
Cases run in worker processes (--jobs, default the CPU count), each target in --shards pieces; a worker that
dies (a segfault) counts its case as a traceback. For each distinct failure (exception type and the line of
studio code that raised it) the first case is shrunk to a small reproducer. Exit status 1 if any traceback,
unclear refusal or hang.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself off the path: bench/openvino.py would shadow the openvino package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

DEFAULT_SEED = 20250610
DEFAULT_CASES = 10_000
WATCHDOG_S = 10.0
SETUP_LIMIT_S = 600.0
SHRINK_ATTEMPTS = 300
SHRINK_SECONDS = 60.0
MAX_SHRUNK = 4  # distinct failures shrunk per worker

# ------------------------------------------------------------------------------------------- values

WEIRD_TEXT = ["", " ", "  ", "\n", "\r\n", "\r", "\t", "\x00", "\x0b", "\x1c", "\x85", "\u2028", "\ufeff", "\u200b",
              "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e-400", "0", "-0", "-1", "1", "+1",
              "1.5", ".5", "5.", "1.2.3", "007", "0x1F", "1_000", "１２", "٣", "9" * 30, "9" * 400, "-" + "9" * 25,
              "(", ")", "[", "]", "{", "}", ":", ",", ";", "\\", '"', "'", "BREAK", " BREAK ", "AND", "東京", "é",
              "e\u0301", "🦊", "\ud800", "\udcff", "None", "null", "true", "False", "tiny", "tiny-sdxl", "../x", "a/b",
              "~", ".", "..", "C:x", "<|endoftext|>", "</w>", "%s", "{0}", "$HOME", "x" * 300]
JSON_PIECES = WEIRD_TEXT + ['"', "{", "}", "[", "]", ",", ":", "NaN", "Infinity", "-Infinity", "1e999", "-1", "[" * 70,
                           "[" * 5000, '{"a":' * 100, "1" * 5000, '"\\ud800"', '"\\udcff"', '"\\u0000"', "\\",
                           '{"plan"', '"schema_version": 0', '"model": "tiny"']
WEIRD_INTS = [0, 1, -1, 2, 4, 7, 8, 12, 13, 16, 17, 30, 63, 64, 65, 72, 150, 151, 512, 2048, 2049, 2056, 2**31 - 1,
              2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, -2**63, 2**64, 10**20, 10**400, -10**400]
WEIRD_FLOATS = [0.0, -0.0, 0.5, 1.1, 4.0, 7.0, 29.99, 30.0, 30.0001, -1.0, 1e308, -1e308, 5e-324, 1e-9,
                float("nan"), float("inf"), float("-inf"), 64.0, 64.5, 2.5e9]


def weird_scalar(rng: random.Random):
    r = rng.random()
    if r < 0.1:
        return None
    if r < 0.2:
        return rng.random() < 0.5
    if r < 0.45:
        return rng.choice(WEIRD_INTS) if rng.random() < 0.8 else rng.randint(-10**6, 10**6)
    if r < 0.65:
        return rng.choice(WEIRD_FLOATS) if rng.random() < 0.8 else rng.uniform(-100, 100)
    return rng.choice(WEIRD_TEXT)


def rand_json(rng: random.Random, depth: int = 0, keys=()):
    """Any JSON value (NaN and Infinity included: Python's json reads them), now and then nested deeply."""
    r = rng.random()
    if r < 0.01:  # deep nesting
        value = weird_scalar(rng)
        for _ in range(rng.choice([20, 63, 64, 65, 66, 200])):  # deeper ones come as text (JSON_PIECES)
            value = [value] if rng.random() < 0.5 else {"a": value}
        return value
    if depth > 3 or r < 0.6:
        return weird_scalar(rng)
    if r < 0.8:
        return [rand_json(rng, depth + 1, keys) for _ in range(rng.randint(0, 4))]
    pool = list(keys) + WEIRD_TEXT
    return {rng.choice(pool): rand_json(rng, depth + 1, keys) for _ in range(rng.randint(0, 4))}


def _nodes(value, out, parent=None, key=None, depth=0):
    out.append((parent, key, value))
    if depth > 40:
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            _nodes(v, out, value, k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nodes(v, out, value, i, depth + 1)
    return out


def mutate_json(rng: random.Random, value, keys=(), ops: int | None = None):
    """A few random edits of a JSON value: replace, delete, add, wrap, retype, tweak numbers and texts."""
    value = copy.deepcopy(value)
    for _ in range(ops or rng.randint(1, 5)):
        nodes = _nodes(value, [])
        parent, key, node = rng.choice(nodes)
        op = rng.random()
        if isinstance(node, dict) and op < 0.25:
            node[rng.choice(list(keys) + WEIRD_TEXT) if rng.random() < 0.7 else rng.choice(WEIRD_TEXT)] = \
                rand_json(rng, 2, keys)
            continue
        if isinstance(node, list) and op < 0.2:
            node.insert(rng.randint(0, len(node)), rand_json(rng, 2, keys))
            continue
        if parent is not None and op < 0.4:
            del parent[key]
            continue
        if op < 0.6:
            new = rand_json(rng, 1, keys)
        elif op < 0.7:
            new = [node] if rng.random() < 0.5 else {rng.choice(list(keys) or ["a"]): node}
        elif isinstance(node, str):
            new = mutate_text(rng, node, WEIRD_TEXT) if rng.random() < 0.8 else (node * rng.randint(2, 3000))[:70000]
        elif isinstance(node, bool):
            new = rng.choice([not node, int(node), str(node).lower(), None])
        elif isinstance(node, (int, float)):
            big = abs(node) > 1e300 if isinstance(node, int) else False  # float(node) would overflow
            new = rng.choice([node + 1, node - 1, -node, node if big else node * 1e300, str(node),
                              node if big else float(node), node if big else node + 0.5,
                              rng.choice(WEIRD_INTS), rng.choice(WEIRD_FLOATS)])
        else:
            new = weird_scalar(rng)
        if parent is None:
            value = new
        else:
            parent[key] = new
    return value


def mutate_text(rng: random.Random, text: str, pieces, ops: int | None = None) -> str:
    """A few random edits of a text: insert, delete, replace, repeat, swap, odd characters, truncate."""
    for _ in range(ops or rng.randint(1, 6)):
        n = len(text)
        at = rng.randint(0, n)
        span = rng.randint(0, 8) if rng.random() < 0.9 else rng.randint(0, max(0, n // 2))
        op = rng.random()
        piece = rng.choice(pieces)
        if op < 0.3:
            text = text[:at] + piece + text[at:]
        elif op < 0.45:
            text = text[:at] + text[at + span:]
        elif op < 0.6:
            text = text[:at] + piece + text[at + span:]
        elif op < 0.68:
            text = text[:at] + text[at:at + span] * rng.randint(2, 40) + text[at + span:]
        elif op < 0.76 and n > 1:
            b = rng.randint(0, n)
            a, b = sorted((at, b))
            text = text[b:] + text[a:b] + text[:a] if rng.random() < 0.3 else text[:a] + text[a:b][::-1] + text[b:]
        elif op < 0.86:
            text = text[:at] + chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF),
                                               rng.randint(0xD800, 0xDFFF), rng.randint(0x800, 0x10FFFF)])) + text[at:]
        elif op < 0.93:
            text = text[:at] + text[at:at + span].upper() + text[at + span:]
        else:
            text = text[:at]
    return text


def rand_text(rng: random.Random, pieces, low: int = 0, high: int = 12) -> str:
    return "".join(rng.choice(pieces) for _ in range(rng.randint(low, high)))


def dumps(value, rng: random.Random | None = None) -> str:
    ascii_only = rng.random() < 0.5 if rng else False
    return json.dumps(value, ensure_ascii=ascii_only)


# ------------------------------------------------------------------------------------------- outcomes

class Broken(Exception):
    """A promise of the code under test did not hold (counted as a traceback)."""


def clear_line(message: str) -> bool:
    """One line a user can read: not empty, no line break of any kind."""
    return bool(message.strip()) and len(message.splitlines()) == 1 and "\r" not in message


def _location(exc: BaseException) -> str:
    """The innermost frame in studio's code (else the innermost of all), as path:line."""
    frames = traceback.extract_tb(exc.__traceback__)
    studio = [f for f in frames if "/studio/" in f.filename.replace("\\", "/")]
    frame = (studio or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename
    with contextlib.suppress(ValueError):
        path = str(Path(path).resolve().relative_to(ROOT))
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{path}:{frame.lineno}"


def failure(kind: str, message: str, where: str) -> dict:
    first = (message.strip().splitlines() or [""])[0]
    return {"type": kind, "message": first[:300], "where": where, "key": f"{kind} at {where}"}


def execute(target, case) -> tuple[str, dict | None]:
    """Run one case: ("accepted" | "refused" | "traceback", failure or None)."""
    from studio.errors import StudioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CLI runs show them again (run_cli)
            outcome = target.run(case)
    except StudioError as exc:
        if clear_line(str(exc)):
            return "refused", None
        return "unclear", failure("UnclearRefusal", f"StudioError that is not one clear line: {str(exc)[:200]!r}",
                                  _location(exc))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
        if isinstance(exc, Broken) and getattr(exc, "where", None):
            return "traceback", failure("Broken", str(exc), exc.where)
        return "traceback", failure(type(exc).__name__, str(exc), _location(exc))
    if isinstance(outcome, tuple):  # a failure the target found without an exception (the CLI)
        return outcome
    return outcome, None


def broken(message: str, where: str) -> Broken:
    exc = Broken(message)
    exc.where = where
    return exc


# ------------------------------------------------------------------------------------------- shared set-up

class Context:
    """One worker's folder, cache and engine (the tiny model is built once per run, then shared read-only)."""

    def __init__(self, work: Path, cache_dir: Path):
        self.work = work
        self.cache_dir = cache_dir
        self.models_dir = work / "models"
        self.out_dir = work / "out"
        self._studio = None
        self._made_on: dict = {}

    def studio(self):
        if self._studio is None:
            from studio.service import Studio
            from studio.settings import AppConfig

            self._studio = Studio(AppConfig(cache_dir=self.cache_dir, output_dir=self.out_dir,
                                            models_dir=self.models_dir))
        return self._studio

    def engine(self):
        return self.studio().engine

    def tokenizer(self):
        return self.engine().tokenizer()

    def made_on(self, device: str, precision: dict) -> dict:
        from studio.repro import environment

        key = (device, tuple(sorted(precision.items())))
        if key not in self._made_on:
            self._made_on[key] = environment.made_on(device, precision)
        return self._made_on[key]

    def plan(self, **values):
        from studio.settings import build_request

        return self.engine().plan(build_request(**{"prompt": "a lighthouse at dusk, (oil painting:1.2)", "seed": 21,
                                                   "steps": 4, "width": 64, "height": 64, "model": "tiny",
                                                   **values}))


def prepare_cache(cache_dir: Path) -> None:
    """Build what every worker plans with (tokenizer, tiny, tiny-sdxl, their hashes) once."""
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    ctx = Context(Path(tempfile.mkdtemp(prefix="fuzz-prepare-")), cache_dir)
    ctx.plan()
    ctx.plan(model="tiny-sdxl")
    shutil.rmtree(ctx.work, ignore_errors=True)


def fill_models_dir(folder: Path) -> None:
    """A models folder of damaged files, so that hostile model names can reach real files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    (folder / "empty.safetensors").write_bytes(b"")
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "tensor.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    (folder / "old.ckpt").write_bytes(b"\x80\x02}q\x00." + bytes(16))
    (folder / "broken_folder").mkdir(exist_ok=True)
    (folder / "broken_folder" / "model_index.json").write_text("{not json")
    (folder / "list_folder").mkdir(exist_ok=True)
    (folder / "list_folder" / "model_index.json").write_text("[1, 2]")
    (folder / "no_index").mkdir(exist_ok=True)


# ------------------------------------------------------------------------------------------- the CLI, captured

def run_cli(argv: list[str]) -> tuple[object, str, str, BaseException | None]:
    """studio.cli.main(argv) with stdout (strict UTF-8, like a terminal) and stderr captured."""
    from studio.cli import main

    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", newline="\n")
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="backslashreplace", newline="\n")
    raised = None
    # Each run shows the warnings a fresh process would show (Python's default filters), on the captured stderr.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = ("exit", exc.code)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            rc, raised = None, exc
        with contextlib.suppress(Exception):
            out.flush()
        with contextlib.suppress(Exception):
            err.flush()
    return rc, out_b.getvalue().decode("utf-8", "replace"), err_b.getvalue().decode("utf-8", "replace"), raised


def check_cli(argv: list[str]) -> tuple[str, dict | None, str]:
    """("accepted" | "refused" | "traceback", failure, stdout) for one run of the CLI, by its contract."""
    rc, out, err, raised = run_cli(argv)
    if raised is not None:
        return "traceback", failure(type(raised).__name__, str(raised), _location(raised)), out
    if isinstance(rc, tuple):  # SystemExit: argparse's --help (an abbreviation such as --he) is fine
        if rc[1] == 0 and "usage:" in out:
            return "accepted", None, out
        return "traceback", failure("SystemExit", f"SystemExit({rc[1]!r}); stderr {err.strip()[-200:]!r}",
                                    "studio/cli.py"), out
    lines = err.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    errors = [line for line in lines if line.startswith("error:")]
    stray = [line for line in lines if not line.startswith(("error: ", "note: "))]
    if "Traceback (most recent call last)" in err:
        return "traceback", failure("TracebackPrinted", err.strip().splitlines()[-1], "stderr"), out
    if stray and rc in (0, 2):
        return "unclear", failure("StrayStderr", f"exit {rc}, stderr line {stray[0][:200]!r}", "stderr"), out
    if rc == 0:
        if errors:
            return "traceback", failure("ErrorOnSuccess", errors[0], "studio/cli.py"), out
        if "--json" in argv:
            try:
                json.loads(out)
            except ValueError as exc:
                return "traceback", failure("NotOneJSONObject", f"--json stdout is not one JSON object ({exc}): "
                                                                f"{out[:120]!r}", "studio/cli.py"), out
        return "accepted", None, out
    if rc == 2:
        if len(errors) != 1 or not lines or not lines[-1].startswith("error:") or \
                not clear_line(errors[0][len("error:"):]):
            return "unclear", failure("UnclearRefusal", f"exit 2 with stderr {err[-300:]!r}", "studio/cli.py"), out
        return "refused", None, out
    return "traceback", failure("ExitCode", f"exit code {rc!r}; stderr {err.strip()[-200:]!r}", "studio/cli.py"), out


# ------------------------------------------------------------------------------------------- image files

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _enc(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf") else "replace")


def png_file(texts: list, after_idat: bool = False) -> bytes:
    """An 8×8 PNG with text chunks [kind, key, value]: kind tEXt, zTXt, iTXt or iTXt-z."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + bytes([200, 30, 60]) * 8 for _ in range(8))))
    chunks = []
    for kind, key, value in texts:
        k = _enc(key, "latin-1")[:79]
        if kind == "tEXt":
            chunks.append(_chunk(b"tEXt", k + b"\0" + _enc(value, "latin-1")))
        elif kind == "zTXt":
            chunks.append(_chunk(b"zTXt", k + b"\0\0" + zlib.compress(_enc(value, "latin-1"))))
        else:
            zipped = kind == "iTXt-z"
            data = _enc(value, "utf-8")
            chunks.append(_chunk(b"iTXt", k + b"\0" + bytes([zipped, 0]) + b"\0\0"
                                 + (zlib.compress(data) if zipped else data)))
    body = ihdr + (idat + b"".join(chunks) if after_idat else b"".join(chunks) + idat)
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def tiff(ifd0: list, exif: list, order: str = ">") -> bytes:
    """A TIFF header with IFD0 and an Exif IFD; entries (tag, type, payload bytes) with byte-sized types."""
    head = (b"MM" if order == ">" else b"II") + struct.pack(order + "HI", 42, 8)

    def ifd(entries, start, next_offset=0):
        table_len = 2 + 12 * len(entries) + 4
        data, table = b"", struct.pack(order + "H", len(entries))
        for tag, typ, payload in sorted(entries, key=lambda e: e[0]):
            count = len(payload) // {3: 2, 4: 4}.get(typ, 1)
            if len(payload) <= 4:
                table += struct.pack(order + "HHI", tag, typ, count) + payload.ljust(4, b"\0")
            else:
                table += struct.pack(order + "HHII", tag, typ, count, start + table_len + len(data))
                data += payload + (b"\0" if len(payload) % 2 else b"")
        return table + struct.pack(order + "I", next_offset) + data

    entries0 = list(ifd0)
    if exif:
        probe = ifd(entries0 + [(0x8769, 4, b"\0\0\0\0")], 8)
        entries0.append((0x8769, 4, struct.pack(order + "I", 8 + len(probe))))
        first = ifd(entries0, 8)
        return head + first + ifd(exif, 8 + len(first))
    return head + ifd(entries0, 8)


def exif_image(fmt: str, description: str | None, comment: str | None, encoding: str, in_ifd0: bool,
               order: str) -> bytes:
    """A JPEG or WebP with ImageDescription and UserComment (encoded as asked) in EXIF."""
    from PIL import Image

    ifd0, exif = [], []
    if description is not None:
        ifd0.append((0x010E, 2, _enc(description, "utf-8") + b"\0"))
    if comment is not None:
        if encoding == "unicode-be":
            raw = b"UNICODE\0" + _enc(comment, "utf-16-be")
        elif encoding == "unicode-le":
            raw = b"UNICODE\0" + _enc(comment, "utf-16-le")
        elif encoding == "ascii":
            raw = b"ASCII\0\0\0" + _enc(comment, "utf-8")
        elif encoding == "jis":
            raw = b"JIS\0\0\0\0\0" + _enc(comment, "shift_jis")
        else:
            raw = _enc(comment, "utf-8")
        (ifd0 if in_ifd0 else exif).append((0x9286, 2 if in_ifd0 else 7, raw))
    data = b"Exif\x00\x00" + tiff(ifd0, exif, order)
    if fmt == "jpeg" and len(data) > 65000:
        fmt = "webp"
    buf = io.BytesIO()
    image = Image.new("RGB", (8, 8), (200, 30, 60))
    image.save(buf, format="JPEG" if fmt == "jpeg" else "WEBP", exif=data, quality=90)
    return buf.getvalue()


def apply_ops(data: bytes, ops: list) -> bytes:
    """Byte-level damage, positions taken modulo the length (so a shrunk list of ops still applies)."""
    data = bytearray(data)
    for op in ops:
        name, args = op[0], op[1:]
        n = len(data)
        if n == 0:
            break
        if name == "flip":
            data[args[0] % n] = args[1] & 0xFF
        elif name == "word":  # a 2- or 4-byte number written over (TIFF types, counts, offsets; PNG lengths)
            at, width, value = args[0] % n, args[1], args[2]
            value &= (1 << 8 * width) - 1
            data[at:at + width] = value.to_bytes(width, "big" if args[3] else "little")[:max(0, n - at)]
        elif name == "cut":
            del data[max(1, args[0] % (n + 1)):]
        elif name == "insert":
            at = args[0] % (n + 1)
            data[at:at] = bytes(args[1])
        elif name == "delete":
            at = args[0] % n
            del data[at:at + args[1]]
        elif name == "dup":
            at = args[0] % n
            data[at:at] = data[at:at + args[1]]
        elif name.startswith("png_"):
            data = bytearray(_png_op(bytes(data), name, args))
        elif name == "riff_size":  # fix a WebP's RIFF size after damage
            if data[:4] == b"RIFF" and n >= 8:
                data[4:8] = struct.pack("<I", n - 8)
    return bytes(data)


def _png_chunks(data: bytes):
    pos, chunks = 8, []
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            break
        chunks.append(data[pos:end])
        pos = end
    return data[:8], chunks, data[pos:]


def _png_op(data: bytes, name: str, args: list) -> bytes:
    head, chunks, tail = _png_chunks(data)
    if not chunks or head != b"\x89PNG\r\n\x1a\n":
        return data
    i = args[0] % len(chunks)
    if name == "png_drop":
        del chunks[i]
    elif name == "png_dup":
        chunks.insert(args[1] % (len(chunks) + 1), chunks[i])
    elif name == "png_move":
        chunks.insert(args[1] % len(chunks), chunks.pop(i))
    elif name == "png_data":  # damage a chunk's data and (when asked) give it a correct CRC again
        kind, body = chunks[i][4:8], bytearray(chunks[i][8:-4])
        for at, value in args[1]:
            if body:
                body[at % len(body)] = value & 0xFF
        if args[2]:
            body = body[: args[2] % (len(body) + 1)]
        chunks[i] = _chunk(kind, bytes(body)) if args[3] else chunks[i][:8] + bytes(body) + chunks[i][-4:]
    elif name == "png_type":
        body = chunks[i][8:-4]
        chunks[i] = _chunk(bytes(args[1]), body)
    return head + b"".join(chunks) + tail


# ------------------------------------------------------------------------------------------- known inputs

REFERENCE_LINE = ("prompt\nNegative prompt: ugly\n"
                  "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b")
A1111_TEXTS = [
    REFERENCE_LINE,
    "a castle on a hill, (sunset:1.2)\nNegative prompt: blurry, lowres\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 965400086, Size: 512x768, Model hash: 45dee52b, "
    'Model: dreamshaper_8, Clip skip: 2, Lora hashes: "a: 1, b: 2", Version: v1.9.4',
    'a\nb\nNegative prompt: c\nd\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, '
    'Size: 512x512, Lora hashes: "a: 1, b: 2", Hashes: {"model": "x"}, RNG: GPU, Version: v1.9.4',
    "東京 café, night\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64",
    "(masterpiece:1.3), [blurry], BREAK a fox\r\nNegative prompt: \r\nSteps: 4, Sampler: DPM++ 2M SDE, Schedule "
    "type: Automatic, CFG scale: 1.5, Seed: 4294967295, Size: 64x96, Model hash: 0123456789, Model: tiny, "
    "RNG: NV, VAE precision: fp16, Backend: openvino performance, Noise fingerprint: abc, Version: studio 0.1",
    "Steps: 150, Sampler: Heun, CFG scale: 30, Seed: 0, Size: 2048x2048, Clip skip: 12, RNG: CPU",
]
A1111_KEYS = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip",
              "RNG", "VAE precision", "Backend", "Noise fingerprint", "Version", "Hashes", "Lora hashes",
              "Denoising strength", "ENSD", "Hires upscale", "Variation seed"]
A1111_PIECES = WEIRD_TEXT + [", ", ": ", "Steps: ", "Seed: ", "Size: ", "x", "512x512", "64x64", "Negative prompt: ",
                             "\nNegative prompt: ", "Sampler: ", "Euler a", "DPM++ 2M", " Karras", "Schedule type: ",
                             "Automatic", "CFG scale: ", "Model hash: ", "Model: ", '"a, b"', '"\\"', '{"a": [1, {',
                             '"x": "y"}', "]}", "Clip skip: ", "RNG: ", "NV", "GPU", "Backend: openvino ",
                             "VAE precision: ", "fp16", "\n"]

FOOOCUS_PRESET = {
    "default_model": "juggernautXL_v8Rundiffusion.safetensors", "default_refiner": "None",
    "default_refiner_switch": 0.5,
    "default_loras": [[True, "sd_xl_offset_example-lora_1.0.safetensors", 0.1], [True, "None", 1.0],
                      [False, "None", 1.0]],
    "default_cfg_scale": 4.0, "default_sample_sharpness": 2.0, "default_sampler": "dpmpp_2m_sde_gpu",
    "default_scheduler": "karras", "default_performance": "Speed", "default_prompt": "a lighthouse",
    "default_prompt_negative": "lowres", "default_styles": ["Fooocus V2", "Fooocus Enhance", "Fooocus Sharp"],
    "default_aspect_ratio": "1152*896", "default_overwrite_step": -1, "default_clip_skip": 2,
    "default_image_number": 2,
    "checkpoint_downloads": {"juggernautXL_v8Rundiffusion.safetensors": "https://example.com/j.safetensors"},
    "embeddings_downloads": {"easyneg.pt": "https://example.com/embeddings/easyneg.pt"},
    "lora_downloads": {"offset.safetensors": "https://example.com/offset.safetensors"},
    "previous_default_models": ["juggernautXL_version8Rundiffusion.safetensors"],
    "default_inpaint_engine_version": "v2.6",
}
FOOOCUS_KEYS = list(FOOOCUS_PRESET) + ["vae_downloads", "default_vae"]
FOOOCUS_IMAGE = {"prompt": "a fox", "negative_prompt": "", "steps": 30, "guidance_scale": 4.0,
                 "resolution": "(1152, 896)", "seed": "99", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras",
                 "styles": "['Fooocus V2', 'Fooocus Enhance']", "prompt_expansion": "a fox, intricate",
                 "base_model": "juggernautXL_v8Rundiffusion.safetensors", "base_model_hash": "0" * 64,
                 "loras": [["offset.safetensors", 0.1]], "version": "Fooocus v2.5.5", "sharpness": 2.0,
                 "performance": "Speed", "clip_skip": 2, "refiner_model": "None", "full_prompt": ["a fox"],
                 "metadata_scheme": "fooocus", "created_by": "Fooocus", "vae": "Default (model)"}
FOOOCUS_IMAGE_KEYS = list(FOOOCUS_IMAGE) + ["adm_guidance", "adaptive_cfg", "freeu", "lora_combined_1",
                                            "refiner_switch", "overwrite_switch", "lora_hashes"]

PROMPT_PIECES = ["(", ")", "[", "]", "{", "}", ":", "\\", ",", ".", " ", "  ", "BREAK", " BREAK ", "\nBREAK\n",
                 "AND", "0", "1", "2", "9", "1.1", "1.5", "0.5", "-1", "+2", "-", "+", ".", "e", "e5", "nan", "inf",
                 "-inf", "1e309", "1e-309", "9" * 40, "9" * 400, "0." + "0" * 30 + "1", ":1.2)", ": 1.3 )", ":-2)",
                 ":0)", "cat", "a photo of", "dog", "masterpiece", "東京", "é", "e\u0301", "🦊", "\ud800", "\udcff",
                 "\x00", "\n", "\t", "\u200b", "\ufeff", "<|endoftext|>", "<|startoftext|>", "</w>", "\\(", "\\)",
                 "\\\\", "\\[", "\\]", "\\B", "((", "))", "[[", "]]"]
PROMPTS = ["a photograph of an astronaut riding a horse", "(masterpiece:1.2), best quality, [blurry], a fox BREAK "
           "in the snow", "((a cat)) [[dog]] (x:0.5) \\(literal\\)", "a (b [c) d] e", "BREAK", "(a BREAK b)",
           "東京 café, (夜:1.3)", "a, b, c, " * 40]


# ------------------------------------------------------------------------------------------- targets

class Target:
    name = ""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def make(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def run(self, case: dict):
        raise NotImplementedError

    def reproducer(self, case: dict) -> str:
        return repr(case)

    def smaller(self, case: dict):
        """Cases a little smaller than ``case``, for shrinking a failure."""
        return _smaller(case)


class Prompts(Target):
    """Weights syntax: attention.parse and count_tokens (real CLIP tokenizer), check_length."""

    name = "prompts"

    def make(self, rng):
        r = rng.random()
        if r < 0.5:
            text = rand_text(rng, PROMPT_PIECES, 0, 40)
        elif r < 0.85:
            text = mutate_text(rng, rng.choice(PROMPTS), PROMPT_PIECES)
        elif r < 0.95:  # long: near and over the limits
            unit = rand_text(rng, PROMPT_PIECES, 1, 8) or "a"
            text = (unit * (rng.randint(100, 21000) // len(unit) + 1))[: rng.randint(100, 21000)]
        else:  # deep or wide bracket structures
            n = rng.randint(100, 6000)
            shape = rng.choice(["(" * n + "a" + ")" * n, "(a" * n, "[a" * n + "]" * n, "(a:1.1)" * (n // 7),
                                "a(" * n + ")" * n, "\\" * n, ":" * n + "1)", "(" + " " * n + ":1.2)",
                                " " * n + "BREAK", "(a:" + "9" * n + ")"])
            text = shape[:21000]
        return {"text": text}

    def run(self, case):
        from studio.prompts.attention import parse
        from studio.prompts.chunking import check_length, count_tokens

        text = case["text"]
        segments = parse(text)
        if not segments or not all(isinstance(t, str) and isinstance(w, float) for t, w in segments):
            raise broken(f"attention.parse gave {segments[:3]!r}", "studio/prompts/attention.py")
        count = count_tokens(text, self.ctx.tokenizer())
        check_length(count)
        count.label()
        return "accepted"

    def reproducer(self, case):
        return (f"from studio.prompts.chunking import count_tokens; from studio.models.tokenizer import "
                f"clip_tokenizer; count_tokens({case['text']!r}, clip_tokenizer(CACHE_DIR))")


class Infotext(Target):
    """A1111 infotext → parse_infotext → to_request_values → build_request (model tiny)."""

    name = "infotext"

    def __init__(self, ctx):
        super().__init__(ctx)
        from studio.metadata.a1111 import infotext

        plan = ctx.plan(negative_prompt="ugly,\nblurry", clip_skip=2, cfg=6.5, sampler="dpmpp_2m_sde_karras")
        self.texts = A1111_TEXTS + [infotext(plan, 0, "fp123")]

    def make(self, rng):
        r = rng.random()
        if r < 0.55:
            text = mutate_text(rng, rng.choice(self.texts), A1111_PIECES)
        elif r < 0.8:
            fields = []
            for _ in range(rng.randint(0, 12)):
                key = rng.choice(A1111_KEYS) if rng.random() < 0.8 else rng.choice(WEIRD_TEXT)
                value = rng.choice(A1111_PIECES + [str(weird_scalar(rng))])
                if rng.random() < 0.2:
                    value = json.dumps(value) if rng.random() < 0.7 else dumps(rand_json(rng), rng)
                fields.append(f"{key}: {value}")
            prompt = rand_text(rng, PROMPT_PIECES, 0, 8)
            negative = "\nNegative prompt: " + rand_text(rng, PROMPT_PIECES, 0, 5) if rng.random() < 0.5 else ""
            text = prompt + negative + "\n" + ", ".join(fields)
        elif r < 0.95:
            text = rand_text(rng, A1111_PIECES, 0, 30)
        elif r < 0.98:
            text = _enc(mutate_text(rng, rng.choice(self.texts), A1111_PIECES), "utf-8")
            if rng.random() < 0.5:
                text = apply_ops(text, [["flip", rng.randint(0, 999), rng.randint(0, 255)]])
            return {"bytes": list(text)}
        else:
            text = rng.choice(self.texts) * rng.randint(100, 400)  # near and over the 64 KiB limit
        return {"text": text}

    def run(self, case):
        from studio.errors import StudioError
        from studio.metadata.a1111 import parse_infotext, to_request_values
        from studio.settings import build_request

        text = bytes(case["bytes"]) if "bytes" in case else case["text"]
        parsed = parse_infotext(text)
        if not (set(parsed) >= {"prompt", "negative_prompt", "fields", "request", "model_hash", "unknown", "notes"}
                and all(isinstance(k, str) and isinstance(v, str) for k, v in parsed["fields"].items())
                and set(parsed["unknown"]) <= set(parsed["fields"])
                and all(isinstance(n, str) for n in parsed["notes"])):
            raise broken(f"parse_infotext gave a result of the wrong shape: {str(parsed)[:200]}",
                         "studio/metadata/a1111.py")
        values = to_request_values(parsed)
        try:
            build_request(**{**values, "model": "tiny"})
        except StudioError as exc:
            raise broken(f"to_request_values gave values build_request refuses: {exc}",
                         "studio/metadata/a1111.py") from None
        return "accepted"

    def reproducer(self, case):
        text = bytes(case["bytes"]) if "bytes" in case else case["text"]
        return (f"from studio.metadata.a1111 import parse_infotext, to_request_values; from studio.settings import "
                f"build_request; build_request(**{{**to_request_values(parse_infotext({text!r})), 'model': 'tiny'}})")


class Fooocus(Target):
    """Fooocus presets (objects and files) and Fooocus image JSON → request values → build_request."""

    name = "fooocus"

    def make(self, rng):
        r = rng.random()
        if r < 0.45:
            base = FOOOCUS_PRESET if rng.random() < 0.9 else rand_json(rng, 0, FOOOCUS_KEYS)
            return {"preset": mutate_json(rng, base, FOOOCUS_KEYS)}
        if r < 0.65:
            text = dumps(mutate_json(rng, FOOOCUS_PRESET, FOOOCUS_KEYS), rng)
            if rng.random() < 0.3:
                text = mutate_text(rng, text, JSON_PIECES)
            data = _enc(text, rng.choice(["utf-8", "utf-8", "utf-16", "latin-1"]))
            if rng.random() < 0.1:
                data = b"\xef\xbb\xbf" + data
            if rng.random() < 0.1:
                data = apply_ops(data, [["flip", rng.randint(0, 9999), rng.randint(0, 255)]])
            return {"preset_file": list(data)}
        base = FOOOCUS_IMAGE if rng.random() < 0.9 else rand_json(rng, 0, FOOOCUS_IMAGE_KEYS)
        text = dumps(mutate_json(rng, base, FOOOCUS_IMAGE_KEYS), rng)
        if rng.random() < 0.25:
            text = mutate_text(rng, text, JSON_PIECES)
        return {"image_json": text}

    def run(self, case):
        from studio.errors import StudioError
        from studio.metadata.fooocus import import_fooocus, load_fooocus_preset
        from studio.metadata.fooocus_image import parse_fooocus_json
        from studio.settings import build_request

        where = "studio/metadata/fooocus.py"
        if "image_json" in case:
            parsed = parse_fooocus_json(case["image_json"])
            values, where = parsed["request"], "studio/metadata/fooocus_image.py"
            if not (all(isinstance(k, str) for k in parsed["unknown"]) and all(isinstance(n, str)
                                                                             for n in parsed["notes"])):
                raise broken("parse_fooocus_json gave non-text unknown keys or notes", where)
        else:
            if "preset" in case:
                result = import_fooocus(case["preset"])
            else:
                path = self.ctx.work / "fooocus.json"
                path.write_bytes(bytes(case["preset_file"]))
                result = load_fooocus_preset(path)
            values = result.request_values
            if not (all(isinstance(u, str) for u in result.downloads)
                    and all(isinstance(k, str) for k in result.unknown_keys)
                    and all(isinstance(n, str) for n in result.notes)
                    and (result.model_file is None or isinstance(result.model_file, str))):
                raise broken("import_fooocus gave non-text downloads, keys, notes or model", where)
        try:
            build_request(**{**values, "model": "tiny"})
        except StudioError as exc:
            raise broken(f"the Fooocus importer gave values build_request refuses: {exc}", where) from None
        return "accepted"

    def reproducer(self, case):
        if "image_json" in case:
            return (f"from studio.metadata.fooocus_image import parse_fooocus_json; "
                    f"parse_fooocus_json({case['image_json']!r})")
        if "preset" in case:
            return f"from studio.metadata.fooocus import import_fooocus; import_fooocus({case['preset']!r})"
        return (f"open('p.json', 'wb').write({bytes(case['preset_file'])!r}); from studio.metadata.fooocus import "
                f"load_fooocus_preset; load_fooocus_preset('p.json')")


class Presets(Target):
    """Studio presets: parse, then what `studio preset diff` does (locate the model, plan, diff), then save and
    read back (a preset studio accepted and saved must open again, unchanged)."""

    name = "presets"
    KEYS = ["schema_version", "name", "description", "model", "request", "made_on", "plan", "file", "sha256",
            "prompt", "negative_prompt", "seed", "seed_mode", "batch", "steps", "cfg", "sampler", "width", "height",
            "backend", "noise_source", "deterministic", "expansion", "expander", "expansion_model",
            "expanded_prompt", "precision", "clip_skip", "comma_backtrack", "chunk_policy", "lru", "text", "unet",
            "vae", "name", "device", "ov_mode", "text_encoder", "os", "python", "torch", "device_name", "cpu",
            "cpu_flags", "inference_precision", "noise", "generator_device"]

    def __init__(self, ctx):
        super().__init__(ctx)
        from studio import presets
        from studio.repro import environment
        from studio.settings import Preset

        self.bases = [p.read_text(encoding="utf-8") for p in sorted(presets.SHIPPED.glob("*.json"))]
        for values in ({"expansion": True, "batch": 2, "seed_mode": "increment"},
                       {"backend": {"name": "openvino", "ov_mode": "performance"}, "noise_source": "device"}):
            plan = ctx.plan(**values)
            preset = Preset(name="saved", model={"file": plan.model.name, "sha256": plan.model.sha256},
                            request=plan.request, plan=plan.to_json_dict(),
                            made_on=environment.made_on(plan.backend.device, plan.backend.precision))
            self.bases.append(presets.save(preset, ctx.work / "saved.json").read_text(encoding="utf-8"))
        self.bases.append(json.dumps({"schema_version": 0, "name": "old", "model": "tiny", "prompt": "a fox",
                                      "steps": 4, "seed": 5, "width": 64, "height": 64}))

    def make(self, rng):
        base = rng.choice(self.bases)
        r = rng.random()
        if r < 0.7:
            text = dumps(mutate_json(rng, json.loads(base), self.KEYS), rng)
        elif r < 0.9:
            text = mutate_text(rng, base, JSON_PIECES)
        else:
            data = _enc(mutate_text(rng, base, WEIRD_TEXT, 2), rng.choice(["utf-8", "utf-16", "latin-1"]))
            if rng.random() < 0.3:
                data = b"\xef\xbb\xbf" + data
            if rng.random() < 0.3:
                data = apply_ops(data, [["flip", rng.randint(0, 9999), rng.randint(0, 255)]])
            return {"bytes": list(data)}
        return {"text": text}

    def run(self, case):
        from studio import presets
        from studio.repro import diff

        data = bytes(case["bytes"]) if "bytes" in case else case["text"]
        preset, notes = presets.parse(data, "preset")
        engine = self.ctx.engine()
        model, found = presets.locate_model(preset, engine.registry)
        request = preset.request.model_copy(update={"model": model})
        here = engine.plan(request)
        report = diff.compare(preset, here, self.ctx.made_on(here.backend.device, here.backend.precision))
        try:  # `studio preset diff --json` prints this
            json.dumps({**report, "notes": notes + found}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise broken(f"the preset diff report cannot be printed: {exc}", "studio/cli.py (preset diff)") from None
        path = presets.save(preset, self.ctx.work / "again.json")
        again, _ = presets.load(str(path))
        if json.dumps(again.to_json_dict(), sort_keys=True) != json.dumps(preset.to_json_dict(), sort_keys=True):
            raise broken("a preset saved and read back is not the same", "studio/presets.py")
        return "accepted"

    def reproducer(self, case):
        data = bytes(case["bytes"]) if "bytes" in case else case["text"]
        return f"from studio import presets; presets.parse({data!r}, 'preset')  # then locate_model, plan, diff, save"


class Http(Target):
    """The app's handler path with the values an HTTP client sends: request_values → build_request →
    Engine.plan → preview fingerprints → plan_markdown (what `preview` and `generate` do before running)."""

    name = "http"

    def __init__(self, ctx):
        super().__init__(ctx)
        from studio.samplers import SAMPLERS
        from studio.settings import build_request
        from studio.ui.app import control_values

        self.samplers = list(SAMPLERS) + [s + "-gpu" for s in SAMPLERS] + ["bogus", "Euler a", "euler-gpu-gpu"]
        self.files = self._input_files(ctx.work / "inputs-given")
        base = {"prompt": "a fox", "seed": 7, "steps": 4, "width": 64, "height": 64, "model": "tiny"}
        self.bases = [control_values(build_request(**{**base, **extra})) for extra in (
            {}, {"expansion": True, "batch": 2}, {"backend": {"name": "openvino"}, "sampler": "euler_a-gpu"},
            {"seed": None, "seed_mode": "random", "negative_prompt": "ugly", "chunk_policy": "pad:2"},
            {"expansion": True, "expanded_prompt": ["a fox, x", "a fox, y"], "batch": 2},
            {"model": "tiny-sdxl", "width": 128, "height": 64, "deterministic": True})]
        self.valid = {
            "prompt": ["", "a cat", "(a:1.2) BREAK b", "東京", "x" * 20001, "(a:1e309)"],
            "negative_prompt": ["", "ugly", "[blurry]"],
            "seed": [-1, 0, 7, 2**32 - 1, 2**32, 2**63, -2**40, 1.0, 1.5],
            "seed_mode": ["fixed", "increment", "random", "Fixed", ""],
            "batch": [1, 2, 4, 16, 17, 0, 2.0, 2.5], "steps": [1, 4, 150, 151, 0, 4.0, 4.2],
            "cfg": [0, 7, 7.5, 30, 30.5, -1], "sampler": self.samplers,
            "width": [64, 72, 128, 512, 2048, 2056, 63, 65, 0, 64.0, 64.5], "height": [64, 96, 128, 65, 2048],
            "model": ["tiny", "tiny-sdxl", "junk.safetensors", "empty.safetensors", "tensor.safetensors",
                      "old.ckpt", "broken_folder", "list_folder", "no_index", "missing", "../tiny", "/etc", "",
                      "a:b", "~x", "x" * 300],
            "noise_source": ["cpu", "device", "gpu"], "deterministic": [True, False, 1, "yes"],
            "text_dtype": ["fp32", "fp16", "bf16", "fp8"], "unet_dtype": ["fp32", "fp16", "bf16", "int8"],
            "vae_dtype": ["fp32", "fp16", "bf16", ""], "expansion": [True, False],
            "backend": ["torch", "openvino", "onnx"],
            "device": ["cpu", "CPU", "cuda", "cuda:0", "cuda:1", "GPU", "GPU.1", "NPU", "AUTO", "mps", "", "meta"],
            "ov_mode": ["accuracy", "performance", "latency"], "text_encoder": ["torch", "openvino", "cpu"],
            "ov_weights": ["full", "int8", "int4", ""], "compile": ["none", "torch", "inductor", 1],
            "chunk_policy": ["exact", "pad:1", "pad:2", "pad:20", "pad:21", "pad:0", "pad:", "pad:-1", "pad:02"],
            "clip_skip": [1, 2, 12, 13, 0, 1.5, 2.0],
            "styles": [[], ["Photograph"], ["Photograph", "Street Photo"], ["photograph"], ["Fooocus V2"],
                       ["Photograph", "Photograph"], ["nope"], ["../x"], ["a/b"], "Photograph", [1], [None],
                       ["Photograph"] * 17],
            # The Input image panel: its switches, settings and files (as Gradio hands them to the handler).
            "input_image": [True, False, 1, "yes"],
            "image_mode": ["vary-subtle", "vary-strong", "upscale-1.5", "upscale-2", "inpaint", "outpaint", "Vary",
                           ""],
            "strength": [0, 0.5, 1, 0.01, 1.5, -1], "mask_blur": [0, 4, 64, 65, 1.5],
            "inpaint_area": ["whole", "masked", "all"], "masked_padding": [0, 32, 256, 257],
            "uov_image": [None, *self.files.values(), {"path": self.files["picture"]}, "missing.png", "/dev/null"],
            "inpaint_image": [None, {}, "x", {"background": self.files["picture"], "layers": []},
                              {"background": self.files["picture"], "layers": [self.files["layer"]]},
                              {"background": self.files["picture"], "layers": [self.files["text"], None, 3]},
                              {"background": self.files["text"], "layers": [self.files["layer"]]}],
            "mask_image": [None, *self.files.values()],
            "outpaint_sides": [[], ["left"], ["left", "top", "right", "bottom"], ["nope"], "left", [1]],
            "outpaint_pixels": [8, 128, 1024, 0, 7, 2000, 12.5],
            # Fooocus's performance radio and the five LoRA slots (names that are not in the folder, paths,
            # weights out of the slider's range), and the state Open preset leaves with the LoRAs' hashes.
            "performance": ["Quality", "Speed", "Extreme Speed", "Lightning", "Custom", "extreme-speed", "", 3],
            "lora_record": [[], [{"name": "x", "weight": 1.0, "sha256": "0" * 64}], "x", [1], [{"name": "../x"}]],
        }
        from studio.controls import LORA_SLOTS, lora_slot_names

        for slot in range(1, LORA_SLOTS + 1):
            enabled, name, weight = lora_slot_names(slot)
            self.valid[enabled] = [True, False, 1, "yes"]
            self.valid[name] = ["None", "missing", "../x", "a:b", "", "x" * 300, 3, None]
            self.valid[weight] = [1.0, 0, -2, 2, 2.5, -10.5, 1e309, "x", None]

    @staticmethod
    def _input_files(folder: Path) -> dict:
        """Files a client may upload to the Input image panel: a picture, a painted layer, a mask, not an image."""
        import numpy as np
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        rgb = (np.indices((48, 64)).sum(0) % 256).astype(np.uint8)
        layer = np.zeros((48, 64, 4), np.uint8)
        layer[8:24, 16:40] = 255
        files = {"picture": folder / "picture.png", "layer": folder / "layer.png", "mask": folder / "mask.png",
                 "text": folder / "text.png"}
        Image.fromarray(np.dstack([rgb, 255 - rgb, rgb // 2])).save(files["picture"])
        Image.fromarray(layer, "RGBA").save(files["layer"])
        Image.fromarray(layer[:, :, 3]).resize((32, 24)).save(files["mask"])
        files["text"].write_text("not an image")
        return {name: str(path) for name, path in files.items()}

    def hostile(self, rng):
        r = rng.random()
        if r < 0.7:
            return weird_scalar(rng)
        if r < 0.8:
            return rng.choice([[], [1], ["a"], {}, {"a": 1}, [None], {"name": "torch"}])
        if r < 0.9:
            return str(weird_scalar(rng))
        return rand_json(rng)

    def make(self, rng):
        values = copy.deepcopy(rng.choice(self.bases))
        controls = [k for k in values if k not in ("replay", "live_preview")]  # page state, not controls
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(controls)
            values[key] = rng.choice(self.valid[key]) if rng.random() < 0.6 else self.hostile(rng)
        if values.get("replay") is None and rng.random() < 0.1:
            # The session state Open preset leaves (control_values of a valid request): a client never sends it,
            # but the controls it sends next are checked against it.
            values["replay"] = {"prompt": rng.choice(["a fox", ""]), "seed": rng.choice([7, 0, None]),
                                "texts": ["a fox, x", "a fox, y", "z"][: rng.randint(1, 3)]}
        return {"values": values}

    def run(self, case):
        from studio.settings import build_request
        from studio.ui.app import INPUT_ORDER, plan_markdown, request_values
        from studio.ui.tabs.input_image import request_image

        studio = self.ctx.studio()
        engine = studio.engine
        values = {k: case["values"].get(k) for k in INPUT_ORDER}
        image, notes = request_image(studio, values)  # as Page.settings does
        request = build_request(**request_values(values, image))
        plan = engine.plan(request)
        fingerprints = None if request.seed is None else engine.preview_fingerprints(plan)
        plan_markdown(plan, fingerprints, notes)
        json.dumps(plan.to_json_dict())
        return "accepted"

    def reproducer(self, case):
        return ("from studio.ui.app import INPUT_ORDER, request_values; from studio.settings import build_request; "
                "from studio.ui.tabs.input_image import request_image; "
                f"values = {{k: {case['values']!r}.get(k) for k in INPUT_ORDER}}; "
                "engine.plan(build_request(**request_values(values, request_image(studio, values)[0])))")


class Metadata(Target):
    """Image files (mutated studio records, A1111 text, Fooocus JSON, damaged bytes) through read_metadata,
    `studio info --json` and `studio preset import --from image` (the preset it writes must open again)."""

    name = "metadata"
    RECORD_KEYS = ["plan", "image", "run", "request", "model", "name", "sha256", "prompt", "seed", "steps", "cfg",
                   "width", "height", "sampler", "expansion", "expanded_prompt", "batch", "backend", "notes",
                   "index", "noise_fingerprint", "precision", "schema_version"]

    def __init__(self, ctx):
        super().__init__(ctx)
        from studio.metadata.a1111 import infotext
        from studio.metadata.png import studio_record

        self.records, self.texts = [], list(A1111_TEXTS)
        for values in ({}, {"expansion": True, "batch": 2, "prompt": "東京 café"},
                       {"backend": {"name": "openvino"}, "negative_prompt": "ugly", "clip_skip": 2}):
            plan = ctx.plan(**values)
            self.records.append(studio_record(plan, 0, "fp0123456789", ["a note"]))
            self.texts.append(infotext(plan, 0, "fp0123456789"))

    def make(self, rng):
        fmt = rng.choice(["png", "png", "jpeg", "webp"])
        kind = rng.random()
        studio = parameters = None
        extra = []
        if kind < 0.3:
            studio = dumps(mutate_json(rng, rng.choice(self.records), self.RECORD_KEYS), rng)
            if rng.random() < 0.15:
                studio = mutate_text(rng, studio, JSON_PIECES)
            if rng.random() < 0.6:
                parameters = rng.choice(self.texts)
        elif kind < 0.55:
            parameters = mutate_text(rng, rng.choice(self.texts), A1111_PIECES)
        elif kind < 0.75:
            parameters = dumps(mutate_json(rng, FOOOCUS_IMAGE, FOOOCUS_IMAGE_KEYS), rng)
            if rng.random() < 0.2:
                parameters = mutate_text(rng, parameters, JSON_PIECES)
            extra.append(["tEXt", "fooocus_scheme", "fooocus"])
        else:  # a valid file, damaged below
            studio = dumps(rng.choice(self.records), rng) if rng.random() < 0.5 else None
            parameters = rng.choice(self.texts) if studio is None or rng.random() < 0.5 else None
            if rng.random() < 0.2:
                parameters = dumps(FOOOCUS_IMAGE)
        case = {"format": fmt, "ext": rng.choice([".png", ".jpg", ".webp", ".PNG", ""]) if rng.random() < 0.1
                else {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}[fmt]}
        if fmt == "png":
            texts = list(extra)
            if parameters is not None:
                texts.append([rng.choice(["tEXt", "zTXt", "iTXt", "iTXt-z"]), "parameters", parameters])
            if studio is not None:
                texts.append([rng.choice(["iTXt-z", "iTXt-z", "iTXt", "tEXt"]), "studio", studio])
            if rng.random() < 0.1:
                texts.append([rng.choice(["tEXt", "iTXt"]), rng.choice(WEIRD_TEXT), rng.choice(WEIRD_TEXT)])
            rng.shuffle(texts)
            case.update(texts=texts, after_idat=rng.random() < 0.2)
        else:
            case.update(description=studio, comment=parameters,
                        encoding=rng.choice(["unicode-be", "unicode-be", "unicode-le", "ascii", "jis", "none"]),
                        in_ifd0=rng.random() < 0.2, order=rng.choice([">", "<"]))
            if studio is None and rng.random() < 0.1:
                case["description"] = rng.choice(["OLYMPUS DIGITAL CAMERA", "{", '{"plan"', "{}", "[]", "  "])
        if kind >= 0.75 or rng.random() < 0.1:
            case["ops"] = self.damage(rng, fmt)
        return case

    def damage(self, rng, fmt):
        ops = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if fmt == "png" and r < 0.45:
                op = rng.choice(["png_drop", "png_dup", "png_move", "png_data", "png_data", "png_type"])
                if op == "png_data":
                    ops.append([op, rng.randint(0, 99), [[rng.randint(0, 9999), rng.randint(0, 255)]
                                                         for _ in range(rng.randint(0, 4))],
                                rng.choice([0, 0, rng.randint(1, 9999)]), rng.random() < 0.8])
                elif op == "png_type":
                    ops.append([op, rng.randint(0, 99), list(rng.choice([b"tEXt", b"zTXt", b"iTXt", b"eXIf",
                                                                          b"IEND", b"IDAT", b"iCCP", b"zzzz"]))])
                else:
                    ops.append([op, rng.randint(0, 99), rng.randint(0, 99)])
            elif r < 0.6:
                ops.append(["word", rng.randint(0, 999), rng.choice([2, 4]),
                            rng.choice([0, 1, 2, 7, 13, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, rng.randint(0, 2**32 - 1)]),
                            rng.random() < 0.5])
            elif r < 0.75:
                ops.append(["flip", rng.randint(0, 99999), rng.randint(0, 255)])
            elif r < 0.85:
                ops.append(["cut", rng.randint(0, 99999)])
            elif r < 0.9:
                ops.append(["insert", rng.randint(0, 99999), [rng.randint(0, 255) for _ in range(rng.randint(1, 9))]])
            elif r < 0.95:
                ops.append(["delete", rng.randint(0, 99999), rng.randint(1, 64)])
            else:
                ops.append(["dup", rng.randint(0, 99999), rng.randint(1, 256)])
        if fmt == "webp" and rng.random() < 0.7:
            ops.append(["riff_size"])
        return ops

    def build(self, case) -> bytes:
        if case["format"] == "png":
            data = png_file(case["texts"], case.get("after_idat", False))
        else:
            data = exif_image(case["format"], case.get("description"), case.get("comment"), case["encoding"],
                              case["in_ifd0"], case["order"])
        return apply_ops(data, case.get("ops", []))

    def run(self, case):
        from studio import presets
        from studio.metadata.read import read_metadata
        from studio.errors import StudioError

        path = self.ctx.work / ("image" + case["ext"])
        path.write_bytes(self.build(case))
        outcome = "accepted"
        try:
            meta = read_metadata(path)
            if not (meta["format"] in ("png", "jpeg", "webp") and isinstance(meta["parameters"], (str, type(None)))
                    and isinstance(meta["studio"], (dict, type(None)))):
                raise broken(f"read_metadata gave {str(meta)[:200]}", "studio/metadata/read.py")
        except StudioError as exc:
            if not clear_line(str(exc)):
                raise
            meta, outcome = None, "refused"
        status, problem, _ = check_cli(["info", str(path), "--json"])
        if problem:
            return status, problem
        if meta is None and status != "refused":
            raise broken("read_metadata refused a file that `studio info` accepted", "studio/cli.py")
        outcome = "refused" if status == "refused" else outcome
        out = self.ctx.work / "imported.json"
        status, problem, _ = check_cli(["preset", "import", str(path), "--from", "image", "--out", str(out),
                                        "--json"])
        if problem:
            return status, problem
        if status == "accepted":
            try:
                presets.load(str(out))
            except StudioError as exc:
                raise broken(f"`studio preset import --from image` wrote a preset studio cannot open: {exc}",
                             "studio/cli.py") from None
            out.unlink()
        else:
            outcome = "refused"
        return outcome

    def reproducer(self, case):
        return f"the file (--case with --keep DIR writes it) built from {case!r}"

    def smaller(self, case):
        """Only the texts and the damage shrink: the format, chunk kinds and flags stay as they were."""
        for key in ("ops", "texts"):
            for i in range(len(case.get(key) or [])):
                yield {**case, key: case[key][:i] + case[key][i + 1:]}
        for i, (kind, name, value) in enumerate(case.get("texts") or []):
            for text in _smaller(value):
                yield {**case, "texts": case["texts"][:i] + [[kind, name, text]] + case["texts"][i + 1:]}
        for key in ("description", "comment"):
            if case.get(key) is not None:
                yield {**case, key: None}
                for text in _smaller(case[key]):
                    yield {**case, key: text}


class Cli(Target):
    """studio.cli.main(argv): plan, tokens, info, verify (two images), models, preset diff/import/save, and
    generate argvs that refuse before running (one that would run gets `--steps 0` appended)."""

    name = "cli"
    FLAGS = ["--preset", "--prompt", "--prompt-file", "--negative", "--seed", "--seed-mode", "--batch", "--steps",
             "--cfg", "--sampler", "--width", "--height", "--model", "--backend", "--device", "--ov-mode",
             "--text-encoder", "--chunk-policy", "--lru", "--noise-source", "--deterministic", "--expansion",
             "--expander", "--expansion-model", "--expansion-new-chunk", "--expanded-prompt", "--dtype", "--out",
             "--format", "--models-dir", "--allow-unsafe-pickle", "--json", "--from", "--heatmap", "--tolerance",
             "--unknown", "-x", "--", "-", "--seed=", "--steps=4", "--json=1", "--prom", "--mod"]
    VALUES = ["tiny", "tiny-sdxl", "junk.safetensors", "old.ckpt", "broken_folder", "list_folder", "no_index",
              "missing.safetensors", "x.txt", "a cat", "(a:1.2) BREAK b", "(a:1e309)", "", " ", "-1", "0", "1", "2",
              "4", "64", "72", "65", "2048", "4096", "nan", "inf", "-inf", "1e309", "1.5", "99999999999999999999",
              "fixed", "increment", "random", "euler", "euler_a-gpu", "dpmpp_2m_karras", "bogus", "torch",
              "openvino", "cpu", "cuda", "GPU", "NPU", "performance", "accuracy", "exact", "pad:2", "pad:21",
              "on", "off", "wordbank", "causal-lm", "unet=bf16", "vae=fp16", "text=fp8", "=", "png", "jpeg", "webp",
              "gif", "fooocus", "a1111", "image", "default", "speed", "reproducible", "東京", "\udcff", "\x00",
              "a/b", "..", "x" * 300]
    COMMANDS = ["plan", "tokens", "info", "verify", "models", "preset diff", "preset import", "preset save",
                "generate"]

    def __init__(self, ctx):
        super().__init__(ctx)
        from studio import presets
        from studio.metadata.png import encode_png
        from studio.settings import Preset
        from PIL import Image

        fill_models_dir(ctx.models_dir)
        w = ctx.work
        plan = ctx.plan()
        image = Image.new("RGB", (64, 64), (10, 20, 30))
        files = {
            "studio.png": encode_png(image, plan, 0, "fp0", []),
            "studio2.png": encode_png(Image.new("RGB", (64, 64), (10, 20, 31)), plan, 0, "fp0", []),
            "small.png": png_file([["tEXt", "parameters", A1111_TEXTS[0]]]),
            "a1111.jpg": exif_image("jpeg", None, A1111_TEXTS[1], "unicode-be", False, ">"),
            "fooocus.webp": exif_image("webp", None, json.dumps(FOOOCUS_IMAGE), "unicode-be", False, ">"),
            "junk.png": b"\x89PNG\r\n\x1a\n" + bytes(40),
            "empty.png": b"",
            "bomb.png": b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                        + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""),
            "a1111.txt": A1111_TEXTS[1].encode(),
            "bad.txt": b"\xff\xfe\x00bad",
            "fooocus.json": json.dumps(FOOOCUS_PRESET).encode(),
            "broken.json": b'{"schema_version": 1, "model": ',
            "prompts.txt": "a cat\n(a dog:1.2)\n\nBREAK\n".encode(),
            "bad_prompts.txt": "a\n(b:1e309)\n".encode(),
        }
        for name, data in files.items():
            (w / name).write_bytes(data)
        preset = Preset(name="saved", model={"file": plan.model.name, "sha256": plan.model.sha256},
                        request=plan.request, plan=plan.to_json_dict())
        presets.save(preset, w / "saved.json")
        presets.save(Preset(name="other", model={"file": "other.safetensors", "sha256": "0" * 64},
                            request=plan.request), w / "other.json")
        (w / "folder").mkdir(exist_ok=True)
        with contextlib.suppress(OSError, AttributeError):
            os.mkfifo(w / "fifo")
        self.files = [str(w / n) for n in files] + [str(w / "saved.json"), str(w / "other.json"), str(w / "folder"),
                                                    str(w / "fifo"), str(w / "missing.png"), "/dev/null",
                                                    "relative.json", "out.json", "heat.png"]
        self.images = [str(w / n) for n in ("studio.png", "studio2.png", "small.png", "a1111.jpg", "fooocus.webp",
                                            "junk.png", "empty.png", "bomb.png", "a1111.txt", "folder", "fifo",
                                            "missing.png")]

    def base(self, rng, command: str) -> list[str]:
        w = self.ctx.work
        gen = ["--prompt", rng.choice(["a cat", "(a dog:1.2) BREAK snow", "東京", ""]), "--model",
               rng.choice(["tiny", "tiny", "tiny-sdxl"]), "--steps", "2", "--width", "64", "--height", "64",
               "--seed", str(rng.randint(0, 99))]
        if rng.random() < 0.3:
            gen = ["--preset", rng.choice(["default", "speed", "reproducible", str(w / "saved.json")])] + gen[2:]
        if command == "plan":
            return ["plan", *gen] + (["--json"] if rng.random() < 0.7 else [])
        if command == "generate":
            return ["generate", *gen, "--out", str(w / "out")] + (["--json"] if rng.random() < 0.5 else [])
        if command == "tokens":
            return ["tokens", rng.choice(PROMPTS)] + (["--json"] if rng.random() < 0.5 else [])
        if command == "info":
            return ["info", rng.choice(self.images)] + (["--json"] if rng.random() < 0.7 else [])
        if command == "verify":
            return ["verify", rng.choice(self.images), rng.choice(self.images)] + (
                ["--json"] if rng.random() < 0.5 else [])
        if command == "models":
            return ["models", "--models-dir", str(self.ctx.models_dir), "--json"]
        if command == "preset diff":
            return ["preset", "diff", rng.choice(["default", "speed", "reproducible", str(w / "saved.json"),
                                                  str(w / "other.json")]), "--models-dir", str(self.ctx.models_dir),
                    "--json"]
        if command == "preset import":
            kind = rng.choice(["fooocus", "a1111", "image"])
            source = {"fooocus": "fooocus.json", "a1111": "a1111.txt", "image": "studio.png"}[kind]
            return ["preset", "import", str(w / (source if rng.random() < 0.7 else rng.choice(self.files))),
                    "--from", kind, "--out", str(w / "imported.json"), "--json"]
        return ["preset", "save", str(w / "saved_again.json"), *gen, "--json"]

    def make(self, rng):
        argv = self.base(rng, rng.choice(self.COMMANDS))
        for _ in range(rng.randint(0, 4)):
            r = rng.random()
            at = rng.randint(1, len(argv))
            if r < 0.3:
                argv[at:at] = [rng.choice(self.FLAGS), rng.choice(self.VALUES + self.files)]
            elif r < 0.45:
                argv.insert(at, rng.choice(self.FLAGS + self.VALUES))
            elif r < 0.6 and len(argv) > 1:
                del argv[rng.randint(1, len(argv) - 1)]
            elif r < 0.75 and len(argv) > 1:
                i = rng.randint(1, len(argv) - 1)
                argv[i] = rng.choice(self.VALUES + self.files)
            elif r < 0.85 and len(argv) > 1:
                i = rng.randint(1, len(argv) - 1)
                if not argv[i].startswith("/"):  # a path is never mutated into another path
                    argv[i] = mutate_text(rng, argv[i], [p for p in PROMPT_PIECES + WEIRD_TEXT if "/" not in p], 2)
            elif len(argv) > 2:
                i = rng.randint(1, len(argv) - 2)
                argv[i], argv[i + 1] = argv[i + 1], argv[i]
        if argv[0] == "verify":  # --twice and --against generate images: never asked for (nor abbreviated)
            argv = [a for a in argv if not (len(a.split("=")[0]) > 2 and ("--twice".startswith(a.split("=")[0])
                                                                         or "--against".startswith(a.split("=")[0])))]
        return {"argv": argv}

    def _would_generate(self, argv: list[str]) -> bool:
        """Does this generate argv get past planning (so that main would make images)?"""
        from studio.cli import _config, build_parser, requests_from_args
        from studio.engine.engine import Engine

        try:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                args = build_parser().parse_args(argv)
                if args.command != "generate":
                    return False
                engine = Engine(_config(args))
                carried = None
                for request in requests_from_args(args, engine.registry):
                    if carried is not None:
                        request = request.model_copy(update={"seed": carried})
                    plan = engine.plan(request)
                    carried = engine.next_request(request, plan).seed
        except BaseException:  # noqa: BLE001 - a refusal (or a crash main will show): it does not generate
            return False
        return True

    def run(self, case):
        argv = list(case["argv"])
        if any(a in ("-h", "--help") for a in argv):
            return "accepted"
        if argv and argv[0] == "generate":
            if self._would_generate(argv):
                argv += ["--steps", "0"]
                if self._would_generate(argv):
                    return "accepted"  # never run a generation
        status, problem, _ = check_cli(argv)
        for leftover in ("imported.json", "saved_again.json", "relative.json", "out.json", "heat.png"):
            with contextlib.suppress(OSError):
                (self.ctx.work / leftover).unlink()
        return (status, problem) if problem else status

    def smaller(self, case):
        """Arguments dropped, and texts shortened, but never a path (it could come to point elsewhere)."""
        argv = case["argv"]
        for i in range(1, len(argv)):
            yield {"argv": argv[:i] + argv[i + 1:]}
        for i, arg in enumerate(argv):
            if i and "/" not in arg:
                for text in _smaller(arg):
                    if "/" not in text:
                        yield {"argv": argv[:i] + [text] + argv[i + 1:]}

    def reproducer(self, case):
        return "studio " + " ".join(repr(a) if not a or any(c in a for c in " ()'\"\\;&|<>*?$\n") or not a.isprintable()
                                    else a for a in case["argv"])


TARGETS = {t.name: t for t in (Metadata, Infotext, Fooocus, Presets, Prompts, Cli, Http)}
ORDER = ["cli", "metadata", "http", "presets", "prompts", "fooocus", "infotext"]  # slowest first


# ------------------------------------------------------------------------------------------- shrinking

def _smaller(value):
    """Candidates a little smaller than ``value`` (strings, bytes, lists, dicts, numbers), biggest cuts first."""
    if isinstance(value, (str, bytes)) or (isinstance(value, list) and value and
                                           all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        n = len(value)
        size = n // 2
        while size >= 1:
            for start in range(0, n, size):
                yield value[:start] + value[start + size:]
            size //= 2
        if isinstance(value, str):
            for i, ch in enumerate(value):
                if ch not in "a ":
                    yield value[:i] + "a" + value[i + 1:]
                    if i > 40:
                        break
        return
    if isinstance(value, list):
        for i in range(len(value)):
            yield value[:i] + value[i + 1:]
        for i, item in enumerate(value):
            for smaller in _smaller(item):
                yield value[:i] + [smaller] + value[i + 1:]
        return
    if isinstance(value, dict):
        for k in list(value):
            yield {kk: vv for kk, vv in value.items() if kk != k}
        for k, item in value.items():
            for smaller in _smaller(item):
                yield {**value, k: smaller}
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int) and value not in (0, 1):
        yield 0
        yield 1
    if isinstance(value, float) and value not in (0.0, 1.0) and math.isfinite(value):
        yield 0.0


def _size(value) -> int:
    return len(json.dumps(value, default=str, ensure_ascii=False))


def shrink(target: Target, case: dict, key: str) -> dict:
    """The smallest case found (greedy, bounded) that fails the same way (same type, same line)."""
    import signal

    def alarm(*_):
        raise TimeoutError("shrink attempt over the watchdog")

    old = signal.signal(signal.SIGALRM, alarm) if hasattr(signal, "SIGALRM") else None
    deadline, attempts = time.monotonic() + SHRINK_SECONDS, 0
    best = case
    try:
        improved = True
        while improved and attempts < SHRINK_ATTEMPTS and time.monotonic() < deadline:
            improved = False
            for candidate in target.smaller(best):
                if attempts >= SHRINK_ATTEMPTS or time.monotonic() > deadline:
                    break
                if not isinstance(candidate, dict) or _size(candidate) >= _size(best):
                    continue
                attempts += 1
                if old is not None:
                    signal.alarm(int(WATCHDOG_S))
                try:
                    outcome, problem = execute(target, candidate)
                except TimeoutError:
                    outcome, problem = "hang", None
                finally:
                    if old is not None:
                        signal.alarm(0)
                if outcome in ("traceback", "unclear") and problem["key"] == key:
                    best, improved = candidate, True
                    break
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)
    return best


# ------------------------------------------------------------------------------------------- workers

def case_rng(seed: int, target: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{target}:{index}")


def _setup_worker(cache_dir: str, work: Path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["STUDIO_CACHE_DIR"] = cache_dir
    os.environ["STUDIO_MODELS_DIR"] = str(work / "models")
    os.environ["STUDIO_OUTPUT_DIR"] = str(work / "out")
    os.chdir(work)  # a relative path in a fuzzed argv lands here
    from studio.runtime import prepare_process, quiet_libraries

    prepare_process()
    quiet_libraries()
    import logging

    logging.disable(logging.WARNING)
    (work / "models").mkdir(exist_ok=True)


def worker(conn, target_name: str, seed: int, start: int, stop: int, cache_dir: str, shrink_failures: bool,
           work: str):
    """Run cases start..stop-1 of one target in the folder ``work``, reporting each to the parent over ``conn``."""
    work = Path(work)
    try:
        _setup_worker(cache_dir, work)
        target = TARGETS[target_name](Context(work, Path(cache_dir)))
        conn.send(("ready", time.process_time()))
        shrunk: set[str] = set()
        for index in range(start, stop):
            conn.send(("start", index))
            case = target.make(case_rng(seed, target_name, index))
            t0 = time.perf_counter()
            outcome, problem = execute(target, case)
            seconds = time.perf_counter() - t0
            if problem is not None:
                problem["case"] = index
            conn.send(("done", index, outcome, problem, seconds, time.process_time()))
            if problem is not None and shrink_failures and problem["key"] not in shrunk and len(shrunk) < MAX_SHRUNK:
                shrunk.add(problem["key"])
                conn.send(("shrink", index))
                text = target.reproducer(shrink(target, case, problem["key"]))[:3000]
                conn.send(("repro", problem["key"], text, time.process_time()))
        conn.send(("end", time.process_time()))
    except Exception as exc:  # noqa: BLE001 - the set-up failed: say so, the parent reports it
        conn.send(("setup_failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        conn.close()


class Tally:
    def __init__(self, name):
        self.name = name
        self.counts = {"accepted": 0, "refused": 0, "unclear": 0, "traceback": 0, "hang": 0}
        self.cpu = 0.0
        self.case_seconds = 0.0
        self.slowest = (0.0, None)
        self.failures: dict[str, dict] = {}  # key → first failure (+ how many)
        self.setup_errors: list[str] = []

    def add(self, outcome, problem, seconds, index):
        self.counts[outcome] += 1
        self.case_seconds += seconds
        if seconds > self.slowest[0]:
            self.slowest = (seconds, index)
        if problem is not None:
            entry = self.failures.setdefault(problem["key"], {**problem, "count": 0})
            entry["count"] += 1
            entry["case"] = min(entry["case"], problem["case"])  # workers report out of order
            if "reproducer" in problem and "reproducer" not in entry:
                entry["reproducer"] = problem["reproducer"]


def run_all(args) -> dict[str, Tally]:
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    tallies = {name: Tally(name) for name in args.target}
    jobs = []
    for name in args.target:
        bounds = [round(args.cases * k / args.shards) for k in range(args.shards + 1)]
        jobs += [(name, a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    running: dict = {}  # conn → state

    def launch(name, a, b):
        parent, child = ctx.Pipe(duplex=False)
        work = tempfile.mkdtemp(prefix=f"fuzz-{name}-")
        proc = ctx.Process(target=worker, args=(child, name, args.seed, a, b, str(args.cache_dir), not args.no_shrink,
                                                work), daemon=True)
        proc.start()
        child.close()
        running[parent] = {"proc": proc, "name": name, "next": a, "stop": b, "current": None, "since": time.monotonic(),
                           "ready": False, "cpu": 0.0, "phase": "case", "work": work}

    def finish(conn, state, requeue_from=None, done=False):
        tallies[state["name"]].cpu += state["cpu"]
        with contextlib.suppress(Exception):
            conn.close()
        if done:
            state["proc"].join(60)  # a worker that ended removes its folder first
        if state["proc"].is_alive():
            state["proc"].kill()
            state["proc"].join(5)
            shutil.rmtree(state["work"], ignore_errors=True)
        del running[conn]
        if requeue_from is not None and requeue_from < state["stop"]:
            jobs.insert(0, (state["name"], requeue_from, state["stop"]))

    while jobs or running:
        while jobs and len(running) < args.jobs:
            launch(*jobs.pop(0))
        for conn in wait(list(running), timeout=0.5):
            state = running[conn]
            try:
                while conn.poll():
                    msg = conn.recv()
                    kind = msg[0]
                    if kind == "ready":
                        state.update(ready=True, cpu=msg[1])
                    elif kind == "start":
                        state.update(current=msg[1], since=time.monotonic(), phase="case")
                    elif kind == "shrink":
                        state.update(current=msg[1], since=time.monotonic(), phase="shrink")
                    elif kind == "repro":
                        entry = tallies[state["name"]].failures.get(msg[1])
                        if entry is not None and "reproducer" not in entry:
                            entry["reproducer"] = msg[2]
                        state.update(current=None, cpu=msg[3])
                    elif kind == "done":
                        _, index, outcome, problem, seconds, cpu = msg
                        if seconds > args.watchdog:  # finished, but over the limit: a hang all the same
                            outcome, problem = "hang", {"type": "Hang", "key": "Hang", "case": index, "where": "?",
                                                        "message": f"{seconds:.1f} s, over {args.watchdog:g} s"}
                        tallies[state["name"]].add(outcome, problem, seconds, index)
                        state.update(current=None, next=index + 1, cpu=cpu)
                    elif kind == "end":
                        state["cpu"] = msg[1]
                        finish(conn, state, done=True)
                        break
                    elif kind == "setup_failed":
                        tallies[state["name"]].setup_errors.append(msg[2])
                        finish(conn, state)
                        break
            except (EOFError, OSError):  # the worker died (a crash in native code, or killed)
                index = state["current"]
                if index is not None:
                    tallies[state["name"]].add("traceback", {"type": "WorkerDied", "key": "WorkerDied",
                                                             "message": f"exit code {state['proc'].exitcode}",
                                                             "where": "?", "case": index}, 0.0, index)
                finish(conn, state, None if index is None else index + 1)
        now = time.monotonic()
        for conn, state in list(running.items()):
            limit = SHRINK_SECONDS + 3 * args.watchdog if state["phase"] == "shrink" else args.watchdog
            if state["current"] is not None and state["phase"] == "shrink" and now - state["since"] > limit:
                finish(conn, state, state["current"] + 1)  # shrinking stuck: the case itself is counted already
            elif state["current"] is not None and now - state["since"] > limit:
                index = state["current"]
                tallies[state["name"]].add("hang", {"type": "Hang", "key": "Hang", "message": f"over {limit:g} s",
                                                    "where": "?", "case": index}, now - state["since"], index)
                tallies[state["name"]].cpu += limit  # at most; the worker's own count is lost with it
                finish(conn, state, index + 1)
            elif not state["ready"] and now - state["since"] > SETUP_LIMIT_S:
                tallies[state["name"]].setup_errors.append(f"set-up over {SETUP_LIMIT_S:g} s")
                finish(conn, state)
    return tallies


def report(tallies: dict[str, Tally], args, wall: float) -> int:
    print(f"fuzz: seed {args.seed}, {args.cases} cases per target, {args.jobs} worker(s), "
          f"watchdog {args.watchdog:g} s, {wall:.0f} s wall")
    print()
    print("| target | cases | accepted | refused | unclear refusals | tracebacks | hangs | cpu s | slowest case s |")
    print("|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for name, t in tallies.items():
        c = t.counts
        cases = sum(c.values())
        bad += c["traceback"] + c["unclear"] + c["hang"] + len(t.setup_errors) + (cases < args.cases)
        print(f"| {name} | {cases} | {c['accepted']} | {c['refused']} | {c['unclear']} | {c['traceback']} "
              f"| {c['hang']} | {t.cpu:.1f} | {t.slowest[0]:.2f} (case {t.slowest[1]}) |")
    for name, t in tallies.items():
        for text in t.setup_errors:
            print(f"\n[{name}] set-up failed:\n{text}")
        if t.failures:
            print(f"\n[{name}] {len(t.failures)} distinct failure(s):")
        for i, (key, f) in enumerate(sorted(t.failures.items(), key=lambda kv: -kv[1]["count"])):
            if i >= args.show:
                print(f"  ... and {len(t.failures) - args.show} more")
                break
            print(f"- {f['type']}: {f['message']}\n  at {f['where']}; {f['count']} case(s), first case {f['case']}\n"
                  f"  replay: HF_HUB_OFFLINE=1 .venv/bin/python bench/fuzz.py --target {name} --seed {args.seed} "
                  f"--case {f['case']}")
            if f.get("reproducer"):
                print(f"  minimal: {f['reproducer']}")
    return 1 if bad else 0


def replay(args) -> int:
    """Run one case in this process and show everything about it."""
    cache = Path(args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))
    prepare_cache(cache)
    _setup_worker(str(cache), work)
    name = args.target[0]
    target = TARGETS[name](Context(work, cache))
    case = target.make(case_rng(args.seed, name, args.case))
    print(f"case {args.case} of {name} (seed {args.seed}):\n{target.reproducer(case)[:5000]}\n")
    if args.keep and isinstance(target, Metadata):
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        kept = Path(args.keep) / f"case{args.case}{case['ext']}"
        kept.write_bytes(target.build(case))
        print(f"file written to {kept}")
    if isinstance(target, Cli) and not any(a == "generate" for a in case["argv"][:1]):
        signal_alarm = __import__("signal")
        signal_alarm.signal(signal_alarm.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("a hang")))
        signal_alarm.alarm(max(1, int(args.watchdog)))
        try:
            rc, out, err, raised = run_cli(list(case["argv"]))
        finally:
            signal_alarm.alarm(0)
        print(f"exit {rc!r}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")
        if raised is not None:
            traceback.print_exception(raised)
    import signal

    def alarm(*_):
        raise TimeoutError(f"over the {args.watchdog:g} s watchdog: a hang")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, int(args.watchdog)))
    t0 = time.perf_counter()
    try:
        outcome = target.run(case)
        print(f"outcome: {outcome if isinstance(outcome, str) else outcome[1]}")
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"outcome: {'refused' if type(exc).__name__ == 'StudioError' else 'traceback'}")
    finally:
        signal.alarm(0)
    print(f"{time.perf_counter() - t0:.3f} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=DEFAULT_CASES, help="cases per target")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--target", nargs="+", choices=list(TARGETS), default=ORDER)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes at a time")
    ap.add_argument("--shards", type=int, default=2, help="pieces each target is split into")
    ap.add_argument("--watchdog", type=float, default=WATCHDOG_S, help="seconds a case may take")
    ap.add_argument("--cache-dir", type=Path, help="studio cache to build the tiny models in (default: a temp folder)")
    ap.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    ap.add_argument("--show", type=int, default=8, help="distinct failures shown per target")
    ap.add_argument("--case", type=int, help="replay this one case of --target in this process")
    ap.add_argument("--keep", help="with --case and the metadata target: write the image file to this folder")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    temp_cache = args.cache_dir is None
    if temp_cache:
        args.cache_dir = Path(tempfile.mkdtemp(prefix="fuzz-cache-"))
    args.cache_dir = args.cache_dir.resolve()
    try:
        if args.case is not None:
            if len(args.target) != 1:
                ap.error("--case needs one --target")
            return replay(args)
        import multiprocessing as mp

        t0 = time.monotonic()
        prep = mp.get_context("spawn").Process(target=prepare_cache, args=(args.cache_dir,))
        prep.start()
        prep.join()
        if prep.exitcode != 0:
            print("fuzz: building the tiny models failed", file=sys.stderr)
            return 1
        tallies = run_all(args)
        return report(tallies, args, time.monotonic() - t0)
    finally:
        if temp_cache:
            shutil.rmtree(args.cache_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
