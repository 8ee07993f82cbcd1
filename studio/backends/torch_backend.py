"""Eager PyTorch on CPU or CUDA, through the diffusers pipeline."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

from studio.adapters.loras import apply_to_pipeline
from studio.backends.base import (BackendOutput, ImageSkipped, RunHooks, StepCallback, as_hooks, guarded_callback,
                                  non_finite)
from studio.backends.blob_cache import BlobCache
from studio.backends.compile_manager import CompileManager, Signature, make_signature
from studio.backends.image_inputs import encode_image, image_kwargs, watch_noise
from studio.engine import determinism, precision
from studio.engine.image_modes import METHODS
from studio.plan import Plan, ResolvedBackend
from studio.samplers import make_scheduler, sampler_spec
from studio.errors import StudioError
from studio.prompts.encode import encode
from studio.runtime import release_memory
from studio.settings import GenerationRequest


def available_devices() -> list[str]:
    from studio.backends.devices import torch_devices

    return list(torch_devices()) or ["cpu"]


def resolve_device(asked: str) -> str:
    """A torch device name that exists here, or a StudioError naming those that do."""
    import torch

    name = {"CPU": "cpu", "GPU": "cuda"}.get(asked, asked).lower()
    devices = available_devices()
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise StudioError(f"device {asked!r} was asked for but torch sees no GPU here; devices: {', '.join(devices)}")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise StudioError(f"device {asked!r} does not exist; devices: {', '.join(devices)}")
        return f"cuda:{index}"
    raise StudioError(f"unknown torch device {asked!r}; devices: {', '.join(devices)}")


class TorchBackend:
    name = "torch"

    def __init__(self, cache_dir: Optional[Path] = None, compile_cache_size: int = 3, max_pipelines: int = 1):
        self._pipelines: OrderedDict[tuple, Any] = OrderedDict()
        self._mode_pipes: dict[tuple, Any] = {}  # (pipeline key, task) → the task's pipeline on the same modules
        self._max = max_pipelines
        self._last_conditioning: tuple | None = None
        # --compile torch: the signatures compiled (torch_compile.py), and inductor's code on disk per key
        self.manager = CompileManager(compile_cache_size, evict_all=True)
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "studio-torch-compile"
        self.blobs = BlobCache(root / "torch" / "compiled", label="torch.compile")
        self._compiled: dict[tuple, Any] = {}  # pipeline key → CompiledParts

    def resolve(self, request: GenerationRequest, family: str) -> ResolvedBackend:
        if request.backend.text_encoder != "torch":
            raise StudioError("the text encoder runs with OpenVINO only on the openvino backend; "
                              "use --backend openvino, or --text-encoder torch")
        if request.backend.ov_weights != "full":
            raise StudioError("int8 weights are OpenVINO's (--backend openvino --ov-weights int8); on torch leave "
                              "--ov-weights at full")
        device = resolve_device(request.backend.device)
        dtypes = request.precision.model_dump()
        if device == "cpu":
            half = [c for c, d in dtypes.items() if d == "fp16"]
            if half:
                raise StudioError(
                    f"fp16 is not supported on CPU ({', '.join(half)}); use fp32 or bf16 on CPU, or a CUDA device"
                )
        compiled = request.backend.compile == "torch"
        if compiled and request.deterministic and device.startswith("cuda"):
            raise StudioError("--compile torch with --deterministic on CUDA: inductor's GPU kernels are not bound by "
                              "deterministic mode; run eager (--compile none) for a deterministic CUDA run")
        return ResolvedBackend(name=self.name, device=device, mode="inductor" if compiled else None, precision=dtypes)

    def generator_device(self, resolved: ResolvedBackend) -> str:
        return resolved.device

    @staticmethod
    def signature(request: GenerationRequest, model: str, width: int, height: int, chunks: int, device: str,
                  prompt_chunks: Optional[int] = None, image_method: Optional[str] = None, loras=None) -> Signature:
        cfg_batch = 2 if request.cfg > 1 else 1
        return make_signature(f"inductor-{request.precision.unet}", cfg_batch, width, height, chunks, model, device,
                              prompt_chunks, image_method, loras)

    def predict_compile(self, request, model, width, height, chunks, prompt_chunks=None, image_method=None,
                        loras=None):
        if request.backend.compile != "torch":
            return None  # eager: nothing is compiled (LoRAs are PEFT adapters on the cached pipeline)
        return self.manager.predict(self.signature(request, model, width, height, chunks,
                                                   resolve_device(request.backend.device), prompt_chunks,
                                                   image_method, loras))

    @staticmethod
    def _key(plan: Plan) -> tuple:
        return plan.model.sha256, plan.backend.device, tuple(sorted(plan.backend.precision.items()))

    def _pipeline(self, plan: Plan, load: Callable[[], Any]):
        key = self._key(plan)
        if key in self._pipelines:
            self._pipelines.move_to_end(key)
            return self._pipelines[key]
        if len(self._pipelines) >= self._max:
            while len(self._pipelines) >= self._max:
                # Drop the old one before loading the next, keeping no name for it (a local would hold it alive).
                old = next(iter(self._pipelines))
                del self._pipelines[old]
                self._forget(old)
            release_memory()  # before the next one loads, not at some later collection
        pipe = load()
        # Every run builds its scheduler from the model's own config, never from the last sampler's.
        pipe._studio_scheduler_config = dict(pipe.scheduler.config)
        pipe.to(plan.backend.device)
        precision.apply(pipe, plan.backend.precision)
        self._pipelines[key] = pipe
        return pipe

    def _forget(self, key: tuple) -> None:
        """Drop what was made of a pipeline that is no longer held: its task pipelines, conditioning and compiles."""
        self._mode_pipes.clear()
        self._last_conditioning = None
        if self._compiled.pop(key, None) is not None:
            self.drop_compile_cache()

    def unload(self, keep_model: Optional[str] = None) -> bool:
        """Release every model this backend holds, with what was compiled of it (the engine calls it before another
        backend loads one; ``keep_model`` is for backends whose compiled variants outlive their model); whether
        anything was held."""
        held = bool(self._pipelines)
        for key in list(self._pipelines):
            del self._pipelines[key]
            self._forget(key)
        return held

    def _activate_compiled(self, plan: Plan, pipe, warm_up, hooks: RunHooks) -> tuple[Any, list[dict], list[str]]:
        """The compiled parts with ``plan``'s signature compiled (by ``warm_up``, a one-step run through them),
        the compile events and notes."""
        from studio.backends import torch_compile

        key = self._key(plan)
        if key not in self._compiled:
            self._compiled[key] = torch_compile.CompiledParts(pipe)
        parts = self._compiled[key]
        sig = self.signature(plan.request, plan.model.short_hash, plan.width, plan.height, plan.prompt.chunk_count,
                             plan.backend.device, plan.prompt.own_chunks,
                             plan.image.method if plan.image is not None else None, plan.loras)
        if self.manager.predict(sig).evicts:
            torch_compile.reset()  # what the LRU evicts: dynamo frees graphs only all together
        notes: list[str] = []

        def compile_variant(s: Signature) -> dict:
            hooks.stage(f"compiling UNet and VAE decoder with torch.compile (inductor) for {s.width}×{s.height}, "
                        f"{s.chunks} chunk{'s' * (s.chunks > 1)} ({plan.backend.precision['unet']} on {s.device})")
            with parts.swapped_in(pipe):
                made = torch_compile.compile_variant(self.blobs, s, plan.model.sha256, plan.backend.precision,
                                                     warm_up)
            notes.extend(made["notes"])
            return made

        made, events = self.manager.activate(sig, compile_variant)
        for event in events:
            if event["kind"] == "compile":
                event["from_cache"] = made["from_cache"]
        hooks.check()
        return parts, events, notes

    def _conditioning(self, pipe, plan: Plan, embeddings=None):
        """The encoded prompt pair, reused across the images of a batch."""
        p = plan.prompt
        loras = tuple((lora.sha256, lora.weight) for lora in plan.loras)  # a LoRA may change the text encoder
        # The same words encode otherwise when an embedding's file (its hash) or its word changes.
        used = tuple(sorted({(e.name, e.sha256) for e in p.embeddings}))
        key = (self._key(plan), loras, used, p.prompt_final, p.negative, p.chunk_count, plan.request.clip_skip,
               plan.request.comma_backtrack)
        if self._last_conditioning is None or self._last_conditioning[0] != key:
            cond = encode(pipe, p.prompt_final, p.negative, p.chunk_count, plan.request.clip_skip,
                          plan.request.comma_backtrack, embeddings)
            self._last_conditioning = (key, cond)
        return self._last_conditioning[1]

    @staticmethod
    def _unet_failed(plan: Plan):
        dtype = plan.backend.precision["unet"]
        fix = (f"run the UNet in fp32 (--dtype unet=fp32); {dtype} overflowed" if dtype != "fp32" else
               "the model's weights or the prompt's weights give values out of range; check the model file "
               "(studio verify --twice) and lower large prompt weights")

        def message(step: int) -> str:
            return non_finite("UNet", f"at step {step} of {plan.steps_run}",
                              f"{dtype} on {plan.backend.device}", fix)

        return message

    def _task_pipeline(self, plan: Plan, pipe):
        """The image-to-image or inpaint pipeline of ``pipe``'s modules (diffusers' own, made once)."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        task = "img2img" if plan.image.method == METHODS["img2img"] else "inpaint"
        key = (self._key(plan), task)
        if key not in self._mode_pipes:
            auto = AutoPipelineForImage2Image if task == "img2img" else AutoPipelineForInpainting
            made = auto.from_pipe(pipe)
            made._studio_scheduler_config = pipe._studio_scheduler_config
            self._mode_pipes[key] = made
        return self._mode_pipes[key], task

    def generate(self, plan: Plan, load_pipeline, latents, generators, on_step: Optional[StepCallback] = None,
                 hooks: Optional[RunHooks] = None, inputs=None, loras=None, embeddings=None):
        """``embeddings``: the plan's textual-inversion vectors by name (Engine loads them)."""
        import sys

        hooks = as_hooks(on_step, hooks)
        pipe = self._pipeline(plan, load_pipeline)
        # Always: a run without LoRAs takes off those an earlier run left on the cached pipeline. The plan
        # refused pickles unless they were allowed, so its paths load as they are.
        apply_to_pipeline(pipe, plan.loras, loras or {}, allow_unsafe_pickle=True)
        task_kwargs = {}
        if plan.image is not None:
            pipe, task = self._task_pipeline(plan, pipe)
            task_kwargs = image_kwargs(plan, inputs, task, lambda x: encode_image(pipe.vae, x))
        hooks.check()  # a Stop pressed while the model loaded ends the run here
        request = plan.request
        determinism.apply(request.deterministic)
        upcasts_before = getattr(pipe.vae, "_studio_upcasts", 0)
        pipe.scheduler = make_scheduler(sampler_spec(plan.sampler), pipe._studio_scheduler_config, generators[0])
        noise_check = watch_noise(pipe.scheduler, latents) if plan.image is not None else None
        pipe.set_progress_bar_config(disable=not sys.stderr.isatty(), leave=False)
        conditioning = self._conditioning(pipe, plan, embeddings).pipeline_kwargs()
        # Text to image starts from the drawn noise; an input image's pipeline draws the same noise itself
        # (from generators in the state it was drawn from) and adds it to the encoded image.
        start = task_kwargs or dict(width=plan.width, height=plan.height,
                                    latents=latents)  # fp32: the scheduler's arithmetic stays fp32
        parts, events, notes = None, [], []
        if plan.backend.mode == "inductor":
            def warm_up():
                # The run's own call, ended after its first step, then a decode: it compiles what the run calls.
                import torch

                def one_step(*_args):
                    raise _WarmedUp()

                pipe.scheduler = make_scheduler(sampler_spec(plan.sampler), pipe._studio_scheduler_config,
                                                torch.Generator("cpu").manual_seed(0))
                try:
                    pipe(**conditioning, **start, num_inference_steps=request.steps, guidance_scale=request.cfg,
                         num_images_per_prompt=1, generator=[torch.Generator("cpu").manual_seed(0)],
                         output_type="latent", callback_on_step_end=one_step)
                except _WarmedUp:
                    pass
                with torch.no_grad():  # as the pipeline decodes: grad mode is one of the compiled graph's guards
                    pipe.vae.decode(torch.zeros(1, *plan.noise.latent_shape, device=plan.backend.device),
                                    return_dict=False)

            parts, events, notes = self._activate_compiled(plan, pipe, warm_up, hooks)
            pipe.scheduler = make_scheduler(sampler_spec(plan.sampler), pipe._studio_scheduler_config, generators[0])
            if noise_check is not None:
                noise_check = watch_noise(pipe.scheduler, latents)
        hooks.sampling()
        graphs_before = _graphs() if parts is not None else 0
        try:
            with parts.swapped_in(pipe) if parts is not None else nullcontext():
                out = pipe(
                    **conditioning,
                    **start,
                    num_inference_steps=request.steps,
                    guidance_scale=request.cfg,
                    num_images_per_prompt=len(generators),
                    generator=generators,
                    output_type="np",
                    callback_on_step_end=guarded_callback(hooks, plan.steps_run, self._unet_failed(plan)),
                )
        except ImageSkipped:
            # The pipeline holds nothing of the ended run: the next image sets its scheduler and latents afresh.
            return BackendOutput(images=None, compile_events=events, notes=notes, skipped=True)
        if parts is not None and _graphs() > graphs_before:
            notes.append(f"torch.compile: {_graphs() - graphs_before} graph(s) compiled during the steps, which the "
                         "plan did not predict (the run's calls differed from the warm-up); the image is right, "
                         "its steps were slower")
        if noise_check is not None:
            noise_check()
        if getattr(pipe.vae, "_studio_upcasts", 0) > upcasts_before:
            notes.append(f"vae_upcast: the {plan.backend.precision['vae']} VAE decode gave NaN or a flat image; "
                         "decoded again in fp32")
        return BackendOutput(images=out.images, compile_events=events, notes=notes)

    # -- the compile cache panel (--compile torch) -----------------------------------------------------
    def compile_cache_info(self) -> dict:
        info = self.manager.info()
        info["text_encoders"] = []
        info["blob_cache"] = str(self.blobs.root)
        return info

    def resize_compile_cache(self, capacity: int) -> list[dict]:
        """A new LRU size; past it every variant goes (dynamo cannot free one alone, so none is kept half-freed)."""
        if len(self.manager.cached) <= capacity:
            return self.manager.resize(capacity)
        events = [{"kind": "evict", "signature": sig, "reason": f"LRU holds {capacity}", "seconds": 0.0}
                  for sig in self.drop_compile_cache()["dropped"]]
        self.manager.resize(capacity)
        return events

    def drop_compile_cache(self, disk: bool = False) -> dict:
        """Forget every compiled graph (dynamo's cache is process-wide: all go together); with ``disk``, inductor's
        code on disk too. The engine calls this only between runs."""
        import shutil

        dropped = self.manager.drop()
        if dropped or self._compiled:
            from studio.backends import torch_compile

            torch_compile.reset()
        removed = False
        if disk and self.blobs.root.is_dir():
            shutil.rmtree(self.blobs.root, ignore_errors=True)
            self.blobs = BlobCache(self.blobs.root, label="torch.compile")
            removed = True
        return {"dropped": dropped, "text_encoders": [], "disk": removed}


class _WarmedUp(Exception):
    """Ends a compile's warm-up run after its first step."""


def _graphs() -> int:
    from studio.backends import torch_compile

    return torch_compile.graphs()
