"""What every backend provides. Adding a backend touches backends/ and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from studio.plan import CompilePlan, Plan, ResolvedBackend
from studio.errors import StudioError
from studio.settings import GenerationRequest

StepCallback = Callable[[int, int], None]  # (step done, total steps)
LatentsCallback = Callable[[int, Any], None]  # (step done, the latents after it: read them, never change them)


def _nothing(*_args) -> None:
    return None


class ImageSkipped(Exception):
    """Raised from a step callback to end the image in progress (Skip): the engine drops that image and goes
    on with the rest of the batch. Not a StudioError: it never reaches the user."""


@dataclass
class RunHooks:
    """What a backend reports while it runs one image. The engine's hooks may raise Stopped (and ``step``
    ImageSkipped): a backend lets those pass, with nothing written."""

    # A slow stage begins, named for the user ("loading the model", "exporting the model to OpenVINO IR",
    # "compiling UNet and VAE decoder for 512×512, 2 chunks (…)", "decoding"). Raises Stopped first when Stop
    # was pressed during the stage before it.
    stage: Callable[[str], None] = _nothing
    # A slow stage just ended: raises Stopped if Stop was pressed during it (so a stop takes effect as soon
    # as an export or a compile ends, not at the next step).
    check: Callable[[], None] = _nothing
    # The steps are about to begin (the engine names the image: "image 2 of 4").
    sampling: Callable[[], None] = _nothing
    step: Optional[StepCallback] = None
    latents: Optional[LatentsCallback] = None


def as_hooks(on_step: Optional[StepCallback], hooks: Optional[RunHooks]) -> RunHooks:
    """``hooks``, or hooks that only report steps (a caller of the older ``generate(..., on_step)``)."""
    if hooks is not None:
        return hooks
    return RunHooks(step=on_step)


def guarded_callback(on_step, steps: int, stopped: Callable[[int], str]):
    """A diffusers `callback_on_step_end` that reports progress and stops a run whose latents went NaN/inf.

    Checked after every step, so a failing UNet is named with its step, and nothing downstream (the VAE,
    the file) ever sees non-finite values. ``stopped(step)`` gives the one-line error for that step.
    ``on_step`` is a StepCallback or RunHooks (steps, then the latents for a preview, then "decoding" after
    the last step).
    """
    hooks = on_step if isinstance(on_step, RunHooks) else RunHooks(step=on_step)

    def callback(_pipe, step, _timestep, kwargs):
        import torch

        latents = kwargs.get("latents")
        if latents is not None and not bool(torch.isfinite(latents).all()):
            raise StudioError(stopped(step + 1))
        done = step + 1
        if hooks.step is not None:
            hooks.step(done, steps)  # may end the run (Stop) or the image (Skip) here, between steps
        if hooks.latents is not None and latents is not None:
            hooks.latents(done, latents)
        if done == steps:
            hooks.stage("decoding")
        return kwargs  # the latents go on untouched: a preview only reads them

    return callback


def non_finite(component: str, where: str, ran: str, fix: str) -> str:
    """The error for a component that gave NaN/inf: what, where, in what precision, and what to do."""
    return f"the {component} gave NaN/inf values {where} ({ran}); the run stopped and nothing was saved: {fix}"


@dataclass
class BackendOutput:
    images: Any  # numpy float32, N×H×W×3, values 0..1, before 8-bit quantisation
    compile_events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: bool = False  # Skip ended this image: ``images`` is None, the events and notes still hold


class Backend(Protocol):
    name: str

    def resolve(self, request: GenerationRequest, family: str) -> ResolvedBackend:
        """The device and precisions that will really run for a model of ``family``; a StudioError if they cannot."""

    def generator_device(self, resolved: ResolvedBackend) -> str:
        """Where 'device' noise is drawn for this backend (a torch device name)."""

    def predict_compile(self, request: GenerationRequest, model: str, width: int, height: int,
                        chunks: int, prompt_chunks: Optional[int] = None,
                        image_method: Optional[str] = None, loras: Optional[list] = None) -> Optional[CompilePlan]:
        """For a compiling backend: will this request compile, and why. None for eager backends.
        ``image_method`` is the plan's ImagePlan.method for an input image (None: text to image): what is
        compiled depends on it. ``loras`` are the plan's AppliedLora: a backend that fuses them compiles
        another model for each set."""

    def generate(self, plan: Plan, load_pipeline: Callable[[], Any], latents, generators,
                 on_step: Optional[StepCallback] = None, hooks: Optional[RunHooks] = None,
                 inputs=None) -> BackendOutput:
        """Run the plan from the given initial latents; per-step noise comes from ``generators``.

        ``load_pipeline()`` loads the model's diffusers pipeline (a fresh fp32 CPU copy);
        ``load_pipeline(text_only=True)`` one without its UNet and VAE.

        With an input image (``plan.image``), ``inputs`` holds its pixels (engine/image_modes.Prepared) and
        ``generators`` are fresh: the pipeline draws the noise itself, equal to ``latents`` (image_inputs.py).

        ``hooks`` (see RunHooks) gets the slow stages as they begin, each step and its latents; when given,
        it replaces ``on_step``. An ImageSkipped from a step ends the image: the output says ``skipped``.
        """

    # Optional, for a backend that compiles: compile_cache_info() -> dict and drop_compile_cache() -> dict.
