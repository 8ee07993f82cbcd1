"""The engine: turns requests into Plans and Plans into images. It owns the backends."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from studio import __version__
from studio.adapters import embeddings as ti
from studio.adapters.embeddings import EmbeddingLibrary
from studio.adapters.loras import LoraLibrary
from studio.backends.base import Backend, ImageSkipped, RunHooks, StepCallback
from studio import performance
from studio.engine import determinism, noise
from studio.plan import AppliedStyle, ModelInfo, NoisePlan, Plan, PromptPlan
from studio.samplers import sampler_spec, split_alias
from studio.errors import StudioError
from studio.models.registry import ModelRegistry, ModelSource, architecture, short_hash
from studio.models.tokenizer import clip_tokenizer
from studio.prompts.chunking import MAX_PROMPT_CHARS, check_length, count_tokens
from studio.prompts.extra_networks import take_lora_tags
from studio.repro import risks
from studio.runtime import release_memory
from studio.settings import AppConfig, EmbeddingUse, GenerationRequest, LoraUse
from studio.styles import StyleLibrary, apply_styles, load_library
from studio.engine import image_modes
from studio.image_input import INPUTS_FOLDER, InputStore


@dataclass
class Result:
    plan: Plan
    images: Any  # numpy float32 N×H×W×3 in 0..1, before 8-bit quantisation: the kept images only
    fingerprints: list[str]  # one per kept image
    timings: dict
    compile_events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened that the plan did not say (e.g. a VAE upcast)
    # The plan's image indices the images are of (images[j] is image kept[j] of the batch, with seed
    # plan.seeds[kept[j]]); all of them unless Skip dropped some.
    kept: list[int] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"index", "seed", "after_step"} for each dropped image

    def __post_init__(self):
        if not self.kept and self.images is not None:
            self.kept = list(range(len(self.images)))

    @property
    def seeds(self) -> list[int]:
        """The seed of each kept image."""
        return [self.plan.seeds[i] for i in self.kept]

    def pil_images(self):
        from PIL import Image

        return [Image.fromarray((img * 255).round().clip(0, 255).astype(np.uint8)) for img in self.images]


class Stopped(StudioError):
    """The user pressed Stop."""


class _FirstStepTaken(Stopped):
    """Ends a first-step probe after its step (Stopped, so every backend lets it pass with nothing written)."""


class AllSkipped(Stopped):
    """Skip dropped every image of the batch: there is nothing to save."""


StageCallback = Callable[[str], None]  # a slow stage begins: its name, for the user
PreviewCallback = Callable[[int, int, Any], None]  # (image index in the batch, step done, small PIL image)


def _stoppable(on_step: Optional[StepCallback], stop: threading.Event) -> StepCallback:
    def callback(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        if stop.is_set() and done < total:
            raise Stopped(f"stopped after step {done} of {total}; nothing was saved")

    return callback


# What a Stop pressed during a stage leaves behind, said when the run ends after that stage.
_LEFT_BEHIND = (("exporting", " (the exported IR is complete and stays cached on disk)"),
                ("compiling", " (the compiled variant stays in the compile cache: the next run uses it)"))


class _Stages:
    """Names each slow stage as it begins, and turns a Stop pressed during one into Stopped when it ends."""

    def __init__(self, on_stage: Optional[StageCallback], stop: Optional[threading.Event]):
        self.on_stage, self.stop = on_stage, stop
        self.current: Optional[str] = None
        self.began: list[tuple[str, float]] = []  # (stage, perf_counter when it began), in order

    def timeline(self, end: float) -> list[dict]:
        """Each stage with its seconds (a stage lasts until the next begins; the last until ``end``)."""
        ends = [t for _, t in self.began[1:]] + [end]
        return [{"stage": name, "seconds": round(stop - start, 4)} for (name, start), stop in zip(self.began, ends)]

    def check(self) -> None:
        if self.stop is None or not self.stop.is_set():
            return
        if self.current is None:
            raise Stopped("stopped before the run began; nothing was saved")
        left = next((text for word, text in _LEFT_BEHIND if self.current.startswith(word)), "")
        what = "the last step of " + self.current if self.current.startswith("image ") else self.current
        raise Stopped(f"stopped after {what}{left}; nothing was saved")

    def begin(self, name: str) -> None:
        self.check()
        self.current = name
        self.began.append((name, time.perf_counter()))
        if self.on_stage is not None:
            self.on_stage(name)


def _both(first, second):
    """One latents hook that calls ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def hook(done, latents):
        first(done, latents)
        second(done, latents)

    return hook


