"""Finding, hashing and loading models: built-in demo models, diffusers folders, single-file checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes
from studio.runtime import quiet_libraries
from studio.untrusted import check_name, is_plain_name
from studio.models import demo, families

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
EXPANSION_FOLDER = "prompt_expansion"  # causal-LM expanders live in models/prompt_expansion/<name>/ (as Fooocus's)
PICKLE_FIX = "convert it to .safetensors, or pass --allow-unsafe-pickle to load it with torch.load(weights_only=True)"




@dataclass(frozen=True)
class ModelSource:
    name: str
    kind: Literal["builtin", "diffusers", "single_file"]
    path: Path
    family: str
    config: Path | None = None  # architecture folder beside a single file (overrides the family's)

    @property
    def untrained(self) -> bool:
        return self.kind == "builtin"


def short_hash(sha256: str) -> str:
    """A1111's short model hash: the first 10 hex digits of the full sha256."""
    return sha256[:10]


class ModelRegistry:
    def __init__(self, models_dir: Path, cache_dir: Path, allow_unsafe_pickle: bool = False):
        self.models_dir = Path(models_dir)
        self.cache_dir = Path(cache_dir)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        # Files the local operator named by path on the command line, by the name they are known by.
        self._local: dict[tuple[str, str], Path] = {}

    def add_local(self, path: Path | str, kind: Literal["model", "expansion"] = "model") -> str:
        """Make a file or folder the operator gave by path (a CLI or launch flag) pickable by its name.

        Only the process's own flags come here; anything from a request, preset or image is a name.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise StudioError(f"{path} does not exist")
        name = path.resolve().name
        self._local[(kind, name)] = path
        return name

    def name_from_flag(self, spec: str, kind: Literal["model", "expansion"] = "model") -> str:
        """The name for ``spec`` from the operator's own flag: a name in its folder, or a path made pickable.

        A plain name is looked up in its folder first; anything else that exists here is added by path.
        """
        if spec in demo.BUILTINS:
            return spec
        if not Path(spec).expanduser().exists():
            if is_plain_name(spec):
                return spec  # resolve() says it is not in the folder, and what is
            raise StudioError(f"{'model' if kind == 'model' else 'expansion model'} {spec} not found: no such file or folder")
        if is_plain_name(spec) and self._named(spec, kind).exists():
            return spec
        return self.add_local(spec, kind)

    def _named(self, name: str, kind: Literal["model", "expansion"]) -> Path:
        if (kind, name) in self._local:
            return self._local[(kind, name)]
        check_name(name, "model" if kind == "model" else "expansion model")
        return self.models_dir / name if kind == "model" else self.models_dir / EXPANSION_FOLDER / name

    def resolve_expansion(self, name: str) -> Path:
        """The causal-LM folder named ``name`` (in models/prompt_expansion/)."""
        folder = self._named(name, "expansion")
        if not folder.is_dir():
            raise StudioError(f"expansion model {name!r} is not in the models folder's {EXPANSION_FOLDER}/: put the "
                              "causal LM folder there, or use the wordbank expander")
        return folder

    # -- finding ---------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Names that can be picked: the built-ins, then what the models folder holds."""
        names = list(demo.BUILTINS)
        if self.models_dir.is_dir():
            for p in sorted(self.models_dir.iterdir()):
                if p.is_dir() and (p / "model_index.json").is_file():
                    names.append(p.name)
                elif p.is_file() and p.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES:
                    names.append(p.name)
        return names

    def resolve(self, spec: str) -> ModelSource:
        if spec in demo.BUILTINS:
            return ModelSource(spec, "builtin", self.cache_dir / "builtin" / demo.folder_name(spec),
                               demo.BUILTINS[spec].family)
        path = self._named(spec, "model")
        if not path.exists():
            choices = ", ".join(self.available())
            raise StudioError(f"model {spec!r} is not in the models folder; pick one of: {choices}")
        name = spec
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise StudioError(f"{name} is a folder without model_index.json; give a diffusers folder or a .safetensors file")
            return ModelSource(name, "diffusers", path, _folder_family(path))
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            if not self.allow_unsafe_pickle:
                raise StudioError(f"{name} is a pickle checkpoint, which can run code when loaded; {PICKLE_FIX}")
            keys = _pickle_keys(path)
        elif suffix in SAFE_SUFFIXES:
            keys = _safetensors_keys(path)
        else:
            raise StudioError(f"{path.name}: unsupported model file type {suffix or '(none)'}; use .safetensors")
        family = families.detect_family(keys)
        families.check_keys(family, keys)
        # Like A1111's `model.yaml` beside a checkpoint: `model.config/` (a diffusers-layout folder
        # of configs and tokenizers, no weights) describes an architecture other than the family's.
        sidecar = path.parent / (path.stem + ".config")
        config = sidecar if (sidecar / "model_index.json").is_file() else None
        return ModelSource(path.name, "single_file", path, family, config)

    # -- hashing ---------------------------------------------------------------------------
    def sha256(self, source: ModelSource) -> str:
        self.ensure_built(source)
        cache_file = self.cache_dir / "hashes.json"
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
        before = dict(cache)
        try:
            if source.path.is_file():
                digest = file_sha256(source.path, cache)
            else:
                # A folder's hash covers every file (configs decide the architecture, weights the values).
                h = hashlib.sha256()
                for f in sorted(p for p in source.path.rglob("*") if p.is_file()):
                    h.update(f.relative_to(source.path).as_posix().encode() + b"\0")
                    h.update(file_sha256(f, cache).encode() + b"\n")
                digest = h.hexdigest()
        except OSError as exc:
            # Deleted or made unreadable between listing and reading (another program is changing it).
            raise StudioError(f"model {source.name} changed or became unreadable while it was hashed "
                              f"({exc.strerror or type(exc).__name__}); check the models folder and try again") from None
        if cache != before:
            atomic_write_bytes(cache_file, json.dumps(cache, indent=1).encode())
        return digest

    # -- loading ---------------------------------------------------------------------------
    def is_built(self, source: ModelSource) -> bool:
        return source.kind != "builtin" or (source.path / "model_index.json").is_file()

    def ensure_built(self, source: ModelSource) -> None:
        if not self.is_built(source):
            quiet_libraries()
            demo.build(source.name, source.path, self.cache_dir)

    def load(self, source: ModelSource, text_only: bool = False):
        """The diffusers pipeline for ``source`` on CPU in fp32, loaded with no network access; with
        ``text_only``, without its UNet and VAE (a backend that runs those from elsewhere: OpenVINO's IR).

        Weights are copied into memory of their own: a memory-mapped safetensors tensor may sit at an
        address only 8-byte aligned, and CPU matmul kernels then round differently (~5e-7 seen with
        bit-identical weights), so the image would depend on the file's layout, not only its values.
        """
        quiet_libraries()
        return _own_memory(self._load(source, {"unet": None, "vae": None} if text_only else {}))

    def _load(self, source: ModelSource, without: dict):
        import diffusers

        self.ensure_built(source)
        if source.kind in ("builtin", "diffusers"):
            index = _read_config(source.path / "model_index.json", source.name)
            cls = getattr(diffusers, str(index.get("_class_name")), None)
            if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
                raise StudioError(f"{source.name}: model_index.json names no diffusers pipeline "
                                  f"({str(index.get('_class_name'))[:60]!r}); copy the model folder again")
            extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
            # Without the switch only safetensors weights load: a folder's .bin files are pickles too.
            safe_only = {} if self.allow_unsafe_pickle else {"use_safetensors": True}
            try:
                with _quiet_diffusers():
                    return cls.from_pretrained(str(source.path), local_files_only=True, **safe_only, **extra,
                                               **without)
            except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
                pickles = sorted(p.relative_to(source.path).as_posix() for p in source.path.rglob("*")
                                 if p.suffix.lower() in PICKLE_SUFFIXES)
                if pickles and not self.allow_unsafe_pickle:
                    raise StudioError(f"model {source.name} has pickle weights ({pickles[0]}), which can run code "
                                      f"when loaded; {PICKLE_FIX}") from None
                raise StudioError(f"cannot load diffusers folder {source.name}: {_first_line(exc)}") from None
        config = source.config or families.config_dir(source.family, self.cache_dir)
        cls = diffusers.StableDiffusionXLPipeline if source.family == "sdxl" else diffusers.StableDiffusionPipeline
        try:
            return cls.from_single_file(str(source.path), config=str(config), local_files_only=True, **without)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise StudioError(f"cannot load {source.path.name} as {source.family}: {_first_line(exc)}") from None


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers logs its own 'error occurred while trying to fetch' on stderr before raising; the
    StudioError that follows says the same in one line, so its log is held back while loading."""
    from diffusers.utils import logging as dlogging

    before = dlogging.get_verbosity()
    dlogging.set_verbosity(dlogging.CRITICAL + 10)
    try:
        yield
    finally:
        dlogging.set_verbosity(before)


def _own_memory(pipe):
    import torch

    with torch.no_grad():
        for attr in ("text_encoder", "text_encoder_2", "unet", "vae"):
            module = getattr(pipe, attr, None)
            if module is None:
                continue
            for t in [*module.parameters(), *module.buffers()]:
                t.data = t.data.clone()
    return pipe


def file_sha256(path: Path, cache: dict) -> str:
    """Full sha256 of a file, reused from ``cache`` while its size and mtime are unchanged."""
    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
    return cache[key]["sha256"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_config(path: Path, model: str) -> dict:
    """A model folder's JSON config as a dict, or one line naming the file that is broken."""
    where = f"{model}: {path.parent.name}/{path.name}" if path.parent.name != model else f"{model}: {path.name}"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudioError(f"{where} is missing; the model folder is incomplete, copy it again") from None
    except (OSError, ValueError) as exc:
        raise StudioError(f"{where} is not valid JSON ({_first_line(exc)}); copy the model folder again") from None
    if not isinstance(value, dict):
        raise StudioError(f"{where} does not hold a JSON object; copy the model folder again")
    return value


