"""Styles: prompt templates picked by name, as Fooocus and SD.Next offer them.

A style is a name, a prompt template in which ``{prompt}`` marks where the user's prompt goes,
and a negative part. Studio ships its own set (studio/data/styles.json, written for studio) and
reads a folder of Fooocus-format files (``--styles-dir``: ``*.json``, each a JSON list of
``{"name", "prompt", "negative_prompt"}``), so a Fooocus user's own styles work here.

How several styles combine (Fooocus's rule, with studio's one-text encoding):
- positive: each selected style, in the order selected, gives its template with every
  ``{prompt}`` replaced by the user's prompt (so two templates with ``{prompt}`` repeat it, as in
  Fooocus); when no selected template has ``{prompt}``, the user's prompt comes first. The parts
  are joined with ", ".
- negative: each style's negative part in order, then the user's negative, joined with ", ".
Empty parts are left out. Fooocus encodes each part as its own CLIP pass (in studio's terms, a
BREAK between parts); studio encodes the joined text, so the token counter, the chunks and the
compile prediction all see one text, the one the image records.

"Fooocus V2" is Fooocus's prompt expansion, not a template: a request or an import that names it
turns studio's expansion on (settings.GenerationRequest).

A user's folder is untrusted input: every file is read bounded (studio/untrusted.py), a broken
file or entry becomes one line in ``StyleLibrary.problems`` and never stops the app, and a style's
name is only ever a key, never part of a path.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from studio.errors import StudioError
from studio.untrusted import (MAX_REQUEST_STYLES, MAX_STYLE_FILES, MAX_STYLE_TEXT_CHARS, MAX_STYLES, MAX_STYLES_FILE_BYTES,
                              is_plain_name, parse_json, read_bounded)

SHIPPED_FILE = Path(__file__).resolve().parent / "data" / "styles.json"
EXPANSION_STYLE = "Fooocus V2"
PLACEHOLDER = "{prompt}"
STUDIO_SOURCE = "studio"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str  # the template: PLACEHOLDER marks where the user's prompt goes
    negative_prompt: str
    source: str = STUDIO_SOURCE  # "studio", or the file it came from ("styles/mine.json")

    @property
    def has_placeholder(self) -> bool:
        return PLACEHOLDER in self.prompt

    def record(self) -> dict:
        return asdict(self)


def fooocus_name(name: str) -> str:
    """The name as Fooocus shows it: hyphens as spaces, each word capitalised (3D, SAI, MRE kept upper).

    Fooocus renames every style it loads this way, and its presets and images hold these forms, so a
    folder style is known here under the same name a Fooocus preset uses for it.
    """
    words = [w[:1].upper() + w[1:].lower() for w in name.replace("-", " ").split(" ")]
    text = " ".join(words)
    for old, new in (("3d", "3D"), ("Sai", "SAI"), ("Mre", "MRE"), ("(s", "(S")):
        text = text.replace(old, new)
    return text


def style_key(name: str) -> str:
    """Lookup key: a name matches whatever its Fooocus form matches, case aside."""
    return fooocus_name(name).casefold()


_key = style_key


def apply_styles(prompt: str, negative: str, styles: Iterable[Style]) -> tuple[str, str]:
    """(positive, negative) with ``styles`` applied, by the rule in the module's docstring."""
    styles = list(styles)
    if not styles:
        return prompt, negative
    positives = [s.prompt.replace(PLACEHOLDER, prompt) for s in styles]
    if not any(s.has_placeholder for s in styles):
        positives.insert(0, prompt)
    negatives = [s.negative_prompt for s in styles] + [negative]
    return _join(positives), _join(negatives)


def _join(parts: list[str]) -> str:
    return ", ".join(p for p in parts if p.strip())


def unapply_styles(positive: str, negative: str, styles: list[Style]) -> Optional[tuple[str, str]]:
    """The user's (prompt, negative) that ``styles`` turned into ``positive``/``negative``, or None.

    An A1111 infotext records the styled text beside `Styles:`; reading it back, studio takes the
    styles out again so that replaying applies them once. None when the texts here do not give
    exactly these texts (another style text, an expanded prompt): the caller keeps the text as written.
    """
    if not styles:
        return positive, negative
    candidate = _unapply_positive(positive, styles)
    neg_prefix = _join([s.negative_prompt for s in styles])
    if not neg_prefix:
        neg_candidate = negative
    elif negative == neg_prefix:
        neg_candidate = ""
    elif negative.startswith(neg_prefix + ", "):
        neg_candidate = negative[len(neg_prefix) + 2:]
    else:
        return None
    if candidate is None or apply_styles(candidate, neg_candidate, styles) != (positive, negative):
        return None
    return candidate, neg_candidate


