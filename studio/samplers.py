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
    # Fooocus's Extreme Speed runs ComfyUI's `lcm` sampler on its `lcm` schedule: LCM's multi-step sampling
    # over the 50-step skipping schedule LCM(-LoRA) was distilled on, which is diffusers' LCMScheduler. It
    # adds fresh noise after every step but the last: stochastic, and the diffusers pipelines hand their
    # `generator` (the image's) to its step(), so that noise is the image's own draw, as for Euler a.
    SamplerSpec("lcm", "LCMScheduler", stochastic=True, a1111_name="LCM"),
    # Fooocus's Lightning runs Euler on ComfyUI's `sgm_uniform` schedule: timesteps evenly spaced from the
    # last training timestep (999) down, not reaching 0 (linspace(999, 0, steps + 1)[:-1]), then sigma 0.
    # diffusers' "trailing" spacing is the same walk (round(arange(1000, 0, -1000/steps)) - 1: 999, 749,
    # 499, 249 for 4 steps; ComfyUI's 749.25… differ by under one timestep) and is what SDXL-Lightning's
    # authors prescribe for their LoRA. A1111 writes it as the Euler sampler with "SGM Uniform" schedule;
    # its infotext reader splits that suffix off a combined name as it does " Karras".
    SamplerSpec("euler_sgm_uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"},
                a1111_name="Euler SGM Uniform"),
]
SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
DEFAULT_SAMPLER = "dpmpp_2m_sde_karras"  # Fooocus's default: dpmpp_2m_sde with karras


GPU_SUFFIX = "-gpu"


def split_alias(name: str) -> tuple[str, bool]:
    """Fooocus-style ``euler_a-gpu`` → (``euler_a``, True): the suffix means noise drawn on the device."""
    if name.endswith(GPU_SUFFIX):
        return name[: -len(GPU_SUFFIX)], True
    return name, False


def unknown_sampler_message(name: str) -> str:
    return f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)} (a -gpu suffix draws noise on the device)"


def sampler_spec(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[split_alias(name)[0]]
    except KeyError:
        raise StudioError(unknown_sampler_message(name)) from None


def make_scheduler(spec: SamplerSpec, base_config: dict, generator):
    """A fresh scheduler for one image. Its per-step noise, if any, comes from that image's generator."""
    import diffusers
    import torch

    options = dict(spec.options)
    if spec.scheduler != "DPMSolverSDEScheduler":
        return getattr(diffusers, spec.scheduler).from_config(base_config, **options)
    # dpmpp_sde draws from a Brownian tree, not from a generator: its entropy is drawn from the
    # image's generator (left unset, diffusers would take it from the global RNG), and the tree
    # lives on the generator's device so 'cpu' noise stays CPU noise on any execution device.
    options["noise_sampler_seed"] = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return _sde_scheduler_class().from_config(base_config, **options).on_noise_device(generator.device)


def _sde_scheduler_class():
    from diffusers import DPMSolverSDEScheduler
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    class NoiseDeviceSDEScheduler(DPMSolverSDEScheduler):
        def on_noise_device(self, device):
            self._noise_device = device
            return self

        def step(self, model_output, timestep, sample, *args, **kwargs):
            if self.noise_sampler is None:
                sigmas = self.sigmas[self.sigmas > 0]
                tree = BrownianTreeNoiseSampler(sample.to(self._noise_device, dtype=sample.dtype), sigmas.min().item(),
                                                sigmas.max().item(), self.noise_sampler_seed)
                self.noise_sampler = lambda s, s_next: tree(s, s_next).to(sample.device)
            return super().step(model_output, timestep, sample, *args, **kwargs)

    return NoiseDeviceSDEScheduler