def _folder_family(path: Path) -> str:
    index = _read_config(path / "model_index.json", path.name)
    if "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return "sd1"
    return "sd2" if isinstance(unet, dict) and unet.get("cross_attention_dim") == 1024 else "sd1"


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for every kind of corruption
        raise StudioError(f"{path.name} is not a readable safetensors file ({_first_line(exc)}); re-download or re-convert it") from None


def _pickle_keys(path: Path) -> list[str]:
    import torch

    try:
        # mmap reads only the zip format (torch >= 1.6); an older .ckpt is read whole.
        mmap = zipfile.is_zipfile(path)
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise StudioError(f"{path.name} could not be read as a weights-only checkpoint ({_first_line(exc)})") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StudioError(f"{path.name} does not hold a state dict")
    return list(state)



def architecture(source: ModelSource, cache_dir: Path) -> dict:
    """Default image size and latent layout, read from configs only (no weights are loaded)."""
    if source.kind == "single_file":
        folder = source.config or families.config_dir(source.family, cache_dir)
    else:
        folder = source.path
    unet = _read_config(folder / "unet" / "config.json", source.name)
    vae = _read_config(folder / "vae" / "config.json", source.name)
    try:
        vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
        return {
            "default_size": int(unet["sample_size"]) * vae_scale,
            "vae_scale": vae_scale,
            "latent_channels": int(vae.get("latent_channels", unet.get("out_channels", 4))),
            # 9 for an inpainting checkpoint: latents + mask + the masked image's latents
            "unet_in_channels": int(unet["in_channels"]),
            # what a LoRA's cross-attention layers must take: tells an SDXL LoRA from an SD1 or SD2 one
            "cross_attention_dim": _cross_attention_dim(unet.get("cross_attention_dim", 768)),
            # what a textual-inversion embedding's vectors must be: one width per text encoder
            "text_widths": _text_widths(folder, source.name),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise StudioError(f"{source.name}: the unet/vae config lacks a usable {exc!s:.40} entry; "
                          "copy the model folder again") from None


def _text_widths(folder: Path, model: str) -> list[int]:
    """The hidden size of each text encoder (SDXL: two), from their configs; none if a folder has no config."""
    widths = []
    for part in ("text_encoder", "text_encoder_2"):
        path = folder / part / "config.json"
        if path.is_file():
            widths.append(int(_read_config(path, model).get("hidden_size", 0)))
    return widths


def _cross_attention_dim(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
