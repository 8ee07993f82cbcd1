"""Eager PyTorch on CPU or CUDA, through the diffusers pipeline."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

from studio.adapters.loras import apply_to_pipeline
from studio.backends.base import (BackendOutput, ImageSkipped, RunHooks, StepCallback, as_hooks, guarded_callback,
                                  non_finite)
from studio.backends.image_inputs import encode_image, image_kwargs, watch_noise
from studio.engine import determinism, precision
from studio.engine.image_modes import METHODS
from studio.plan import Plan, ResolvedBackend
from studio.samplers import make_scheduler, sampler_spec
from studio.errors import StudioError
from studio.prompts.encode import encode
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

    def __init__(self, max_pipelines: int = 1):
        self._pipelines: OrderedDict[tuple, Any] = OrderedDict()
        self._mode_pipes: dict[tuple, Any] = {}  # (pipeline key, task) → the task's pipeline on the same modules
        self._max = max_pipelines
        self._last_conditioning: tuple | None = None

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
        return ResolvedBackend(name=self.name, device=device, mode=None, precision=dtypes)

    def generator_device(self, resolved: ResolvedBackend) -> str:
        return resolved.device

    def predict_compile(self, request, model, width, height, chunks, prompt_chunks=None, image_method=None,
                        loras=None):
        return None  # eager: nothing is compiled (LoRAs are PEFT adapters on the cached pipeline)

    @staticmethod
    def _key(plan: Plan) -> tuple:
        return plan.model.sha256, plan.backend.device, tuple(sorted(plan.backend.precision.items()))

    def _pipeline(self, plan: Plan, load: Callable[[], Any]):
        key = self._key(plan)
        if key in self._pipelines:
            self._pipelines.move_to_end(key)
            return self._pipelines[key]
        while len(self._pipelines) >= self._max:
            self._pipelines.popitem(last=False)  # drop the old one before loading the next
            self._mode_pipes.clear()
        pipe = load()
        # Every run builds its scheduler from the model's own config, never from the last sampler's.
        pipe._studio_scheduler_config = dict(pipe.scheduler.config)
        pipe.to(plan.backend.device)
        precision.apply(pipe, plan.backend.precision)
        self._pipelines[key] = pipe
        return pipe

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
        hooks.sampling()
        try:
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
            return BackendOutput(images=None, skipped=True)
        if noise_check is not None:
            noise_check()
        notes = []
        if getattr(pipe.vae, "_studio_upcasts", 0) > upcasts_before:
            notes.append(f"vae_upcast: the {plan.backend.precision['vae']} VAE decode gave NaN or a flat image; "
                         "decoded again in fp32")
        return BackendOutput(images=out.images, notes=notes)
