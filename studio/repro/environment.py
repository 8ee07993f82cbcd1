"""What machine made a plan: library versions, device name and CPU features that change the numbers."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# CPU features that change which kernels (and so which rounding) torch and OpenVINO use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
PACKAGES = ("torch", "diffusers", "transformers", "openvino", "optimum-intel", "peft")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_info() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in CPU_FLAGS if f in present]
            break
    return name, flags


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(int(device.split(":")[1]) if ":" in device else 0)
    if device.upper().startswith("GPU"):
        import openvino

        return str(openvino.Core().get_property(device.upper(), "FULL_DEVICE_NAME"))
    return cpu_info()[0]


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def made_on(backend_device: str = "cpu", inference_precision: dict | None = None, plan=None) -> dict:
    """This machine as a preset records it; with ``plan``, the LoRA and embedding files it used here."""
    cpu_name, flags = cpu_info()
    adapters = {}
    if plan is not None:
        adapters.update({f"loras/{lora.file}": lora.sha256 for lora in plan.loras})
        adapters.update({f"embeddings/{e.file}": e.sha256 for e in plan.prompt.embeddings})
    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        **{p.replace("-", "_"): _version(p) for p in PACKAGES},
        "device": backend_device,
        "device_name": device_name(backend_device),
        "cpu": cpu_name,
        "cpu_flags": flags,
        "inference_precision": dict(inference_precision or {}),
        "torch_threads": _torch_threads(),
        "adapters": adapters,
    }
