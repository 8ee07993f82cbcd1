"""What every backend provides. Adding a backend touches backends/ and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from studio.engine.plan import CompilePlan, Plan, ResolvedBackend
from studio.errors import StudioError
from studio.settings import GenerationRequest

StepCallback = Callable[[int, int], None]  # (step done, total steps)


def guarded_callback(on_step: Optional[StepCallback], steps: int, stopped: Callable[[int], str]):
    """A diffusers `callback_on_step_end` that reports progress and stops a run whose latents went NaN/inf.

    Checked after every step, so a failing UNet is named with its step, and nothing downstream (the VAE,
    the file) ever sees non-finite values. ``stopped(step)`` gives the one-line error for that step.
    """

    def callback(_pipe, step, _timestep, kwargs):
        import torch

        latents = kwargs.get("latents")
        if latents is not None and not bool(torch.isfinite(latents).all()):
            raise StudioError(stopped(step + 1))
        if on_step is not None:
            on_step(step + 1, steps)
        return kwargs

    return callback


def non_finite(component: str, where: str, ran: str, fix: str) -> str:
    """The error for a component that gave NaN/inf: what, where, in what precision, and what to do."""
    return f"the {component} gave NaN/inf values {where} ({ran}); the run stopped and nothing was saved: {fix}"


@dataclass
class BackendOutput:
    images: Any  # numpy float32, N×H×W×3, values 0..1, before 8-bit quantisation
    compile_events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Backend(Protocol):
    name: str

    def resolve(self, request: GenerationRequest, family: str) -> ResolvedBackend:
        """The device and precisions that will really run for a model of ``family``; a StudioError if they cannot."""

    def generator_device(self, resolved: ResolvedBackend) -> str:
        """Where 'device' noise is drawn for this backend (a torch device name)."""

    def predict_compile(self, request: GenerationRequest, model: str, width: int, height: int,
                        chunks: int, prompt_chunks: Optional[int] = None) -> Optional[CompilePlan]:
        """For a compiling backend: will this request compile, and why. None for eager backends."""

    def generate(self, plan: Plan, load_pipeline: Callable[[], Any], latents, generators,
                 on_step: Optional[StepCallback] = None) -> BackendOutput:
        """Run the plan from the given initial latents; per-step noise comes from ``generators``."""