def _unapply_positive(positive: str, styles: list[Style]) -> Optional[str]:
    with_prompt = [s for s in styles if s.has_placeholder]
    if not with_prompt:
        rest = _join([s.prompt for s in styles])
        if not rest:
            return positive
        return positive[: -len(rest) - 2] if positive.endswith(", " + rest) else None
    # The first template with {prompt}: its text before and after the placeholder frames the prompt.
    first = styles.index(with_prompt[0])
    before = _join([s.prompt for s in styles[:first]])
    head, _, tail_template = with_prompt[0].prompt.partition(PLACEHOLDER)
    start = (before + ", " if before else "") + head
    if not positive.startswith(start):
        return None
    rest = positive[len(start):]
    # The prompt ends where the rest of the first template (or the next part, after ", ") begins;
    # try each place it could, a bounded number of times.
    marker = tail_template.split(PLACEHOLDER)[0] or ", "
    ends = [i for i in range(len(rest) + 1) if rest.startswith(marker, i)] + [len(rest)]
    for end in ends[:256]:
        candidate = rest[:end]
        if apply_styles(candidate, "", styles)[0] == positive:
            return candidate
    return None


@dataclass
class StyleLibrary:
    """The styles that can be picked here, in listing order, and what went wrong reading them."""

    styles: dict[str, Style] = field(default_factory=dict)  # by lookup key
    problems: list[str] = field(default_factory=list)  # one line each: a file or an entry that was skipped
    notes: list[str] = field(default_factory=list)  # one line each: a folder style replacing another
    folder: Optional[Path] = None

    def names(self) -> list[str]:
        return [s.name for s in self.styles.values()]

    def get(self, name: str) -> Optional[Style]:
        return self.styles.get(_key(name)) if isinstance(name, str) else None

    def resolve(self, names: Iterable[str]) -> list[Style]:
        """The styles named, in order; a StudioError naming the first one that is not here."""
        out = []
        for name in names:
            style = self.get(name)
            if style is None:
                raise StudioError(self.unknown_message(name))
            out.append(style)
        return out

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f" (the closest here is {close[0]!r})" if close else ""
        where = (f"the styles folder {self.folder}" if self.folder is not None
                 else "a styles folder (--styles-dir DIR or STUDIO_STYLES_DIR)")
        problems = f"; that folder has problems, the first: {self.problems[0]}" if self.problems else ""
        return (f"style {name[:80]!r} is not here{hint}: `studio styles` lists the {len(self.styles)} there are; "
                f"for your own, put a Fooocus-format JSON file holding it in {where}{problems}")

    def search(self, query: str = "") -> list[Style]:
        """The styles whose name or text holds every word of ``query`` (case aside): those matched by
        name first, each group in listing order."""
        words = query.casefold().split()
        hits = [s for s in self.styles.values()
                if all(w in f"{s.name}\n{s.prompt}\n{s.negative_prompt}".casefold() for w in words)]
        return sorted(hits, key=lambda s: not all(w in s.name.casefold() for w in words))

    def listing(self) -> list[dict]:
        return [{"name": s.name, "source": s.source} for s in self.styles.values()]

    def _add(self, style: Style) -> None:
        key = _key(style.name)
        old = self.styles.pop(key, None)
        if old is not None:
            self.notes.append(f"{style.source}: style {style.name!r} replaces the one from {old.source}")
        self.styles[key] = style


def load_library(styles_dir: Optional[Path] = None) -> StyleLibrary:
    """Studio's styles, then the folder's (a folder style replaces a studio one of the same name)."""
    library = StyleLibrary(folder=None if styles_dir is None else Path(styles_dir))
    shipped, problems = read_style_file(SHIPPED_FILE, STUDIO_SOURCE, rename=False)
    if problems:  # studio's own file: a broken one is a bug in studio, said the same way
        library.problems += problems
    for style in shipped:
        library._add(style)
    if styles_dir is not None:
        _read_folder(Path(styles_dir), library)
    return library


def _read_folder(folder: Path, library: StyleLibrary) -> None:
    label = folder.name or str(folder)
    try:
        entries = sorted(e.name for e in os.scandir(folder))
    except OSError as exc:
        library.problems.append(f"styles folder {folder}: cannot read it ({exc.strerror or exc})")
        return
    files = [n for n in entries if n.lower().endswith(".json") and not n.startswith(".")]
    if len(files) > MAX_STYLE_FILES:
        library.problems.append(f"{label}: {len(files)} style files; only the first {MAX_STYLE_FILES} are read")
        files = files[:MAX_STYLE_FILES]
    for name in files:
        source = f"{label}/{name}"
        styles, problems = read_style_file(folder / name, source)
        library.problems += problems
        for style in styles:
            if len(library.styles) >= MAX_STYLES and library.get(style.name) is None:
                library.problems.append(f"{source}: the library holds {MAX_STYLES} styles, the most; "
                                        "the rest of this folder is skipped")
                return
            library._add(style)


