"""Sampler names (what users pick) → diffusers schedulers (what runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.errors import StudioError


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str  # diffusers class name
    options: dict = field(default_factory=dict)
    stochastic: bool = False  # draws fresh noise at every step (ancestral / SDE)
    a1111_name: str = ""


_SPECS = [
    SamplerSpec("euler", "EulerDiscreteScheduler", a1111_name="Euler"),
    SamplerSpec("euler_a", "EulerAncestralDiscreteScheduler", stochastic=True, a1111_name="Euler a"),
    SamplerSpec("heun", "HeunDiscreteScheduler", a1111_name="Heun"),
    SamplerSpec("lms", "LMSDiscreteScheduler", a1111_name="LMS"),
    SamplerSpec("ddim", "DDIMScheduler", a1111_name="DDIM"),
    SamplerSpec("dpmpp_2m", "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", "solver_order": 2}, a1111_name="DPM++ 2M"),
    SamplerSpec("dpmpp_2m_karras", "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                a1111_name="DPM++ 2M Karras"),
    SamplerSpec("dpmpp_2m_sde", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, stochastic=True,
                a1111_name="DPM++ 2M SDE"),
    SamplerSpec("dpmpp_2m_sde_karras", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
                stochastic=True, a1111_name="DPM++ 2M SDE Karras"),
    SamplerSpec("dpmpp_sde", "DPMSolverSDEScheduler", stochastic=True, a1111_name="DPM++ SDE"),
    SamplerSpec("uni_pc", "UniPCMultistepScheduler", a1111_name="UniPC"),
]
SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
DEFAULT_SAMPLER = "dpmpp_2m_sde_karras"  # Fooocus's default: dpmpp_2m_sde with karras


def sampler_spec(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise StudioError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None


def make_scheduler(spec: SamplerSpec, base_config: dict, first_seed: int):
    import diffusers

    cls = getattr(diffusers, spec.scheduler)
    options = dict(spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler":
        # Its Brownian tree is seeded from the config; left unset it draws from the global RNG.
        options["noise_sampler_seed"] = first_seed
    return cls.from_config(base_config, **options)
