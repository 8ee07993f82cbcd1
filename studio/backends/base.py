"""What every backend provides. Adding a backend touches backends/ and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from studio.engine.plan import CompilePlan, Plan, ResolvedBackend
from studio.settings import GenerationRequest

StepCallback = Callable[[int, int], None]  # (step done, total steps)


def pipeline_callback(on_step: Optional[StepCallback], steps: int):
    """A diffusers `callback_on_step_end` that reports progress to ``on_step`` (None when nobody listens)."""
    if on_step is None:
        return None

    def callback(_pipe, step, _timestep, kwargs):
        on_step(step + 1, steps)
        return kwargs

    return callback


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
                        chunks: int) -> Optional[CompilePlan]:
        """For a compiling backend: will this request compile, and why. None for eager backends."""

    def generate(self, plan: Plan, load_pipeline: Callable[[], Any], latents, generators,
                 on_step: Optional[StepCallback] = None) -> BackendOutput:
        """Run the plan from the given initial latents; per-step noise comes from ``generators``."""
