"""The devices each backend can really run on here, for the device dropdown.

Asked of the libraries themselves (torch's CUDA count, OpenVINO's core), never guessed. A library that
is missing or fails to start gives a shorter list and a reason instead of an exception: the app must
open on a machine without OpenVINO or without a GPU driver.
"""

from __future__ import annotations

from typing import Optional

from studio.errors import StudioError

BACKENDS = ("torch", "openvino")


class Devices(list):
    """A list of device names, with ``reason``: why it is shorter than it might be (None when complete)."""

    def __init__(self, names=(), reason: Optional[str] = None):
        super().__init__(names)
        self.reason = reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_devices() -> Devices:
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install failing its own import
        return Devices([], f"torch cannot be imported ({_first_line(exc)})")
    try:
        if not torch.cuda.is_available():
            return Devices(["cpu"])
        return Devices(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    except Exception as exc:  # a driver that is there but fails: the CPU still works
        return Devices(["cpu"], f"torch could not list CUDA devices ({_first_line(exc)})")


def openvino_devices(core=None) -> Devices:
    try:
        if core is None:
            import openvino

            core = openvino.Core()
        return Devices(list(core.available_devices))
    except ImportError as exc:
        return Devices([], f"openvino is not installed ({_first_line(exc)})")
    except Exception as exc:  # a plugin that fails to load
        return Devices([], f"OpenVINO could not list its devices ({_first_line(exc)})")


def available_devices(backend_name: str) -> Devices:
    """The device names ``backend_name`` accepts here: torch "cpu" and each "cuda:N" torch sees; OpenVINO the
    core's devices ("CPU", "GPU", "GPU.1", ...)."""
    if backend_name == "torch":
        return torch_devices()
    if backend_name == "openvino":
        return openvino_devices()
    raise StudioError(f"unknown backend {backend_name!r}; use {' or '.join(BACKENDS)}")
