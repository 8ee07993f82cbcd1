"""OpenVINO through optimum-intel: export once to IR (cached on disk), compile static shapes per signature.

The IR is cached by model sha256 + openvino and optimum-intel versions, so a second start does no
export. UNet and VAE decoder are reshaped to a signature and compiled (CompileManager keeps them in
an LRU); switching between cached signatures only swaps compiled models. The text encoders run in
PyTorch on the CPU (SD.Next's default), or, with `text_encoder: openvino`, as exported IR compiled for
one 77-token chunk ([1, 77]: every chunk has that shape, so prompt length never recompiles them);
either way with the same chunked encoding as the torch backend.
An input image (vary, upscale, inpaint, outpaint) runs through optimum-intel's own image-to-image and inpaint
pipelines, made once per model on the same exported models; its signature also compiles the VAE encoder for the
input's size, which encodes the input (the posterior's mean: no draw) before the pipeline adds the noise.
Modes: performance (EXECUTION_MODE_HINT=PERFORMANCE: the device's fastest precision, bf16 on CPUs
with avx512_bf16/AMX) or accuracy (EXECUTION_MODE_HINT=ACCURACY, INFERENCE_PRECISION_HINT=f32).
Compiled blobs are cached on disk in one folder per compile key (backends/blob_cache.py says why).
LoRAs are fused into the PyTorch model (`_fuse_loras`) and the fused weights written into a copy of the base IR
(`_ir_with_weights`; a fused export where that cannot be done): each LoRA set has an IR of its own beside the
base model's, which stays the one exported without LoRAs (so runs without them are unchanged bit for bit).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from studio.backends.base import (BackendOutput, ImageSkipped, RunHooks, StepCallback, as_hooks, guarded_callback,
                                  non_finite)
from studio.backends.blob_cache import BlobCache
from studio.backends.compile_manager import (CompileManager, Signature, lora_set, lora_set_hash,
                                             make_signature)
from studio.adapters.loras import apply_to_pipeline
from studio.backends.image_inputs import image_kwargs, scale_latents, watch_noise
from studio.engine import precision
from studio.engine.image_modes import METHODS
from studio.plan import AppliedLora, Plan, ResolvedBackend
from studio.samplers import make_scheduler, sampler_spec
from studio.errors import StudioError
from studio.fsutil import atomic_dir
from studio.repro.environment import cpu_info
from studio.prompts.encode import encode
from studio.settings import GenerationRequest
from studio.runtime import quiet_libraries, release_memory

# LoRA-set IRs kept on disk per model (each is a full copy of the model's weights): the least recently used
# beyond this are removed when another is exported. The base IR is never removed this way.
LORA_IRS_KEPT = 3


class _NotPatched(Exception):
    """The base IR could not take a LoRA set's weights: export the fused model instead."""


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)
    return dst


def _loaded_from_cache(compiled) -> bool:
    try:
        return bool(compiled.get_property("LOADED_FROM_CACHE"))
    except RuntimeError:  # a device that does not report it
        return False


def _precision_name(ov_type) -> str:
    text = str(ov_type).lower()
    for key, name in (("bf16", "bf16"), ("bfloat16", "bf16"), ("f16", "fp16"), ("float16", "fp16"),
                      ("f32", "fp32"), ("float32", "fp32")):
        if key in text:
            return name
    return text


@dataclass
class TextSide:
    """The text encoders (PyTorch, or compiled OpenVINO) and tokenizers of a model: all `prompts.encode` needs."""
    tokenizer: Any
    text_encoder: Any
    config: dict

    def __post_init__(self):
        self.unet = self.vae = None


@dataclass
class Loaded:
    ov_pipe: Any
    text: TextSide
    scheduler_config: dict
    load_note: Optional[str]  # exported or loaded from cache: told once, with the first run
    ov_text: dict = field(default_factory=dict)  # (device, mode) → TextSide with compiled OpenVINO encoders
    fp32_vae: dict = field(default_factory=dict)  # (device, W, H) → an accuracy-mode VAE decoder, for the guard
    task_pipes: dict = field(default_factory=dict)  # "img2img" / "inpaint" → optimum-intel's pipeline, same models
    ir: Optional[Path] = None  # the IR folder these models were read from (the base's, or a LoRA set's)
    compile_key: str = ""  # the model's sha256, with the LoRA set's hash when there is one: the blob-cache key


class _EncoderOutput(tuple):
    """What prompts.encode reads from a text encoder call: [0], hidden_states, text_embeds."""

    def __new__(cls, last_hidden_state, hidden_states, text_embeds):
        out = super().__new__(cls, (last_hidden_state,))
        out.last_hidden_state, out.hidden_states, out.text_embeds = last_hidden_state, hidden_states, text_embeds
        return out


