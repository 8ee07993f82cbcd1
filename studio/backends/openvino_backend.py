"""OpenVINO through optimum-intel: export once to IR (cached on disk), compile static shapes per signature.

The IR is cached by model sha256 + openvino and optimum-intel versions, so a second start does no
export. UNet and VAE decoder are reshaped to a signature and compiled (CompileManager keeps them in
an LRU); switching between cached signatures only swaps compiled models. The text encoders run in
PyTorch on the CPU (SD.Next's default), with the same chunked encoding as the torch backend.
Modes: performance (EXECUTION_MODE_HINT=PERFORMANCE: the device's fastest precision, bf16 on CPUs
with avx512_bf16/AMX) or accuracy (EXECUTION_MODE_HINT=ACCURACY, INFERENCE_PRECISION_HINT=f32).
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from studio.backends.base import BackendOutput, StepCallback, pipeline_callback
from studio.backends.compile_manager import CompileManager, Signature
from studio.engine import precision
from studio.engine.plan import Plan, ResolvedBackend
from studio.engine.samplers import make_scheduler, sampler_spec
from studio.errors import StudioError
from studio.fsutil import atomic_dir
from studio.prompts.encode import encode
from studio.settings import GenerationRequest

def _precision_name(ov_type) -> str:
    text = str(ov_type).lower()
    for key, name in (("bf16", "bf16"), ("bfloat16", "bf16"), ("f16", "fp16"), ("float16", "fp16"),
                      ("f32", "fp32"), ("float32", "fp32")):
        if key in text:
            return name
    return text


@dataclass
class TextSide:
    """The PyTorch text encoders and tokenizers of a model: all `prompts.encode` needs."""
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


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.manager = CompileManager()
        self._core = None
        self._loaded: Optional[tuple[tuple, Loaded]] = None  # one model at a time

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

    def _ov_config(self, mode: str) -> dict:
        config = {"CACHE_DIR": str(self.cache_dir / "openvino" / "blobs")}
        if mode == "accuracy":
            config.update({"EXECUTION_MODE_HINT": "ACCURACY", "INFERENCE_PRECISION_HINT": "f32"})
        else:
            config["EXECUTION_MODE_HINT"] = "PERFORMANCE"
        return config

    def resolve(self, request: GenerationRequest) -> ResolvedBackend:
        device = self._device(request.backend.device)
        mode = request.backend.ov_mode
        asked = request.precision
        if asked.unet != "fp32" or asked.vae != "fp32":
            raise StudioError("with OpenVINO the UNet and VAE precision follow the mode: use --ov-mode performance "
                              "for the device's fast precision, or accuracy for fp32 (leave --dtype unet/vae at fp32)")
        if asked.text == "fp16":
            raise StudioError("the OpenVINO backend runs the text encoder in PyTorch on the CPU: fp16 is not "
                              "supported there; use fp32 or bf16")
        compiled = "fp32" if mode == "accuracy" else _precision_name(
            self.core.get_property(device, "INFERENCE_PRECISION_HINT"))
        return ResolvedBackend(name=self.name, device=device, mode=mode,
                               precision={"text": asked.text, "unet": compiled, "vae": compiled})

    def generator_device(self, resolved: ResolvedBackend) -> str:
        return "cpu"  # torch generators cannot live on an OpenVINO device; noise is drawn on the CPU

    # -- signatures --------------------------------------------------------------------------------
    @staticmethod
    def signature(request: GenerationRequest, width: int, height: int, chunks: int, device: str) -> Signature:
        cfg_batch = 2 if request.cfg > 1 else 1  # diffusers runs CFG as one batch of (negative, positive)
        return Signature(device=device, mode=request.backend.ov_mode, batch=cfg_batch, width=width,
                         height=height, chunks=chunks)

    def predict_compile(self, request, width, height, chunks):
        self.manager.resize(request.lru)
        return self.manager.predict(self.signature(request, width, height, chunks,
                                                   self._device(request.backend.device)))

    # -- export / load -----------------------------------------------------------------------------
    def _ir_dir(self, sha256: str) -> Path:
        import openvino
        from importlib.metadata import version

        tag = f"{sha256[:16]}-ov{openvino.__version__.split('-')[0]}-oi{version('optimum-intel')}"
        return self.cache_dir / "openvino" / "ir" / re.sub(r"[^A-Za-z0-9._-]", "_", tag)

    def _load(self, plan: Plan, load_torch) -> Loaded:
        key = (plan.model.sha256, tuple(sorted(plan.backend.precision.items())))
        if self._loaded is not None and self._loaded[0] == key:
            return self._loaded[1]
        self._loaded = None
        from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline

        cls = OVStableDiffusionXLPipeline if plan.model.family == "sdxl" else OVStableDiffusionPipeline
        torch_pipe = load_torch()
        ir = self._ir_dir(plan.model.sha256)
        if not (ir / "model_index.json").is_file():
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as src, atomic_dir(ir) as out, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's tracer chatter is not the user's business
                torch_pipe.save_pretrained(src, safe_serialization=True)
                cls.from_pretrained(src, export=True, compile=False).save_pretrained(out)
            load_note = f"openvino: exported the model to IR in {time.perf_counter() - start:.1f} s"
        else:
            load_note = "openvino: IR loaded from cache (no export)"
        ov_pipe = cls.from_pretrained(str(ir), compile=False, local_files_only=True,
                                      ov_config=self._ov_config(plan.backend.mode))
        ov_pipe.set_progress_bar_config(disable=True)
        text = TextSide(tokenizer=torch_pipe.tokenizer, text_encoder=torch_pipe.text_encoder,
                        config=dict(torch_pipe.config))
        if plan.model.family == "sdxl":
            text.tokenizer_2, text.text_encoder_2 = torch_pipe.tokenizer_2, torch_pipe.text_encoder_2
        precision.apply(text, plan.backend.precision)
        loaded = Loaded(ov_pipe, text, dict(ov_pipe.scheduler.config), load_note)
        self._loaded = (key, loaded)
        return loaded

    def _compile(self, ov_pipe, sig: Signature) -> dict:
        """Reshape copies of the UNet and VAE decoder to ``sig`` and compile them."""
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
        vae = ov_pipe.vae_decoder.model.clone()
        port = vae.input("latent_sample")
        vae.reshape({port: [1, port.get_partial_shape()[1].get_length(), h, w]})
        config = self._ov_config(sig.mode)
        compiled_unet = self.core.compile_model(unet, sig.device, config)
        compiled_vae = self.core.compile_model(vae, sig.device, config)
        return {"unet": compiled_unet, "vae_decoder": compiled_vae,
                "precision": _precision_name(compiled_unet.get_property("INFERENCE_PRECISION_HINT"))}

    # -- run -----------------------------------------------------------------------------------------
    def generate(self, plan: Plan, load_pipeline, latents, generators, on_step: Optional[StepCallback] = None):
        loaded = self._load(plan, load_pipeline)
        request = plan.request
        self.manager.resize(request.lru)
        sig = self.signature(request, plan.width, plan.height, plan.prompt.chunk_count, plan.backend.device)
        compiled, events = self.manager.activate(sig, lambda s: self._compile(loaded.ov_pipe, s))
        loaded.ov_pipe.unet.request = compiled["unet"]
        loaded.ov_pipe.vae_decoder.request = compiled["vae_decoder"]
        for event in events:
            if event["kind"] != "evict":
                event["precision"] = compiled["precision"]
        p = plan.prompt
        cond = encode(loaded.text, p.prompt_final, p.negative, p.chunk_count, request.clip_skip,
                      request.comma_backtrack)
        pipe = loaded.ov_pipe
        pipe.scheduler = make_scheduler(sampler_spec(plan.sampler), loaded.scheduler_config, generators[0])
        out = pipe(**cond.pipeline_kwargs(), num_inference_steps=request.steps, guidance_scale=request.cfg,
                   width=plan.width, height=plan.height, num_images_per_prompt=1, latents=latents,
                   generator=generators, output_type="np",
                   callback_on_step_end=pipeline_callback(on_step, request.steps))
        notes = [loaded.load_note] if loaded.load_note else []
        loaded.load_note = None
        notes.append(f"openvino: UNet and VAE ran in {compiled['precision']} "
                     f"({request.backend.ov_mode} mode on {plan.backend.device})")
        return BackendOutput(images=out.images, compile_events=events, notes=notes)
