"""Preset files: JSON only, at most 1 MB, validated against the schema, older versions migrated.

A preset is untrusted data from another machine: it is parsed as JSON (never executed), checked
field by field (unknown keys and wrong types are named), and may name a model but never a path.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes
from studio.settings import PRESET_SCHEMA_VERSION, Preset, drop_retired_keys, validation_message
from studio.untrusted import MAX_PRESET_BYTES, parse_json, read_bounded

MAX_BYTES = MAX_PRESET_BYTES
SHIPPED = Path(__file__).resolve().parents[1] / "presets"


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.json")) if SHIPPED.is_dir() else []


def find(name_or_path: str) -> Path:
    """A preset by name (from presets/) or by path."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path  # read_bounded refuses a folder, a FIFO or a device with a clear message
    if "/" not in name_or_path and (SHIPPED / f"{name_or_path}.json").is_file():
        return SHIPPED / f"{name_or_path}.json"
    names = ", ".join(shipped_names()) or "none shipped"
    raise StudioError(f"preset {name_or_path!r} not found: give a file path or one of: {names}")


def _migrate_v0(data: dict) -> dict:
    """Schema 0 (before the first release): the request fields flat at the top, the model a string."""
    flat = {k: v for k, v in data.items() if k not in ("schema_version", "name", "description", "model")}
    model = data.get("model", "tiny")
    return {"schema_version": 1, "name": data.get("name"), "description": data.get("description"),
            "model": {"file": model} if isinstance(model, str) else model, "request": flat}


MIGRATIONS = {0: _migrate_v0}


def parse(text: str | bytes, origin: str = "preset") -> tuple[Preset, list[str]]:
    """The preset in ``text`` and notes (e.g. a migration); a StudioError names what is wrong."""
    if len(text) > MAX_BYTES:
        raise StudioError(f"{origin} is over the 1 MiB limit; a preset is a small JSON file")
    data = parse_json(text, origin)
    if not isinstance(data, dict):
        raise StudioError(f"{origin} must be a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StudioError(f"{origin} has no schema_version: not a studio preset (for Fooocus or A1111 settings "
                          "use `studio preset import`)")
    if version > PRESET_SCHEMA_VERSION:
        raise StudioError(f"{origin} uses preset schema_version {version}; this studio reads up to "
                          f"{PRESET_SCHEMA_VERSION}: update studio to open it")
    notes = []
    while version < PRESET_SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise StudioError(f"{origin} uses preset schema_version {version}, which studio cannot migrate")
        data = MIGRATIONS[version](data)
        notes.append(f"migrated {origin} from schema_version {version} to {data['schema_version']}; "
                     "save it again to keep the new form")
        version = data["schema_version"]
    # A retired request key (e.g. `lru`) is dropped, not refused, within the same schema version: it never
    # changed pixels, and a preset saved without it still opens in an older studio (which had a default).
    request, dropped = drop_retired_keys(data.get("request"))
    if dropped:
        data = {**data, "request": request}
        notes += [f"{origin}: {note}; save it again to keep the new form" for note in dropped]
    try:
        return Preset.model_validate(data), notes
    except ValidationError as exc:
        raise StudioError(f"{origin}: {validation_message(exc)}") from None
    except RecursionError:
        raise StudioError(f"{origin} is nested too deeply") from None


def load(name_or_path: str) -> tuple[Preset, list[str]]:
    path = find(name_or_path)
    return parse(read_bounded(path, MAX_BYTES, f"preset {path.name}"), f"preset {path.name}")


def save(preset: Preset, path: Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise StudioError(f"{path}: a preset file ends in .json")
    try:
        atomic_write_bytes(path, (json.dumps(preset.to_json_dict(), indent=2, ensure_ascii=False) + "\n").encode())
    except StudioError:  # fsutil's WriteError already names the file and the fix
        raise
    except OSError as exc:  # a name too long, a missing folder: nothing was written
        raise StudioError(f"cannot write preset {path.name}: {exc.strerror or exc}") from None
    return path


def locate_model(preset: Preset, registry) -> tuple[str, list[str]]:
    """The model to run for ``preset`` here: by name, else by sha256 among the models that are here."""
    import difflib

    want = preset.model
    try:
        registry.resolve(want.file)
        return want.file, []
    except StudioError:
        pass
    available = registry.available()
    if want.sha256:
        for name in available:
            try:
                source = registry.resolve(name)
                # A builtin that was never built cannot be the preset's file, and building
                # sd15-random (3.4 GB) just to hash it would be absurd.
                if not registry.is_built(source):
                    continue
                if registry.sha256(source) == want.sha256:
                    return name, [f"model {want.file} is here as {name} (same sha256)"]
            except StudioError:
                continue
    close = difflib.get_close_matches(want.file, available, n=1, cutoff=0.4)
    hash_text = f" (sha256 {want.sha256[:10]}…)" if want.sha256 else ""
    hint = f"; the closest here by name is {close[0]}" if close else ""
    raise StudioError(f"the preset's model {want.file}{hash_text} is not here: put it in the models folder"
                      f"{hint}, or override it with --model")