class OVTextEncoder:
    """An exported CLIP text encoder compiled for one chunk, called the way prompts.encode calls PyTorch's."""

    def __init__(self, compiled):
        import torch

        self.compiled = compiled
        self.device = torch.device("cpu")
        names = {name: port for port in compiled.outputs for name in port.get_names()}
        self._last = names.get("last_hidden_state")
        self._pooled = names.get("text_embeds")  # SDXL's second encoder: the projected pooled embedding
        self._hidden = [names[f"hidden_states.{i}"] for i in range(len(names)) if f"hidden_states.{i}" in names]

    def __call__(self, ids, output_hidden_states: bool = False):
        import torch

        result = self.compiled(ids.cpu().numpy())
        if output_hidden_states and not self._hidden:
            # Checked at plan time (clip skip > 1 on SD1/SD2); this is the last line of defence.
            raise StudioError("this model's exported text encoder gives only its last layer: use clip skip 1")
        hidden = tuple(torch.from_numpy(result[port].copy()) for port in self._hidden) or None
        pooled = torch.from_numpy(result[self._pooled].copy()) if self._pooled is not None else None
        return _EncoderOutput(torch.from_numpy(result[self._last].copy()), hidden, pooled)


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, cache_dir: Path, compile_cache_size: int = 3):
        self.cache_dir = Path(cache_dir)
        self.blobs = BlobCache(self.cache_dir / "openvino" / "compiled")
        self.manager = CompileManager(compile_cache_size)
        self._core = None
        self._loaded: Optional[tuple[tuple, Loaded]] = None  # one model (and LoRA set) at a time
        self._export_seconds: dict[str, float] = {}  # model short hash → its last measured export, for predictions
        self._compress_seconds: dict[str, float] = {}  # the same for the int8 compression

    # -- device and mode -------------------------------------------------------------------------
    @property
    def core(self):
        if self._core is None:
            import openvino

            self._core = openvino.Core()
        return self._core

    def _device(self, asked: str) -> str:
        devices = self.core.available_devices
        name = asked.upper()
        if name in devices or any(d.split(".")[0] == name for d in devices):
            return name
        raise StudioError(f"OpenVINO device {asked!r} is not available here; devices: {', '.join(devices)}")

    @staticmethod
    def _ov_config(mode: str) -> dict:
        if mode == "accuracy":
            return {"EXECUTION_MODE_HINT": "ACCURACY", "INFERENCE_PRECISION_HINT": "f32"}
        return {"EXECUTION_MODE_HINT": "PERFORMANCE"}

    def _compile_config(self, model_sha256: str, device: str, mode: str) -> tuple[dict, Path, list[str]]:
        """The compile properties for ``mode`` with a blob-cache folder of this key's own, and what was wrong there."""
        import openvino
        from importlib.metadata import version

        notes = []
        legacy = self.cache_dir / "openvino" / "blobs"  # before 0.1: one folder shared by every mode
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)
            notes.append("openvino: removed the old shared blob cache (it could serve a blob compiled in another "
                         "mode); compiled variants now have a cache folder per mode and device")
        config = self._ov_config(mode)
        key = {"model": model_sha256, "device": device, "mode": mode, "hints": config,
               "device_name": str(self.core.get_property(device, "FULL_DEVICE_NAME")),
               "capabilities": sorted(str(c) for c in self.core.get_property(device, "OPTIMIZATION_CAPABILITIES")),
               "cpu_flags": cpu_info()[1], "openvino": openvino.__version__,
               "optimum_intel": version("optimum-intel")}
        folder, found = self.blobs.open(key)
        return {**config, "CACHE_DIR": str(folder)}, folder, notes + found

    def _compile_models(self, models: dict, device: str, mode: str, model_sha256: str) -> tuple[dict, list[str]]:
        """Compile each named ov.Model through the blob cache; the compiled models, and notes on the cache."""
        config, folder, notes = self._compile_config(model_sha256, device, mode)
        compiled = {name: self.core.compile_model(model, device, config) for name, model in models.items()}
        self.blobs.record(folder)
        cached = [name for name, c in compiled.items() if _loaded_from_cache(c)]
        if cached:
            notes.append(f"openvino: {', '.join(cached)} loaded from the blob cache ({mode} mode)")
        return compiled, notes

    def resolve(self, request: GenerationRequest, family: str) -> ResolvedBackend:
        if request.backend.compile != "none":
            raise StudioError("--compile torch is the torch backend's compiler (OpenVINO compiles every run anyway): "
                              "use --backend torch, or --compile none")
        device = self._device(request.backend.device)
        mode = request.backend.ov_mode
        asked = request.precision
        on_ov = request.backend.text_encoder == "openvino"
        if asked.unet != "fp32" or asked.vae != "fp32" or (on_ov and asked.text != "fp32"):
            parts = "unet/vae" + ("/text" if on_ov else "")
            raise StudioError("with OpenVINO the compiled parts' precision follows the mode: use --ov-mode performance "
                              f"for the device's fast precision, or accuracy for fp32 (leave --dtype {parts} at fp32)")
        if asked.text == "fp16":
            raise StudioError("the OpenVINO backend runs the text encoder in PyTorch on the CPU: fp16 is not "
                              "supported there; use fp32 or bf16, or --text-encoder openvino")
        if on_ov and request.clip_skip > 1 and family != "sdxl":
            raise StudioError(f"clip skip {request.clip_skip} needs the text encoder's inner layers, which the "
                              f"OpenVINO export of an {family.upper()} model does not give: use --text-encoder torch, "
                              "or clip skip 1")
        compiled = "fp32" if mode == "accuracy" else _precision_name(
            self.core.get_property(device, "INFERENCE_PRECISION_HINT"))
        return ResolvedBackend(name=self.name, device=device, mode=mode, text_encoder=request.backend.text_encoder,
                               weights=request.backend.ov_weights,
                               precision={"text": compiled if on_ov else asked.text, "unet": compiled,
                                          "vae": compiled})

    def generator_device(self, resolved: ResolvedBackend) -> str:
        return "cpu"  # torch generators cannot live on an OpenVINO device; noise is drawn on the CPU

    # -- signatures --------------------------------------------------------------------------------
    @staticmethod
    def signature(request: GenerationRequest, model: str, width: int, height: int, chunks: int,
                  device: str, prompt_chunks: Optional[int] = None, image_method: Optional[str] = None,
                  loras: Optional[list[AppliedLora]] = None) -> Signature:
        cfg_batch = 2 if request.cfg > 1 else 1  # diffusers runs CFG as one batch of (negative, positive)
        return make_signature(request.backend.ov_mode, cfg_batch, width, height, chunks, model, device, prompt_chunks,
                              image_method, loras, request.backend.ov_weights)

    def predict_compile(self, request, model, width, height, chunks, prompt_chunks=None, image_method=None,
                        loras=None):
        prediction = self.manager.predict(self.signature(request, model, width, height, chunks,
                                                         self._device(request.backend.device), prompt_chunks,
                                                         image_method, loras))
        key, label = lora_set(loras)
        int8 = request.backend.ov_weights == "int8"
        if int8 and self._find_ir(model, key, "int8") is not None:
            return prediction
        compress = (" (then the UNet's weights compressed to int8 by NNCF, a separate IR: "
                    f"{self._int8_expect(model)})") if int8 else ""
        if self._find_ir(model, key) is not None:
            if int8:
                return prediction.model_copy(update={
                    "export": f"the UNet's weights compressed to int8 by NNCF first, a separate IR "
                              f"({self._int8_expect(model)})"})
            return prediction
        if key and self._find_ir(model) is not None:
            return prediction.model_copy(update={
                "export": f"the LoRA set's weights ({label}) written into a copy of the model's IR first (no export, "
                          f"under a second){compress}"})
        what = f"for the LoRA set {label}" if key else "of the model"
        last = self._export_seconds.get(model)
        expect = (f"~{last:.1f} s, as this model's last export" if last is not None else
                  f"the first {'for this LoRA set' if key else 'of this model'} in this session: not measured yet")
        return prediction.model_copy(update={"export": f"an export to OpenVINO IR {what} first ({expect}){compress}"})

    def _int8_expect(self, model: str) -> str:
        last = self._compress_seconds.get(model)
        return f"~{last:.1f} s, as last time" if last is not None else "not measured yet in this session"

    # -- export / load -----------------------------------------------------------------------------
    @staticmethod
    def _ir_suffix(loras: tuple = (), weights: str = "full") -> str:
        import openvino
        from importlib.metadata import version

        lora = f"-lora{lora_set_hash(loras)}" if loras else ""  # the base IR's name is the one it always had
        int8 = "-int8" if weights == "int8" else ""
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"-ov{openvino.__version__.split('-')[0]}-oi{version('optimum-intel')}"
                                                f"{lora}{int8}")

    def _ir_dir(self, sha256: str, loras: tuple = (), weights: str = "full") -> Path:
        """The IR folder of a model, or of the model with a LoRA set fused in (``loras`` as lora_set gives it), with
        its full weights or the UNet's compressed to int8."""
        return self.cache_dir / "openvino" / "ir" / f"{sha256[:16]}{self._ir_suffix(loras, weights)}"

    def _find_ir(self, short_hash: str, loras: tuple = (), weights: str = "full") -> Optional[Path]:
        """The exported IR of the model whose sha256 starts with ``short_hash`` (planning has only that), if any."""
        root = self.cache_dir / "openvino" / "ir"
        suffix = self._ir_suffix(loras, weights)
        if not root.is_dir():
            return None
        return next((d for d in root.iterdir() if d.name.startswith(short_hash) and d.name.endswith(suffix)
                     and len(d.name) == 16 + len(suffix) and (d / "model_index.json").is_file()), None)

    def _prune_lora_irs(self, sha256: str, keep: Path) -> None:
        """Remove this model's least recently used LoRA-set IRs beyond LORA_IRS_KEPT (each is a whole model)."""
        root = self.cache_dir / "openvino" / "ir"
        prefix = f"{sha256[:16]}{self._ir_suffix()}-lora"
        others = sorted((d for d in root.iterdir() if d.name.startswith(prefix) and d != keep and d.is_dir()),
                        key=lambda d: d.stat().st_mtime, reverse=True)
        for old in others[LORA_IRS_KEPT - 1:]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _fuse_loras(torch_pipe, loras: list[AppliedLora], paths: dict) -> dict[str, set[str]]:
        """Fuse the LoRA set into ``torch_pipe``'s weights (UNet and text encoders) at their weights, with
        diffusers' own load_lora_weights / set_adapters / fuse_lora, then drop the PEFT layers so that only the
        fused weights are left (what the PyTorch text encoder runs, and what goes into the IR). Returns the
        weights the LoRAs changed: component → parameter names."""
        from peft.tuners.lora import LoraLayer

        # The plan refused pickles unless they were allowed, so its paths load as they are (as on torch).
        apply_to_pipeline(torch_pipe, loras, paths, allow_unsafe_pickle=True)
        changed = {}
        for component in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(torch_pipe, component, None)
            if module is not None:
                changed[component] = {f"{name}.weight" for name, layer in module.named_modules()
                                      if isinstance(layer, LoraLayer)}
        torch_pipe.fuse_lora(lora_scale=1.0)  # each adapter at the weight set_adapters gave it
        torch_pipe.unload_lora_weights()  # the PEFT layers go; the fused weights stay (same names as before)
        return {component: names for component, names in changed.items() if names}

    def _ir_with_weights(self, base: Path, torch_pipe, changed: dict[str, set[str]], out: Path) -> bool:
        """Write into ``out`` the base IR with the LoRA-changed weights replaced by ``torch_pipe``'s fused ones;
        False (nothing usable written) when a changed weight is not a plain fp32 constant of the same shape in
        the base IR (an IR compressed to int8/fp16, or a layout this does not know): the caller exports then.

        Why this rather than an export per LoRA set: it is the same model with other numbers in some constants,
        and the exporter names each weight's constant after its PyTorch parameter ("self.<name>"), so writing
        them takes ~0.3 s on tiny where a fused export takes ~25 s of CPU (~100 s wall on a loaded 2-core
        machine). The accuracy test (test_openvino_lora.py) checks the result against the torch backend."""
        import numpy as np
        import openvino

        patched = {}
        for component, names in changed.items():
            xml = base / component / "openvino_model.xml"
            if not xml.is_file():
                return False
            model = self.core.read_model(str(xml))
            weights = {name: p.detach() for name, p in getattr(torch_pipe, component).state_dict().items()
                       if name in names}
            found = set()
            for op in model.get_ops():
                name = op.get_friendly_name()
                if op.get_type_name() != "Constant" or not name.startswith("self.") or name[5:] not in weights:
                    continue
                value = weights[name[5:]].float().numpy()
                if op.get_output_element_type(0) != openvino.Type.f32 or tuple(op.get_output_shape(0)) != value.shape:
                    return False
                constant = openvino.op.Constant(np.ascontiguousarray(value))
                constant.set_friendly_name(name)
                for target in list(op.output(0).get_target_inputs()):
                    target.replace_source_output(constant.output(0))
                found.add(name[5:])
            if found != set(weights) or len(weights) != len(names):
                return False
            patched[component] = model
        # Unchanged parts are hard links to the base IR's files where the disk allows it: no second copy.
        shutil.copytree(base, out, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=lambda folder, files: [f for f in files if Path(folder).name in patched
                                                      and f.startswith("openvino_model.")])
        for component, model in patched.items():
            openvino.save_model(model, str(out / component / "openvino_model.xml"), compress_to_fp16=False)
        return True

    def _load(self, plan: Plan, load_torch, hooks: RunHooks, loras: Optional[dict] = None) -> Loaded:
        lora_key, label = lora_set(plan.loras)
        key = (plan.model.sha256, tuple(sorted(plan.backend.precision.items())), lora_key, plan.backend.weights)
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        # The previous model goes before the next one loads: its pipeline, and its compiled variants (each holds
        # a copy of its weights), so two models are never in memory together.
        held = self._loaded is not None
        self._loaded = None
        if self.manager.drop(keep_model=plan.model.short_hash, why="released when another model was loaded") or held:
            release_memory()
        quiet_libraries()
        from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

        cls = OVStableDiffusionXLPipeline if plan.model.family == "sdxl" else OVStableDiffusionPipeline
        ir = self._ir_dir(plan.model.sha256, lora_key)
        base = self._ir_dir(plan.model.sha256)
        # With the IR on disk and no LoRA to fuse, PyTorch runs only the text encoder: its UNet and VAE are not
        # loaded at all (they would be a second copy of the weights the IR holds, read for nothing).
        torch_pipe = load_torch(text_only=not plan.loras and (ir / "model_index.json").is_file())
        changed = {}
        if plan.loras:
            # Always, not only before an export: the PyTorch text encoder runs from this pipeline too.
            hooks.stage(f"fusing the LoRA set ({label}) into the model")
            changed = self._fuse_loras(torch_pipe, plan.loras, loras or {})
        what = f"the model with the LoRA set ({label})" if plan.loras else "the model"
        written = None
        if plan.loras and not (ir / "model_index.json").is_file() and (base / "model_index.json").is_file():
            hooks.stage(f"writing the LoRA set's weights ({label}) into a copy of the model's IR")
            start = time.perf_counter()
            try:
                with atomic_dir(ir) as out:
                    if not self._ir_with_weights(base, torch_pipe, changed, out):
                        raise _NotPatched()  # atomic_dir removes what was written; the export below runs
                written = True
            except _NotPatched:
                written = False
        if written:
            load_note = (f"openvino: wrote the LoRA set's weights into the model's IR in "
                         f"{time.perf_counter() - start:.1f} s (no export)")
            self._prune_lora_irs(plan.model.sha256, ir)
        elif not (ir / "model_index.json").is_file():
            hooks.stage(f"exporting {what} to OpenVINO IR")
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as src, atomic_dir(ir) as out, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's tracer chatter is not the user's business
                torch_pipe.save_pretrained(src, safe_serialization=True)
                cls.from_pretrained(src, export=True, compile=False).save_pretrained(out)
            seconds = time.perf_counter() - start
            self._export_seconds[plan.model.short_hash] = seconds
            load_note = f"openvino: exported {what} to IR in {seconds:.1f} s"
            if plan.loras:
                self._prune_lora_irs(plan.model.sha256, ir)
            hooks.check()  # the IR is complete on disk (atomic_dir): a Stop pressed meanwhile ends the run now
        else:
            load_note = f"openvino: IR {'of the LoRA set ' if plan.loras else ''}loaded from cache (no export)"
            if plan.loras:
                os.utime(ir)  # recently used: the last LoRA-set IR to be pruned
        compile_key = plan.model.sha256 + (f"+lora{lora_set_hash(lora_key)}" if lora_key else "")
        if plan.backend.weights == "int8":
            ir, note = self._int8_ir(plan, ir, lora_key, hooks)
            load_note = f"{load_note}; {note}"
            compile_key += "+int8"
        # No CACHE_DIR here: studio compiles every part itself, each through its own key's blob folder.
        ov_pipe = cls.from_pretrained(str(ir), compile=False, local_files_only=True,
                                      ov_config=self._ov_config(plan.backend.mode))
        ov_pipe.set_progress_bar_config(disable=True)
        text = TextSide(tokenizer=torch_pipe.tokenizer, text_encoder=torch_pipe.text_encoder,
                        config=dict(torch_pipe.config))
        if plan.model.family == "sdxl":
            text.tokenizer_2, text.text_encoder_2 = torch_pipe.tokenizer_2, torch_pipe.text_encoder_2
        precision.apply(text, plan.backend.precision)
        loaded = Loaded(ov_pipe, text, dict(ov_pipe.scheduler.config), load_note, ir=ir, compile_key=compile_key)
        self._loaded = (key, loaded)
        return loaded

    def _int8_ir(self, plan: Plan, full: Path, lora_key: tuple, hooks: RunHooks) -> tuple[Path, str]:
        """The IR ``full`` with the UNet's weights compressed to int8 by NNCF (asymmetric, per channel: its default,
        SD.Next's "compress weights"), made once beside it; the other parts are hard links to ``full``'s files."""
        out_dir = self._ir_dir(plan.model.sha256, lora_key, "int8")
        if (out_dir / "model_index.json").is_file():
            return out_dir, "the int8 IR loaded from cache"
        hooks.stage("compressing the UNet's weights to int8 (NNCF)")
        start = time.perf_counter()
        import contextlib
        import io
        import logging

        import nncf
        import openvino

        nncf.set_log_level(logging.ERROR)
        # NNCF prints its table and progress bar on stdout, which is the CLI's JSON channel: kept out of it.
        with atomic_dir(out_dir) as out, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            shutil.copytree(full, out, dirs_exist_ok=True, copy_function=_link_or_copy,
                            ignore=lambda folder, files: [f for f in files if Path(folder).name == "unet"
                                                          and f.startswith("openvino_model.")])
            model = self.core.read_model(str(full / "unet" / "openvino_model.xml"))
            compressed = nncf.compress_weights(model)
            openvino.save_model(compressed, str(out / "unet" / "openvino_model.xml"), compress_to_fp16=False)
        seconds = time.perf_counter() - start
        self._compress_seconds[plan.model.short_hash] = seconds
        if lora_key:
            self._prune_lora_irs(plan.model.sha256, out_dir)
        hooks.check()
        return out_dir, f"compressed the UNet's weights to int8 (NNCF) in {seconds:.1f} s"

    def _task_pipeline(self, loaded: Loaded, plan: Plan):
        """optimum-intel's image-to-image or inpaint pipeline of the loaded model (made once per model): the
        same exported models, tokenizers and scheduler config, so nothing is read again; the compiled models
        are set on it per run, as on the text-to-image pipeline."""
        kind = "img2img" if plan.image.method == METHODS["img2img"] else "inpaint"
        if kind in loaded.task_pipes:
            return loaded.task_pipes[kind], kind
        from optimum.intel import (OVStableDiffusionImg2ImgPipeline, OVStableDiffusionInpaintPipeline,
                                   OVStableDiffusionXLImg2ImgPipeline, OVStableDiffusionXLInpaintPipeline)

        base = loaded.ov_pipe
        if base.vae_encoder is None:
            raise StudioError("this model's OpenVINO export has no VAE encoder, which an input image needs: delete "
                              f"{loaded.ir} so that the next run exports it again")
        xl = plan.model.family == "sdxl"
        cls = {("img2img", False): OVStableDiffusionImg2ImgPipeline,
               ("inpaint", False): OVStableDiffusionInpaintPipeline,
               ("img2img", True): OVStableDiffusionXLImg2ImgPipeline,
               ("inpaint", True): OVStableDiffusionXLInpaintPipeline}[(kind, xl)]
        # Given as arguments, the models are used as they are (never read from the IR folder again).
        shared = {name: getattr(base, name).model
                  for name in ("unet", "vae_decoder", "vae_encoder", "text_encoder", "text_encoder_2")
                  if getattr(base, name, None) is not None}
        shared.update({name: getattr(base, name) for name in ("tokenizer", "tokenizer_2")
                       if getattr(base, name, None) is not None})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = cls.from_pretrained(str(loaded.ir), compile=False, local_files_only=True,
                                       ov_config=dict(base.ov_config), scheduler=base.scheduler, **shared)
        made.set_progress_bar_config(disable=True)
        loaded.task_pipes[kind] = made
        return made, kind

    @staticmethod
    def _encoder(compiled, config):
        """Encode pixels (1×3×H×W in −1..1) with the compiled VAE encoder: the posterior's mean (the first half of
        the exported ``latent_parameters``: mean, then log-variance), in the UNet's latent scale."""
        import torch

        port = next((o for o in compiled.outputs if "latent_parameters" in o.get_names()), None)
        if port is None:
            raise StudioError("this model's exported VAE encoder does not give the posterior's parameters "
                              "(latent_parameters): delete its IR folder in studio's cache so it is exported again")

        def encode(x):
            parameters = torch.from_numpy(compiled(x.numpy())[port].copy())
            return scale_latents(parameters[:, : parameters.shape[1] // 2], config)

        return encode

    def _compile(self, ov_pipe, sig: Signature, model_sha256: str) -> dict:
        """Reshape copies of the UNet and VAE decoder (and for an input image the VAE encoder) to ``sig`` and
        compile them."""
        unet = ov_pipe.unet.model.clone()
        h, w = sig.height // ov_pipe.vae_scale_factor, sig.width // ov_pipe.vae_scale_factor
        shapes = {}
        for port in unet.inputs:
            name, shape = port.get_any_name(), port.get_partial_shape()
            if name == "sample":
                shapes[port] = [sig.batch, shape[1].get_length(), h, w]
            elif name == "timestep":
                shapes[port] = [1] if shape.rank.get_length() == 1 else []
            elif name == "encoder_hidden_states":
                shapes[port] = [sig.batch, 77 * sig.chunks, shape[2].get_length()]
            else:  # SDXL's text_embeds / time_ids: batch first, the rest as exported
                shapes[port] = [sig.batch, *[d.get_length() for d in list(shape)[1:]]]
        unet.reshape(shapes)
        models = {"UNet": unet, "VAE": self._vae_model(ov_pipe, sig.width, sig.height)}
        if sig.image_input:
            encoder = ov_pipe.vae_encoder.model.clone()
            port = encoder.inputs[0]
            encoder.reshape({port: [1, port.get_partial_shape()[1].get_length(), sig.height, sig.width]})
            models["VAE encoder"] = encoder
        compiled, notes = self._compile_models(models, sig.device, sig.mode, model_sha256)
        return {"unet": compiled["UNet"], "vae_decoder": compiled["VAE"],
                "vae_encoder": compiled.get("VAE encoder"), "notes": notes,
                "from_cache": all(_loaded_from_cache(c) for c in compiled.values()),
                "precision": _precision_name(compiled["UNet"].get_property("INFERENCE_PRECISION_HINT"))}

    @staticmethod
    def _vae_model(ov_pipe, width: int, height: int):
        vae = ov_pipe.vae_decoder.model.clone()
        port = vae.input("latent_sample")
        scale = ov_pipe.vae_scale_factor
        vae.reshape({port: [1, port.get_partial_shape()[1].get_length(), height // scale, width // scale]})
        return vae

    def _guard_vae(self, loaded: Loaded, pipe, plan: Plan, compiled: dict, hooks: RunHooks) -> list[str]:
        """Make the pipeline's VAE decode fall back to an fp32 (accuracy-mode) decoder when a performance-mode
        decode gives NaN/inf or a flat image, as the torch backend's VAE guard does; returns a list that
        receives a note each time the fallback ran."""
        vae, upcasts = pipe.vae, []
        decode = type(vae).decode.__get__(vae)
        if plan.backend.mode == "accuracy":  # already fp32: nothing wider to fall back to
            vae.decode = decode
            return upcasts

        def decode_guarded(*args, **kwargs):
            out = decode(*args, **kwargs)
            if not precision.collapsed(out[0]):
                return out
            key = (plan.backend.device, plan.width, plan.height)
            if key not in loaded.fp32_vae:
                hooks.stage(f"compiling the VAE decoder in fp32 for {plan.width}×{plan.height} (the performance-mode "
                            "decode gave NaN or a flat image)")
                models, _ = self._compile_models({"VAE": self._vae_model(loaded.ov_pipe, plan.width, plan.height)},
                                                 plan.backend.device, "accuracy", loaded.compile_key)
                loaded.fp32_vae[key] = models["VAE"]
            decoder = pipe.vae_decoder
            decoder.request = loaded.fp32_vae[key]
            try:
                out = decode(*args, **kwargs)
            finally:
                decoder.request = compiled["vae_decoder"]
            upcasts.append(f"vae_upcast: the VAE decode in performance mode ({compiled['precision']}) gave NaN or a "
                           "flat image; decoded again in fp32 (accuracy mode)")
            return out

        vae.decode = decode_guarded
        return upcasts

    def _text_side(self, loaded: Loaded, plan: Plan, hooks: RunHooks) -> tuple[TextSide, list[str]]:
        """The text encoders this plan asks for, compiled on first use per device and mode."""
        if plan.backend.text_encoder != "openvino":
            return loaded.text, []
        key = (plan.backend.device, plan.backend.mode)
        if key in loaded.ov_text:
            return loaded.ov_text[key], []
        two = getattr(loaded.ov_pipe, "text_encoder_2", None) is not None
        hooks.stage(f"compiling the text encoder{'s' * two} for 77-token chunks "
                    f"({plan.backend.mode} mode on {plan.backend.device})")
        start = time.perf_counter()
        side = TextSide(tokenizer=loaded.text.tokenizer, text_encoder=None, config=loaded.text.config)
        models = {}
        for attr in ("text_encoder", "text_encoder_2"):
            exported = getattr(loaded.ov_pipe, attr, None)
            if exported is None:
                continue
            model = exported.model.clone()
            model.reshape({model.inputs[0]: [1, 77]})
            models[attr] = model
        compiled, notes = self._compile_models(models, plan.backend.device, plan.backend.mode, loaded.compile_key)
        for attr, model in compiled.items():
            setattr(side, attr, OVTextEncoder(model))
        if hasattr(loaded.text, "tokenizer_2"):
            side.tokenizer_2 = loaded.text.tokenizer_2
        loaded.ov_text[key] = side
        hooks.check()
        return side, notes + [f"openvino: text encoder compiled in {time.perf_counter() - start:.1f} s"]

    # -- run -----------------------------------------------------------------------------------------
    @staticmethod
    def compile_stage(sig: Signature) -> str:
        """The stage's name for the user: what is compiled, for what size and prompt length, how."""
        chunks = f"{sig.chunks} chunk{'s' * (sig.chunks > 1)}"
        parts = "UNet, VAE encoder and decoder" if sig.image_input else "UNet and VAE decoder"
        task = f", {sig.task}" if sig.image_input else ""
        weights = ", int8 weights" if sig.weights == "int8" else ""
        return (f"compiling {parts} for {sig.width}×{sig.height}{task}, {chunks} "
                f"({sig.mode} mode on {sig.device}{weights})")

    def generate(self, plan: Plan, load_pipeline, latents, generators, on_step: Optional[StepCallback] = None,
                 hooks: Optional[RunHooks] = None, inputs=None, loras=None, embeddings=None):
        hooks = as_hooks(on_step, hooks)
        loaded = self._load(plan, load_pipeline, hooks, loras)
        request = plan.request
        method = plan.image.method if plan.image is not None else None
        sig = self.signature(request, plan.model.short_hash, plan.width, plan.height, plan.prompt.chunk_count,
                             plan.backend.device, plan.prompt.own_chunks, method, plan.loras)
        pipe, kind = loaded.ov_pipe, None
        if plan.image is not None:
            pipe, kind = self._task_pipeline(loaded, plan)

        def compile_variant(s: Signature) -> dict:
            hooks.stage(self.compile_stage(s))
            return self._compile(loaded.ov_pipe, s, loaded.compile_key)

        compiled, events = self.manager.activate(sig, compile_variant)
        # A Stop pressed during the compile ends the run now; the variant stays in the LRU (and its blob on
        # disk), so the next run of this signature does not compile again.
        hooks.check()
        pipe.unet.request = compiled["unet"]
        pipe.vae_decoder.request = compiled["vae_decoder"]
        task_kwargs = {}
        if plan.image is not None:
            # diffusers never encodes here (it gets latents), but the part holds this signature's encoder anyway
            pipe.vae_encoder.request = compiled["vae_encoder"]
            task_kwargs = image_kwargs(plan, inputs, kind, self._encoder(compiled["vae_encoder"],
                                                                         pipe.vae_encoder.config))
        compiled_now = any(e["kind"] == "compile" for e in events)
        for event in events:
            if event["kind"] != "evict":
                event["precision"] = compiled["precision"]
            if event["kind"] == "compile":
                event["from_cache"] = compiled["from_cache"]
        p = plan.prompt
        text_side, text_notes = self._text_side(loaded, plan, hooks)
        cond = encode(text_side, p.prompt_final, p.negative, p.chunk_count, request.clip_skip,
                      request.comma_backtrack, embeddings)
        pipe.scheduler = make_scheduler(sampler_spec(plan.sampler), loaded.scheduler_config, generators[0])
        noise_check = watch_noise(pipe.scheduler, latents) if plan.image is not None else None
        upcasts = self._guard_vae(loaded, pipe, plan, compiled, hooks)
        ran = f"{compiled['precision']}, {request.backend.ov_mode} mode on {plan.backend.device}"
        fix = ("use accuracy mode (--ov-mode accuracy: fp32)" if request.backend.ov_mode != "accuracy" else
               "the model's weights or the prompt's weights give values out of range; compare with "
               "--against torch; if only OpenVINO fails, delete openvino/compiled in studio's cache folder")
        notes = [n for n in (loaded.load_note, *text_notes) if n]
        notes += compiled["notes"] if compiled_now else []
        loaded.load_note = None
        # Text to image starts from the drawn noise; an input image's pipeline draws the same noise itself
        # (from generators in the state it was drawn from) and adds it to the encoded image.
        start = task_kwargs or dict(width=plan.width, height=plan.height, latents=latents)
        hooks.sampling()
        try:
            out = pipe(**cond.pipeline_kwargs(), **start, num_inference_steps=request.steps,
                       guidance_scale=request.cfg, num_images_per_prompt=1, generator=generators, output_type="np",
                       callback_on_step_end=guarded_callback(
                           hooks, plan.steps_run,
                           lambda step: non_finite("UNet", f"at step {step} of {plan.steps_run}", ran, fix)))
        except ImageSkipped:
            # What this image compiled stays cached and is still reported; the image itself is dropped.
            return BackendOutput(images=None, compile_events=events, notes=notes, skipped=True)
        if noise_check is not None:
            noise_check()
        notes += upcasts
        compiled_parts = "text encoder, UNet and VAE" if plan.backend.text_encoder == "openvino" else "UNet and VAE"
        int8 = "; the UNet's weights int8" if plan.backend.weights == "int8" else ""
        notes.append(f"openvino: {compiled_parts} ran in {compiled['precision']} "
                     f"({request.backend.ov_mode} mode on {plan.backend.device}{int8})")
        return BackendOutput(images=out.images, compile_events=events, notes=notes)

    def unload(self, keep_model: Optional[str] = None) -> bool:
        """Release the loaded model and the compiled variants, but those of ``keep_model`` (a short hash: the model
        another backend is about to run, whose variants stay the compile cache); whether anything was held."""
        held = self._loaded is not None
        self._loaded = None
        return bool(self.manager.drop(keep_model=keep_model, why="released when another model was loaded")) or held

    # -- the compile cache panel -----------------------------------------------------------------------
    def compile_cache_info(self) -> dict:
        """The in-memory variants (oldest first), the one in use, the size, the last compile; read only."""
        info = self.manager.info()
        loaded = self._loaded[1] if self._loaded is not None else None
        info["text_encoders"] = [f"{device}:{mode}" for device, mode in (loaded.ov_text if loaded else {})]
        info["blob_cache"] = str(self.blobs.root)
        return info

    def drop_compile_cache(self, disk: bool = False) -> dict:
        """Release every compiled model this backend holds: the LRU's variants, the compiled text encoders and
        fp32 VAE fallbacks, and the pipeline's references to them (so the memory is freed). The exported IR
        stays. With ``disk``, the compiled-blob cache on disk is removed too; without it a later compile of a
        dropped signature is still a compile (and is said so) but reads its blob back instead of compiling
        from scratch. The engine calls this only between runs."""
        dropped = self.manager.drop()
        texts = []
        if self._loaded is not None:
            loaded = self._loaded[1]
            texts = [f"{device}:{mode}" for device, mode in loaded.ov_text]
            loaded.ov_text.clear()
            loaded.fp32_vae.clear()
            for pipe in (loaded.ov_pipe, *loaded.task_pipes.values()):
                for part in (pipe.unet, pipe.vae_decoder, pipe.vae_encoder):
                    if part is not None:
                        part.request = None  # the next run sets the variant it activates
        removed_disk = False
        if disk and self.blobs.root.is_dir():
            shutil.rmtree(self.blobs.root, ignore_errors=True)
            self.blobs = BlobCache(self.blobs.root)  # forget the blobs this process had checked
            removed_disk = True
        return {"dropped": dropped, "text_encoders": texts, "disk": removed_disk}
