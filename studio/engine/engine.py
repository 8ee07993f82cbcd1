"""The engine: turns requests into Plans and Plans into images. It owns the backends."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from studio import __version__
from studio.backends.base import Backend, StepCallback
from studio.engine import determinism, noise
from studio.engine.plan import AppliedStyle, ModelInfo, NoisePlan, Plan, PromptPlan
from studio.engine.samplers import sampler_spec, split_alias
from studio.errors import StudioError
from studio.models.registry import ModelRegistry, ModelSource, architecture, short_hash
from studio.models.tokenizer import clip_tokenizer
from studio.prompts.chunking import MAX_PROMPT_CHARS, check_length, count_tokens
from studio.repro import risks
from studio.settings import AppConfig, GenerationRequest
from studio.styles import StyleLibrary, apply_styles, load_library


@dataclass
class Result:
    plan: Plan
    images: Any  # numpy float32 N×H×W×3 in 0..1, before 8-bit quantisation
    fingerprints: list[str]
    timings: dict
    compile_events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened that the plan did not say (e.g. a VAE upcast)

    def pil_images(self):
        from PIL import Image

        return [Image.fromarray((img * 255).round().clip(0, 255).astype(np.uint8)) for img in self.images]


class Stopped(StudioError):
    """The user pressed Stop."""


def _stoppable(on_step: Optional[StepCallback], stop: threading.Event) -> StepCallback:
    def callback(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        if stop.is_set() and done < total:
            raise Stopped(f"stopped after step {done} of {total}; nothing was saved")

    return callback


class Engine:
    def __init__(self, config: AppConfig):
        self.config = config
        self.registry = ModelRegistry(config.models_dir, config.cache_dir, config.allow_unsafe_pickle)
        self._backends: dict[str, Backend] = {}
        self._expanders: dict[str, Any] = {}  # causal-LM expanders by folder, loaded once
        # Read once here, so planning stays pure; a broken folder file is a line in .problems, not a failure.
        self.styles: StyleLibrary = load_library(config.styles_dir)
        # One run at a time: backends keep mutable state (the pipeline's scheduler, cached conditioning,
        # compiled variants) that two runs side by side would tear, and determinism flags are process-wide.
        # Plans need no lock: planning only reads.
        self._run_lock = threading.Lock()

    # -- parts -------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            if name == "torch":
                from studio.backends.torch_backend import TorchBackend

                self._backends[name] = TorchBackend()
            elif name == "openvino":
                from studio.backends.openvino_backend import OpenVINOBackend

                self._backends[name] = OpenVINOBackend(self.config.cache_dir)
            else:
                raise StudioError(f"unknown backend {name!r}; use torch or openvino")
        return self._backends[name]

    def tokenizer(self):
        return clip_tokenizer(str(self.config.cache_dir))

    def _model_info(self, source: ModelSource) -> ModelInfo:
        sha = self.registry.sha256(source)
        return ModelInfo(name=source.name, kind=source.kind, family=source.family, sha256=sha,
                         short_hash=short_hash(sha), untrained=source.untrained)

    # -- request → plan ------------------------------------------------------------------------
    def plan(self, request: GenerationRequest) -> Plan:
        """Resolve everything that decides the pixels; raises StudioError before anything runs."""
        # 1. model and backend: both fail early and clearly
        source = self.registry.resolve(request.model)
        model = self._model_info(source)
        backend = self.backend(request.backend.name)
        resolved = backend.resolve(request, source.family)
        # 2. seeds: one per image
        if request.seed is None:
            # Drawn once and written into the plan's request, so replaying the plan repeats it.
            request = request.model_copy(update={"seed": noise.draw_seed()})
        seeds = noise.image_seeds(request.seed, request.batch)
        # 3. size and latent layout
        arch = architecture(source, self.config.cache_dir)
        width = request.width or arch["default_size"]
        height = request.height or arch["default_size"]
        if width % arch["vae_scale"] or height % arch["vae_scale"]:
            raise StudioError(f"width and height must be multiples of {arch['vae_scale']} for this model")
        latent_shape = [arch["latent_channels"], height // arch["vae_scale"], width // arch["vae_scale"]]
        _, device_alias = split_alias(request.sampler)
        noise_source = "device" if device_alias else request.noise_source
        generator_device = "cpu" if noise_source == "cpu" else backend.generator_device(resolved)
        # 4. prompt: expansion is seeded by each image's seed
        prompt = self._prompt_plan(request, seeds)
        if prompt.expansion is not None:
            # Written into the plan's request, so a replay of this plan uses the texts verbatim.
            texts = prompt.per_image if prompt.per_image is not None else prompt.prompt_final
            request = request.model_copy(update={"expanded_prompt": texts})
        # 5. compile prediction and risks
        compile_plan = backend.predict_compile(request, model.short_hash, width, height, prompt.chunk_count,
                                               prompt.own_chunks)
        spec = sampler_spec(request.sampler)
        noise_plan = NoisePlan(source=noise_source, generator_device=generator_device, latent_shape=latent_shape,
                               from_sampler_alias=device_alias)
        return Plan(
            studio_version=__version__, request=request, seeds=seeds, width=width, height=height,
            sampler=spec.name, scheduler=spec.scheduler, stochastic_sampler=spec.stochastic,
            noise=noise_plan,
            model=model, backend=resolved, prompt=prompt, determinism=determinism.settings(request.deterministic),
            risks=risks.assess(request, resolved, model, prompt, noise_plan), compile=compile_plan,
        )

    def reload_styles(self) -> StyleLibrary:
        """Read the styles again (after the folder's files changed)."""
        self.styles = load_library(self.config.styles_dir)
        return self.styles

    def _expand(self, request: GenerationRequest, seeds: list[int], text: str) -> tuple[list[str], Optional[dict]]:
        """The text each image encodes: ``text`` (the styled prompt) as written, expanded with the image's
        seed, or replayed."""
        if not request.expansion:
            return [text] * len(seeds), None
        replay = request.expanded_prompt
        if replay is not None:
            texts = list(replay) if isinstance(replay, list) else [replay] * len(seeds)
            return texts, {"expander": request.expander, "seeds": seeds, "added": None, "replayed": True}
        from studio.prompts import expansion

        if request.expander == "wordbank":
            def expand(seed):
                return expansion.wordbank_expand(text, seed, self.tokenizer(), request.expansion_new_chunk)
        else:
            if not request.expansion_model:
                raise StudioError("the causal-lm expander needs a model folder (--expansion-model NAME or DIR)")
            folder = str(self.registry.resolve_expansion(request.expansion_model).resolve())
            if folder not in self._expanders:
                self._expanders[folder] = expansion.CausalLMExpander(
                    folder, allow_unsafe_pickle=self.config.allow_unsafe_pickle)

            def expand(seed):
                return self._expanders[folder].expand(text, seed, self.tokenizer(),
                                                      request.expansion_new_chunk)
        results = [expand(seed) for seed in seeds]
        return [r.text for r in results], {"expander": results[0].expander, "seeds": seeds,
                                           "added": [list(r.added) for r in results], "replayed": False}

    def _prompt_plan(self, request: GenerationRequest, seeds: list[int]) -> PromptPlan:
        tok = self.tokenizer()
        # Styles first: expansion, the token counter, chunking and the compile prediction all see the styled text.
        styles = self.styles.resolve(request.styles)
        styled, negative = apply_styles(request.prompt, request.negative_prompt, styles)
        for what, text in (("prompt", styled), ("negative prompt", negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise StudioError(f"the {what} with its styles is {len(text)} characters; the most is "
                                  f"{MAX_PROMPT_CHARS}: pick fewer styles or shorten it")
        finals, expansion_info = self._expand(request, seeds, styled)
        # Every image is encoded with the same chunk count (the longest text's), so a batch whose
        # expanded texts differ in length still runs on one compiled variant.
        counts = {text: count_tokens(text, tok, request.comma_backtrack) for text in finals}
        for count in counts.values():
            check_length(count, "prompt")
        pos = max(counts.values(), key=lambda c: (c.chunks, c.tokens))
        neg = count_tokens(negative, tok, request.comma_backtrack)
        check_length(neg, "negative prompt")
        padded = int(request.chunk_policy.split(":")[1]) if request.chunk_policy.startswith("pad:") else 1
        return PromptPlan(prompt=request.prompt, prompt_final=finals[0], negative=negative,
                          tokens=pos.tokens, chunks=pos.chunks, negative_tokens=neg.tokens,
                          negative_chunks=neg.chunks, chunk_count=max(pos.chunks, neg.chunks, padded),
                          expansion=expansion_info, per_image=finals if len(set(finals)) > 1 else None,
                          styles=[AppliedStyle(**s.record()) for s in styles],
                          prompt_styled=styled if styles else None)

    def with_current_compile(self, plan: Plan) -> Plan:
        """``plan`` with its compile prediction made again now (jobs run since it was planned change it)."""
        backend = self.backend(plan.backend.name)
        prediction = backend.predict_compile(plan.request, plan.model.short_hash, plan.width, plan.height,
                                             plan.prompt.chunk_count, plan.prompt.own_chunks)
        return plan.model_copy(update={"compile": prediction})

    def preview_fingerprints(self, plan: Plan) -> list[str]:
        """The initial-noise fingerprints a run of ``plan`` will have (noise is cheap to draw; nothing else runs)."""
        generators = noise.make_generators(plan.seeds, plan.noise.generator_device)
        return noise.image_fingerprints(noise.initial_latents(generators, tuple(plan.noise.latent_shape), "cpu"))

    def next_request(self, request: GenerationRequest, plan: Plan) -> GenerationRequest:
        """The request for the run after ``plan``, as the seed mode says (fixed / increment / random)."""
        if request.seed_mode == "increment":
            return request.model_copy(update={"seed": (plan.seeds[-1] + 1) % 2**32})
        if request.seed_mode == "fixed":
            return request.model_copy(update={"seed": plan.request.seed})
        return request.model_copy(update={"seed": None})  # random: drawn anew by the next plan

    # -- plan → images ---------------------------------------------------------------------------
    def run(self, plan: Plan, on_step: Optional[StepCallback] = None,
            stop: Optional[threading.Event] = None) -> Result:
        """The images of ``plan``; a run waits for the one before it, so no two share a pipeline.

        Setting ``stop`` ends the run after the step in progress with ``Stopped``; nothing is returned
        to save, and the next run starts from nothing the stopped one left (each run sets up its scheduler
        and draws its noise afresh).
        """
        if stop is not None:
            on_step = _stoppable(on_step, stop)
        with self._run_lock:
            if stop is not None and stop.is_set():
                raise Stopped("stopped before the run began; nothing was saved")
            return self._run(plan, on_step)

    def _run(self, plan: Plan, on_step: Optional[StepCallback]) -> Result:
        start = time.perf_counter()
        generators = noise.make_generators(plan.seeds, plan.noise.generator_device)
        # on the generators' device; the pipeline moves them to where it runs
        latents = noise.initial_latents(generators, tuple(plan.noise.latent_shape), plan.noise.generator_device)
        fingerprints = noise.image_fingerprints(latents)
        backend = self.backend(plan.backend.name)
        load_s = 0.0

        def load():
            nonlocal load_s
            t = time.perf_counter()
            # A fresh CPU fp32 copy each time a backend asks: backends cache what they prepared
            # (moved, cast, compiled), and a cast must never leak into another precision's run.
            pipe = self.registry.load(self.registry.resolve(plan.request.model))
            load_s = time.perf_counter() - t
            return pipe

        # Images run one at a time: batched matmuls round differently from single ones (~1e-6 on
        # CPU BLAS), which would make image i of a batch differ from the same seed run alone.
        outputs = []
        steps = plan.request.steps
        for i, generator in enumerate(generators):
            step_cb = None if on_step is None else (lambda s, _n, i=i: on_step(i * steps + s, steps * len(generators)))
            outputs.append(backend.generate(plan.for_image(i), load, latents[i : i + 1], [generator], step_cb))
        images = np.concatenate([o.images for o in outputs])
        if not np.isfinite(images).all():  # the last line of defence: backends stop earlier, naming the step
            bad = next(i for i, o in enumerate(outputs) if not np.isfinite(o.images).all())
            vae = plan.backend.precision.get("vae")
            fix = ("run the VAE in fp32 (--dtype vae=fp32, or OpenVINO accuracy mode)" if vae != "fp32" else
                   "the VAE's weights give values out of range: check the model file (or its VAE)")
            raise StudioError(f"image {bad + 1} of the batch (seed {plan.seeds[bad]}) decoded to NaN/inf values "
                              f"({plan.backend.name}, VAE in {vae}); nothing was saved: {fix}")
        compile_events = outputs[0].compile_events  # later images reuse the first one's signature
        notes = list(dict.fromkeys(n for o in outputs for n in o.notes))
        total = time.perf_counter() - start
        compile_s = sum(e.get("seconds", 0.0) for e in compile_events if e.get("kind") == "compile")
        timings = {
            "total_s": round(total, 4),
            "load_s": round(load_s, 4),
            "compile_s": round(compile_s, 4),
            "steps_per_s": round(steps * len(generators) / max(total - compile_s - load_s, 1e-9), 4),
        }
        return Result(plan=plan, images=images, fingerprints=fingerprints, timings=timings,
                      compile_events=compile_events, notes=notes)
