"""Reproducibility risks of a request: what may make the image differ, why, and the fix."""

from __future__ import annotations

from studio.plan import ModelInfo, NoisePlan, PromptPlan, ResolvedBackend, Risk
from studio.settings import GenerationRequest


# The verifier's figures against the reference path, measured on this project's machines (README, Benchmarks).
COMPILE_DRIFT_SD15 = "8.4e-6 on sd15-random at 256×256"
INT8_DRIFT = ("measured here: max 0.0035 of the 0..1 range on tiny, 0.0085 on sd15-random at 256×256 against torch "
              "fp32, which the full weights match within 1e-5: up to two 8-bit levels")


def _fix(what: str, app: str, cli: str) -> str:
    """A fix a user can act on in either front end: the app's tab and control, and the CLI flag."""
    return f"{what} (app: {app}; CLI: {cli})"


def assess(request: GenerationRequest, backend: ResolvedBackend, model: ModelInfo, prompt: PromptPlan,
           noise: NoisePlan) -> list[Risk]:
    risks: list[Risk] = []
    if noise.source == "device":
        via = " (asked by the -gpu sampler name)" if noise.from_sampler_alias else ""
        risks.append(Risk(
            code="device_noise",
            why=f"noise is drawn on the execution device ({noise.generator_device} here){via}: other GPUs and "
                "drivers draw other numbers for the same seed",
            fix=_fix("draw the noise on the CPU", "Setting › Noise drawn on: cpu, and a sampler without -gpu",
                     "--noise-source cpu, a --sampler without -gpu"),
        ))
    # OpenVINO's compiled parts take their precision from the mode, not from --dtype (which it refuses).
    by_mode = backend.name == "openvino"
    mode_fix = _fix("use OpenVINO accuracy mode, which runs fp32", "Advanced › OpenVINO mode: accuracy",
                    "--ov-mode accuracy")
    if backend.precision.get("vae") != "fp32":
        risks.append(Risk(
            code="vae_not_fp32",
            why=f"the VAE runs in {backend.precision.get('vae')}: colours drift and can wash out or turn black (NaN)",
            fix=mode_fix if by_mode else _fix("run the VAE in fp32", "Advanced › VAE precision: fp32",
                                              "--dtype vae=fp32"),
        ))
    low = sorted(c for c, d in backend.precision.items() if d != "fp32" and c != "vae")
    if low:
        risks.append(Risk(
            code="reduced_precision",
            why=f"{', '.join(low)} run below fp32: results drift between CPU and GPU architectures",
            fix=mode_fix if by_mode else _fix("use fp32 for cross-machine reproduction",
                                              "Advanced › UNet and Text encoder precision: fp32",
                                              "--dtype unet=fp32 --dtype text=fp32"),
        ))
    if backend.device.startswith("cuda") and not request.deterministic:
        risks.append(Risk(
            code="nondeterministic_cuda",
            why="CUDA kernels may pick different algorithms run to run (cuDNN autotuning, TF32, atomics)",
            fix=_fix("turn on deterministic mode", "Setting › Deterministic mode", "--deterministic"),
        ))
    if backend.device.startswith("cuda") and not request.deterministic:
        risks.append(Risk(
            code="attention_backend",
            why="flash and memory-efficient attention kernels reduce in a non-deterministic order on CUDA",
            fix=_fix("turn on deterministic mode, which keeps only the math attention kernel",
                     "Setting › Deterministic mode", "--deterministic"),
        ))
    if backend.name == "openvino" and backend.mode == "performance":
        risks.append(Risk(
            code="compiled_performance_mode",
            why="OpenVINO performance mode computes in lower precision (bf16/fp16): the image drifts from fp32",
            fix=_fix("use accuracy mode", "Advanced › OpenVINO mode: accuracy", "--ov-mode accuracy"),
        ))
    if backend.mode == "inductor":
        risks.append(Risk(
            code="torch_compile",
            why="torch.compile (inductor) fuses and reorders the UNet's and VAE decoder's arithmetic: the image drifts "
                "from eager torch (measured here: max 1.0e-6 of the 0..1 range on tiny, within 1/255; "
                f"{COMPILE_DRIFT_SD15}) and between CPUs with other vector units; a compile reloaded from the disk "
                "cache gives the same pixels as the first",
            fix=_fix("run eager torch", "Advanced › torch.compile: none", "--compile none"),
        ))
    if backend.weights == "int8":
        risks.append(Risk(
            code="int8_weights",
            why="the UNet's weights are compressed to int8 (NNCF): the image will differ from the full weights "
                f"({INT8_DRIFT})",
            fix=_fix("use the full weights", "Advanced › OpenVINO weights: full", "--ov-weights full"),
        ))
    if request.expansion:
        risks.append(Risk(
            code="prompt_expansion",
            why="prompt expansion rewrites the prompt; the expanded text depends on the seed and the expander",
            fix=_fix("the expanded text is stored and replayed verbatim; turn expansion off to keep your own "
                     "words", "the Prompt expansion switch", "--expansion off"),
        ))
    if not model.sha256:
        risks.append(Risk(
            code="model_without_hash",
            why="the model has no hash, so another machine cannot check it has the same weights",
            fix="use a model file or folder that can be hashed",
        ))
    return risks
