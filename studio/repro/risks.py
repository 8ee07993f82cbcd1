"""Reproducibility risks of a request: what may make the image differ, why, and the fix."""

from __future__ import annotations

from studio.engine.plan import ModelInfo, NoisePlan, PromptPlan, ResolvedBackend, Risk
from studio.settings import GenerationRequest


def assess(request: GenerationRequest, backend: ResolvedBackend, model: ModelInfo, prompt: PromptPlan,
           noise: NoisePlan) -> list[Risk]:
    risks: list[Risk] = []
    if noise.source == "device":
        via = " (asked by the -gpu sampler name)" if noise.from_sampler_alias else ""
        risks.append(Risk(
            code="device_noise",
            why=f"noise is drawn on the execution device ({noise.generator_device} here){via}: other GPUs and "
                "drivers draw other numbers for the same seed",
            fix="use noise source cpu (--noise-source cpu, or the sampler name without -gpu)",
        ))
    # OpenVINO's compiled parts take their precision from the mode, not from --dtype (which it refuses).
    by_mode = backend.name == "openvino"
    mode_fix = "use OpenVINO accuracy mode (--ov-mode accuracy; in the app, OpenVINO mode: accuracy), which runs fp32"
    if backend.precision.get("vae") != "fp32":
        risks.append(Risk(
            code="vae_not_fp32",
            why=f"the VAE runs in {backend.precision.get('vae')}: colours drift and can wash out or turn black (NaN)",
            fix=mode_fix if by_mode else "run the VAE in fp32 (--dtype vae=fp32; in the app, Precision: VAE fp32)",
        ))
    low = sorted(c for c, d in backend.precision.items() if d != "fp32" and c != "vae")
    if low:
        risks.append(Risk(
            code="reduced_precision",
            why=f"{', '.join(low)} run below fp32: results drift between CPU and GPU architectures",
            fix=mode_fix if by_mode else "use fp32 (--dtype unet=fp32 --dtype text=fp32; in the app, Precision: "
                                         "fp32) for cross-machine reproduction",
        ))
    if backend.device.startswith("cuda") and not request.deterministic:
        risks.append(Risk(
            code="nondeterministic_cuda",
            why="CUDA kernels may pick different algorithms run to run (cuDNN autotuning, TF32, atomics)",
            fix="turn on deterministic mode (--deterministic)",
        ))
    if backend.device.startswith("cuda") and not request.deterministic:
        risks.append(Risk(
            code="attention_backend",
            why="flash and memory-efficient attention kernels reduce in a non-deterministic order on CUDA",
            fix="turn on deterministic mode (--deterministic), which keeps only the math attention kernel",
        ))
    if backend.name == "openvino" and backend.mode == "performance":
        risks.append(Risk(
            code="compiled_performance_mode",
            why="OpenVINO performance mode computes in lower precision (bf16/fp16): the image drifts from fp32",
            fix="use accuracy mode (--ov-mode accuracy)",
        ))
    if request.expansion:
        risks.append(Risk(
            code="prompt_expansion",
            why="prompt expansion rewrites the prompt; the expanded text depends on the seed and the expander",
            fix="the expanded text is stored and replayed verbatim; turn expansion off to keep your own words",
        ))
    if not model.sha256:
        risks.append(Risk(
            code="model_without_hash",
            why="the model has no hash, so another machine cannot check it has the same weights",
            fix="use a model file or folder that can be hashed",
        ))
    return risks