class Engine:
    def __init__(self, config: AppConfig):
        self.config = config
        self.registry = ModelRegistry(config.models_dir, config.cache_dir, config.allow_unsafe_pickle)
        self._backends: dict[str, Backend] = {}
        self._expanders: dict[str, Any] = {}  # causal-LM expanders by folder, loaded once
        # Read once here, so planning stays pure; a broken folder file is a line in .problems, not a failure.
        self.styles: StyleLibrary = load_library(config.styles_dir)
        # Input images and masks by pixel hash (image_input.py): requests name them, never point at files.
        self.inputs = InputStore(config.output_dir / INPUTS_FOLDER)
        self.loras = LoraLibrary(config)
        self.embeddings = EmbeddingLibrary(config)
        # One run at a time: backends keep mutable state (the pipeline's scheduler, cached conditioning,
        # compiled variants) that two runs side by side would tear, and determinism flags are process-wide.
        # Plans need no lock: planning only reads.
        self._run_lock = threading.Lock()

    # -- parts -------------------------------------------------------------------------------
    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            if name == "torch":
                from studio.backends.torch_backend import TorchBackend

                self._backends[name] = TorchBackend(self.config.cache_dir, self.config.compile_cache_size)
            elif name == "openvino":
                from studio.backends.openvino_backend import OpenVINOBackend

                self._backends[name] = OpenVINOBackend(self.config.cache_dir, self.config.compile_cache_size)
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
        # 2b. a fast mode decides steps, sampler and CFG (as in Fooocus) before anything reads them
        fast_mode = fast_info = None
        if request.performance is not None:
            fast_mode = performance.FAST_MODES[request.performance]
            request, fast_info = performance.expand(request, fast_mode)
        # 3. size and latent layout
        arch = architecture(source, self.config.cache_dir)
        image_plan = None
        if request.image is not None:
            # The input decides the size: the width and height asked for (the aspect ratio) are not used.
            image_plan, width, height = image_modes.plan_image(request, arch, self.inputs)
        elif arch.get("unet_in_channels", 4) != arch["latent_channels"]:
            raise StudioError(f"{source.name} is an inpainting model ({arch['unet_in_channels']}-channel UNet): "
                              "give it an input image with --mode inpaint or outpaint, or pick another model")
        else:
            width = request.width or arch["default_size"]
            height = request.height or arch["default_size"]
        if width % arch["vae_scale"] or height % arch["vae_scale"]:
            raise StudioError(f"width and height must be multiples of {arch['vae_scale']} for this model")
        latent_shape = [arch["latent_channels"], height // arch["vae_scale"], width // arch["vae_scale"]]
        _, device_alias = split_alias(request.sampler)
        noise_source = "device" if device_alias else request.noise_source
        generator_device = "cpu" if noise_source == "cpu" else backend.generator_device(resolved)
        # 4. prompt: expansion is seeded by each image's seed; <lora:…> tags come out of the text first
        prompt, tags = self._prompt_plan(request, seeds, arch.get("text_widths", []), source.family)
        if prompt.embeddings and resolved.text_encoder == "openvino":
            # The compiled text encoder takes token ids only: no vectors can be put in its input.
            raise StudioError(f"embedding {prompt.embeddings[0].file} needs the PyTorch text encoder; the OpenVINO "
                              "one takes token ids only: use --text-encoder torch")
        uses = [(use, "request") for use in request.loras] + \
            [(LoraUse(name=n, weight=w, sha256=request.lora_hashes.get(n)), "prompt") for n, w in tags]
        if fast_mode is not None:  # applied after the user's LoRAs, as Fooocus adds it
            uses.append((performance.find_speed_lora(fast_mode, source.family, self.loras.files,
                                                     request.performance_lora), "performance"))
        loras = self.loras.resolve(uses, arch["cross_attention_dim"], source.family)
        if fast_mode is not None:
            found = loras[-1]
            # Written into the plan's request: a replay (a preset, an image) finds these bytes by hash.
            request = request.model_copy(update={"performance_lora": LoraUse(name=found.name, sha256=found.sha256)})
            fast_info = {**fast_info, "lora": found.file, "weight": found.weight}
        # Each LoRA's full hash is written into the plan's request, so a preset or an image made from it
        # finds the same bytes on another machine under any name.
        request = request.model_copy(update={
            "loras": [use.model_copy(update={"sha256": lora.sha256}) for use, lora in zip(request.loras, loras)],
            "lora_hashes": {lora.name: lora.sha256 for lora in loras if lora.source == "prompt"},
            # the embeddings too: the prompt's word stays, the hash finds the file
            "embeddings": [EmbeddingUse(name=name, sha256=sha) for name, sha in
                           dict.fromkeys((e.name, e.sha256) for e in prompt.embeddings)]})
        if prompt.expansion is not None:
            # Written into the plan's request, so a replay of this plan uses the texts verbatim.
            texts = prompt.per_image if prompt.per_image is not None else prompt.prompt_final
            request = request.model_copy(update={"expanded_prompt": texts})
        # 5. compile prediction and risks
        compile_plan = backend.predict_compile(request, model.short_hash, width, height, prompt.chunk_count,
                                               prompt.own_chunks, image_plan.method if image_plan else None,
                                               loras=loras)
        spec = sampler_spec(request.sampler)
        noise_plan = NoisePlan(source=noise_source, generator_device=generator_device, latent_shape=latent_shape,
                               from_sampler_alias=device_alias)
        return Plan(
            studio_version=__version__, request=request, seeds=seeds, width=width, height=height,
            sampler=spec.name, scheduler=spec.scheduler, stochastic_sampler=spec.stochastic,
            noise=noise_plan,
            model=model, backend=resolved, prompt=prompt, determinism=determinism.settings(request.deterministic),
            risks=risks.assess(request, resolved, model, prompt, noise_plan), compile=compile_plan, image=image_plan,
            loras=loras, performance=fast_info,
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

    def _prompt_plan(self, request: GenerationRequest, seeds: list[int], text_widths: Optional[list[int]] = None,
                     family: str = "") -> tuple[PromptPlan, list]:
        """The prompt's plan, and the ``<lora:name:weight>`` tags taken out of it. ``text_widths`` (one per text
        encoder) is what the embeddings the texts use must match (none: not checked)."""
        tok = self.tokenizer()
        # Styles first: expansion, the token counter, chunking and the compile prediction all see the styled text.
        styles = self.styles.resolve(request.styles)
        styled, negative = apply_styles(request.prompt, request.negative_prompt, styles)
        for what, text in (("prompt", styled), ("negative prompt", negative)):
            if len(text) > MAX_PROMPT_CHARS:
                raise StudioError(f"the {what} with its styles is {len(text)} characters; the most is "
                                  f"{MAX_PROMPT_CHARS}: pick fewer styles or shorten it")
        styled, tags = take_lora_tags(styled)
        negative, negative_tags = take_lora_tags(negative)
        if negative_tags:
            raise StudioError(f"<lora:{negative_tags[0][0]}:…> is in the negative prompt: a LoRA applies to the "
                              "whole image, so put its tag in the prompt (or pick it in a LoRA slot)")
        finals, expansion_info = self._expand(request, seeds, styled)
        # Embeddings are found in the texts as encoded (after styles and expansion); each use takes its vectors.
        used = self.embeddings.resolve({"prompt": finals, "negative": [negative]}, request.embeddings,
                                       text_widths or [], family)
        vectors = ti.counts(used)
        # Every image is encoded with the same chunk count (the longest text's), so a batch whose
        # expanded texts differ in length still runs on one compiled variant.
        counts = {text: count_tokens(text, tok, request.comma_backtrack, vectors) for text in finals}
        for count in counts.values():
            check_length(count, "prompt")
        pos = max(counts.values(), key=lambda c: (c.chunks, c.tokens))
        neg = count_tokens(negative, tok, request.comma_backtrack, vectors)
        check_length(neg, "negative prompt")
        padded = int(request.chunk_policy.split(":")[1]) if request.chunk_policy.startswith("pad:") else 1
        return PromptPlan(prompt=request.prompt, prompt_final=finals[0], negative=negative,
                          tokens=pos.tokens, chunks=pos.chunks, negative_tokens=neg.tokens,
                          negative_chunks=neg.chunks, chunk_count=max(pos.chunks, neg.chunks, padded),
                          expansion=expansion_info, per_image=finals if len(set(finals)) > 1 else None,
                          styles=[AppliedStyle(**s.record()) for s in styles],
                          prompt_styled=styled if styles else None, embeddings=used), tags

    def with_current_compile(self, plan: Plan) -> Plan:
        """``plan`` with its compile prediction made again now (jobs run since it was planned change it)."""
        backend = self.backend(plan.backend.name)
        prediction = backend.predict_compile(plan.request, plan.model.short_hash, plan.width, plan.height,
                                             plan.prompt.chunk_count, plan.prompt.own_chunks,
                                             plan.image.method if plan.image else None, loras=plan.loras)
        return plan.model_copy(update={"compile": prediction})

    def preview_fingerprints(self, plan: Plan) -> list[str]:
        """The initial-noise fingerprints a run of ``plan`` will have (noise is cheap to draw; nothing else runs)."""
        generators = noise.make_generators(plan.seeds, plan.noise.generator_device)
        return noise.image_fingerprints(noise.initial_latents(generators, tuple(plan.noise.latent_shape), "cpu"),
                                        self._fingerprint_salt(plan))

    @staticmethod
    def _fingerprint_salt(plan: Plan) -> str:
        return image_modes.fingerprint_salt(plan.image) if plan.image is not None else ""

    def next_request(self, request: GenerationRequest, plan: Plan) -> GenerationRequest:
        """The request for the run after ``plan``, as the seed mode says (fixed / increment / random)."""
        if request.seed_mode == "increment":
            return request.model_copy(update={"seed": (plan.seeds[-1] + 1) % 2**32})
        if request.seed_mode == "fixed":
            return request.model_copy(update={"seed": plan.request.seed})
        return request.model_copy(update={"seed": None})  # random: drawn anew by the next plan

    # -- plan → images ---------------------------------------------------------------------------
    def run(self, plan: Plan, on_step: Optional[StepCallback] = None, stop: Optional[threading.Event] = None, *,
            on_stage: Optional[StageCallback] = None, skip: Optional[threading.Event] = None,
            on_preview: Optional[PreviewCallback] = None, preview_every: int = 0,
            on_latents: Optional[Callable[[int, int, object], None]] = None) -> Result:
        """The images of ``plan``; a run waits for the one before it, so no two share a pipeline.

        ``on_step(done, total)`` counts the steps of the whole batch. ``on_stage(name)`` is told each slow stage
        as it begins: "loading the model", "exporting the model to OpenVINO IR", "compiling UNet and VAE
        decoder for 512×512, 2 chunks (accuracy mode on CPU)", "compiling the text encoder …", "image 2 of 4"
        (its steps begin), "decoding".

        Setting ``stop`` ends the run with ``Stopped`` after the step in progress, or, during an export or
        a compile, as soon as that ends (what it made stays cached; the message says so); nothing is
        returned to save, and the next run starts from nothing the stopped one left (each run sets up its
        scheduler and draws its noise afresh).

        Setting ``skip`` ends the image in progress after its current step (or drops it if it is decoding),
        clears ``skip`` and goes on with the next image; the Result holds the images kept (``kept``, their
        seeds and fingerprints) and says which were ``skipped``. Skipping every image raises ``AllSkipped``
        (a ``Stopped``): nothing to save.

        ``on_preview(index, step, image)`` gets a small RGB image of image ``index``'s latents every
        ``preview_every`` steps (0: off), made by a fixed linear map (engine/preview.py). It only reads the
        latents: the images are the same bit for bit with previews on or off.
        ``on_latents(index, step, latents)`` is given image ``index``'s latents (a tensor it must not change)
        after each step; it may raise Stopped to end the run there (the render farm's first-step probe).
        """
        if preview_every < 0:
            raise StudioError("preview_every must be 0 (off) or a number of steps")
        if stop is not None:
            on_step = _stoppable(on_step, stop)
        with self._run_lock:
            if stop is not None and stop.is_set():
                raise Stopped("stopped before the run began; nothing was saved")
            return self._run(plan, on_step, _Stages(on_stage, stop), skip,
                             on_preview if preview_every else None, preview_every, on_latents)

    def _run(self, plan: Plan, on_step: Optional[StepCallback], stages: _Stages,
             skip: Optional[threading.Event], on_preview: Optional[PreviewCallback], preview_every: int,
             on_latents: Optional[Callable[[int, int, object], None]] = None) -> Result:
        start = time.perf_counter()
        generators = noise.make_generators(plan.seeds, plan.noise.generator_device)
        # on the generators' device; the pipeline moves them to where it runs
        latents = noise.initial_latents(generators, tuple(plan.noise.latent_shape), plan.noise.generator_device)
        fingerprints = noise.image_fingerprints(latents, self._fingerprint_salt(plan))
        backend = self.backend(plan.backend.name)
        self._unload_others(plan)
        inputs = None
        if plan.image is not None:
            inputs = image_modes.prepare(plan.image, plan.request, plan.width, plan.height, self.inputs)
            # The pipeline adds the noise to the encoded image itself: it draws it from generators in the
            # state the noise above was drawn from, so it is the same draw (and the fingerprint holds).
            generators = noise.make_generators(plan.seeds, plan.noise.generator_device)
        # Found again by hash: the folder may have changed since the plan was made.
        lora_paths = {lora.sha256: self.loras.path(lora) for lora in plan.loras}
        embedding_vectors = self.embeddings.load(plan.prompt.embeddings)
        load_s = 0.0
        first_step_at: list[float] = []

        def load(text_only: bool = False):
            nonlocal load_s
            stages.begin("loading the model's text encoder" if text_only else "loading the model")
            t = time.perf_counter()
            # A fresh CPU fp32 copy each time a backend asks: backends cache what they prepared
            # (moved, cast, compiled), and a cast must never leak into another precision's run.
            pipe = self.registry.load(self.registry.resolve(plan.request.model), text_only=text_only)
            load_s = time.perf_counter() - t
            return pipe

        # Images run one at a time: batched matmuls round differently from single ones (~1e-6 on
        # CPU BLAS), which would make image i of a batch differ from the same seed run alone.
        outputs, kept, skipped = [], [], []
        steps, count = plan.steps_run, len(generators)
        steps_done = 0
        preview_failed: list[str] = []  # a failing preview turns previews off; the images go on
        for i, generator in enumerate(generators):
            last_step = 0

            def step(done, _total, i=i):
                nonlocal last_step, steps_done
                last_step = done
                if not first_step_at:
                    first_step_at.append(time.perf_counter())
                steps_done += 1
                if on_step is not None:
                    on_step(i * steps + done, steps * count)
                if skip is not None and skip.is_set():
                    raise ImageSkipped()

            hooks = RunHooks(stage=stages.begin, check=stages.check,
                             sampling=lambda i=i: stages.begin(f"image {i + 1} of {count}"), step=step,
                             latents=_both(self._previewer(plan, i, on_preview, preview_every, preview_failed),
                                           (lambda done, lat, i=i: on_latents(i, done, lat)) if on_latents else None))
            extra = {"inputs": inputs} if inputs is not None else {}
            if plan.loras:
                extra["loras"] = lora_paths
            if embedding_vectors:
                extra["embeddings"] = embedding_vectors
            out = backend.generate(plan.for_image(i), load, latents[i: i + 1], [generator], hooks=hooks, **extra)
            outputs.append(out)
            # A Skip pressed while the image decoded drops it too: it was the image in progress.
            if out.skipped or (skip is not None and skip.is_set()):
                if skip is not None:
                    skip.clear()
                skipped.append({"index": i, "seed": plan.seeds[i], "after_step": last_step})
            else:
                kept.append(i)
        if not kept:
            raise AllSkipped(f"every image of the batch ({count}) was skipped; nothing was saved")
        images = np.concatenate([outputs[i].images for i in kept])
        if inputs is not None:
            images = image_modes.finish(plan.image, inputs, images)
        if not np.isfinite(images).all():  # the last line of defence: backends stop earlier, naming the step
            bad = next(i for i in kept if not np.isfinite(outputs[i].images).all())
            vae = plan.backend.precision.get("vae")
            fix = ("run the VAE in fp32 (--dtype vae=fp32, or OpenVINO accuracy mode)" if vae != "fp32" else
                   "the VAE's weights give values out of range: check the model file (or its VAE)")
            raise StudioError(f"image {bad + 1} of the batch (seed {plan.seeds[bad]}) decoded to NaN/inf values "
                              f"({plan.backend.name}, VAE in {vae}); nothing was saved: {fix}")
        compile_events = outputs[0].compile_events  # later images reuse the first one's signature
        notes = list(dict.fromkeys(n for o in outputs for n in o.notes))
        notes += [f"live preview failed and was turned off for this run (the images are not affected): {e}"
                  for e in preview_failed[:1]]
        end = time.perf_counter()
        total = end - start
        compile_s = sum(e.get("seconds", 0.0) for e in compile_events if e.get("kind") == "compile")
        timings = {
            "total_s": round(total, 4),
            "load_s": round(load_s, 4),
            "compile_s": round(compile_s, 4),
            "steps_per_s": round(steps_done / max(total - compile_s - load_s, 1e-9), 4),
            # from the run's start to its first step done: what a user waits before the first step shows
            "first_step_s": round(first_step_at[0] - start, 4) if first_step_at else None,
            "stages": stages.timeline(end),
        }
        return Result(plan=plan, images=images, fingerprints=[fingerprints[i] for i in kept], timings=timings,
                      compile_events=compile_events, notes=notes, kept=kept, skipped=skipped)

    def _unload_others(self, plan: Plan) -> None:
        """Free what the other backends hold before this one loads: one copy of one model in memory at a time
        (OpenVINO's compiled variants of this plan's model stay: they are its compile cache)."""
        freed = [backend.unload(keep_model=plan.model.short_hash) for name, backend in self._backends.items()
                 if name != plan.backend.name and hasattr(backend, "unload")]
        if any(freed):
            release_memory()

    def unload(self) -> None:
        """Free every model and compiled variant the backends hold (the next run loads again)."""
        with self._run_lock:
            for backend in self._backends.values():
                if hasattr(backend, "unload"):
                    backend.unload()
            release_memory()

    def first_step(self, plan: Plan) -> np.ndarray:
        """Image 0's latents after its first step, as float32 on the CPU: what two machines compare before a
        long render (a model load and one step, not a whole image). Nothing is saved."""
        import torch

        taken: list[np.ndarray] = []

        def take(_index, _done, latents):
            taken.append(torch.as_tensor(latents).detach().to("cpu", torch.float32).numpy().copy())
            raise _FirstStepTaken("the first step is all a probe runs")

        try:
            self.run(plan.for_image(0), on_latents=take)
        except _FirstStepTaken:
            return taken[0]
        raise StudioError("the plan ran no step to compare (steps run: 0): give it at least one step")

    @staticmethod
    def _previewer(plan: Plan, index: int, on_preview: Optional[PreviewCallback], every: int,
                   failed: list[str]):
        """The latents hook that makes image ``index``'s preview every ``every`` steps; None when off.

        A preview is a view, never part of the result: if making or showing one fails, previews stop for the
        run and the note says why, and the run goes on.
        """
        if on_preview is None:
            return None
        from studio.engine.preview import latents_to_image

        def latents_hook(done: int, latents) -> None:
            if done % every or failed:
                return
            try:
                on_preview(index, done, latents_to_image(latents, plan.model.family))
            except (Stopped, ImageSkipped):
                raise
            except Exception as exc:
                failed.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

        return latents_hook

    # -- devices and the compile cache (the Advanced tab) ------------------------------------------
    def available_devices(self, backend_name: str):
        """The devices ``backend_name`` can run on here (see backends/devices.py); never raises for a
        missing library: the list is then short and its ``reason`` says why."""
        from studio.backends.devices import available_devices, openvino_devices

        ov = self._backends.get("openvino")
        if backend_name == "openvino" and ov is not None and ov._core is not None:
            return openvino_devices(ov._core)  # the core already started: no second one
        return available_devices(backend_name)

    COMPILING_BACKENDS = ("openvino", "torch")

    def compile_cache_info(self) -> dict:
        """Per compiling backend: the cached signatures (oldest first), the one in use, the capacity, the last
        compile (signature, seconds, reason) and counters. Reads only; a backend not used yet shows empty."""
        out = {}
        for name in self.COMPILING_BACKENDS:
            backend = self._backends.get(name)
            if backend is None:
                out[name] = {"cached": [], "in_use": None, "capacity": self.config.compile_cache_size,
                             "last_compile": None, "counters": {"compiles": 0, "hits": 0, "evictions": 0},
                             "text_encoders": []}
            else:
                out[name] = backend.compile_cache_info()
        return out

    def drop_compile_cache(self, disk: bool = False) -> dict:
        """Empty every compile cache in memory (see OpenVINOBackend.drop_compile_cache); with ``disk``, the
        compiled-blob cache on disk too. Refused while a run is in progress (it holds compiled models)."""
        if not self._run_lock.acquire(blocking=False):
            raise StudioError("a run is in progress: drop the compile cache when it ends (or press Stop first)")
        try:
            return {name: backend.drop_compile_cache(disk=disk) for name, backend in self._backends.items()
                    if hasattr(backend, "drop_compile_cache")}
        finally:
            self._run_lock.release()

    def set_compile_cache_size(self, size: int) -> list[dict]:
        """Change how many compiled variants are kept (the app's setting, never a plan's); evicts the oldest
        beyond it and returns those evict events."""
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 64:
            raise StudioError(f"compile cache size {size!r}: keep 1 to 64 compiled variants")
        self.config = self.config.model_copy(update={"compile_cache_size": size})
        events = []
        for backend in self._backends.values():
            if hasattr(backend, "resize_compile_cache"):
                events += backend.resize_compile_cache(size)
            elif hasattr(backend, "manager"):
                events += backend.manager.resize(size)
        return events
