"""Deterministic mode: the torch switches that make a CUDA run repeat bit for bit.

As diffusers' enable_full_determinism(): deterministic algorithms, cuDNN deterministic with
autotuning off, TF32 off, and only the math attention kernel (flash and memory-efficient
attention use non-deterministic reductions). CUBLAS_WORKSPACE_CONFIG is set by runtime.prepare_process
before CUDA starts, since cuBLAS reads it once.
"""

from __future__ import annotations

import os

CUBLAS_WORKSPACE = ":16:8"


def settings(deterministic: bool) -> dict:
    """What deterministic mode sets (recorded in the plan and the image metadata)."""
    if not deterministic:
        return {"deterministic": False}
    return {
        "deterministic": True,
        "use_deterministic_algorithms": True,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "tf32": False,
        "attention": "math",
        "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE,
    }


def apply(deterministic: bool) -> dict:
    """Set (or undo) deterministic mode for this process; returns what is in force."""
    import torch

    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False if deterministic else torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = not deterministic
    for enable in (torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.enable_mem_efficient_sdp):
        enable(not deterministic)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(not deterministic)
    torch.backends.cuda.enable_math_sdp(True)
    in_force = settings(deterministic)
    if deterministic:
        in_force["CUBLAS_WORKSPACE_CONFIG"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return in_force