def read_style_file(path: Path, source: str, rename: bool = True) -> tuple[list[Style], list[str]]:
    """The styles in one Fooocus-format file and a line per problem; never raises."""
    try:
        data = parse_json(read_bounded(path, MAX_STYLES_FILE_BYTES, source), source)
    except StudioError as exc:
        return [], [str(exc).replace(f"cannot read {source}: ", f"{source}: ")]
    if not isinstance(data, list):
        return [], [f"{source}: not a list of styles (a Fooocus style file is a JSON list of "
                    '{"name", "prompt", "negative_prompt"})']
    styles: list[Style] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(data[:MAX_STYLES], start=1):
        style, problem = _style_from_entry(entry, source, index, rename)
        if problem:
            problems.append(problem)
        if style is None:
            continue
        key = _key(style.name)
        if key in seen:  # later wins, as when Fooocus reads its files into one dict
            problems.append(f"{source}: entry {index} repeats style {style.name!r} (entry {seen[key]}); "
                            "the later one is used")
            styles = [s for s in styles if _key(s.name) != key]
        seen[key] = index
        styles.append(style)
    if len(data) > MAX_STYLES:
        problems.append(f"{source}: {len(data)} entries; only the first {MAX_STYLES} are read")
    return styles, problems


def _style_from_entry(entry, source: str, index: int, rename: bool) -> tuple[Optional[Style], Optional[str]]:
    where = f"{source}: entry {index}"
    if not isinstance(entry, dict):
        return None, f"{where} is not an object; skipped"
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"{where} has no name; skipped"
    name = fooocus_name(name.strip()) if rename else name.strip()
    where = f"{where} ({name[:60]!r})"
    if not is_plain_name(name):
        return None, f"{where}: a style name may not hold / \\ : or start with . or ~; skipped"
    if _key(name) == _key(EXPANSION_STYLE):
        return None, f"{where}: {EXPANSION_STYLE!r} is Fooocus's prompt expansion (studio's --expansion on); skipped"
    prompt = entry.get("prompt", PLACEHOLDER)
    negative = entry.get("negative_prompt", "")
    for key, value in (("prompt", prompt), ("negative_prompt", negative)):
        if not isinstance(value, str):
            return None, f"{where}: {key} is not text; skipped"
        if len(value) > MAX_STYLE_TEXT_CHARS:
            return None, f"{where}: {key} is {len(value)} characters, over the {MAX_STYLE_TEXT_CHARS} limit; skipped"
    return Style(name=name, prompt=prompt, negative_prompt=negative, source=source), None


def split_known(names: Iterable[str], library: StyleLibrary) -> tuple[list[str], list[str]]:
    """(the names the library has, the names it lacks), each in order."""
    found, missing = [], []
    for name in names:
        (found if library.get(name) is not None else missing).append(name)
    return found, missing


def imported_styles(names: list, library: StyleLibrary, origin: str) -> tuple[list[str], bool, list[str]]:
    """Styles named by another tool's preset or image → (names to apply, expansion asked for, notes).

    "Fooocus V2" asks for prompt expansion; a name the library has is applied under its name here;
    one it lacks is left out with a note saying how to add it.
    """
    found: list[str] = []
    expansion = False
    notes: list[str] = []
    missing: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            continue
        if _key(name) == _key(EXPANSION_STYLE):
            expansion = True
            continue
        style = library.get(name) if is_plain_name(name) else None
        if style is None:
            missing.append(name[:80])
        elif style.name not in found and len(found) < MAX_REQUEST_STYLES:
            found.append(style.name)
    if found:
        notes.append(f"{origin}: styles {', '.join(found)} applied from "
                     + ("this machine's styles" if library.folder is not None else "studio's styles"))
    if missing:
        notes.append(f"{origin}: styles {', '.join(repr(m) for m in missing[:8])} are not here, left out "
                     "(images will differ): put a Fooocus-format style file holding them in the styles folder "
                     "(--styles-dir DIR) and import again")
    return found, expansion, notes


def restyle_values(values: dict, names: list, library: StyleLibrary, origin: str) -> list[str]:
    """Request values read from A1111 infotext whose prompt holds the styled text, and the `Styles:` names.

    When this machine has those styles and they give exactly that text, the values are changed to the
    user's prompt and negative with ``styles`` set, so a replay applies each style once. Otherwise the
    text stays as written (it is what was encoded) and no style is applied again. Returns notes.
    """
    names = [n for n in names if isinstance(n, str) and _key(n) != _key(EXPANSION_STYLE)]
    if not names:
        return []
    shown = ", ".join(repr(n[:60]) for n in names[:8])
    found, missing = split_known(names, library)
    if missing or len(found) > MAX_REQUEST_STYLES:
        return [f"{origin}: styles {shown} are not all here; the prompt is kept as written, with their text in it"]
    styles = library.resolve(found)
    got = unapply_styles(values.get("prompt", ""), values.get("negative_prompt", ""), styles)
    if got is None:
        return [f"{origin}: styles {shown}: the text here does not give the prompt as written (another style "
                "text, or an expanded prompt); the prompt is kept as written, with their text in it"]
    values["prompt"], values["negative_prompt"] = got
    values["styles"] = list(dict.fromkeys(s.name for s in styles))
    return [f"{origin}: styles {shown} found in the prompt and applied again from here"]
