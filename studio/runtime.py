"""Process-wide set-up done once by an entry point (CLI or app), never at import time."""

from __future__ import annotations

import os
import warnings


def prepare_process() -> None:
    # Weights never come from a hub at run time; make every library know it before it looks.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Read by diffusers/transformers when they are first imported (some warn at import time).
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # cuBLAS reads this once, when CUDA starts; deterministic mode needs it then (engine/determinism.py).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")


_quieted = False


def quiet_libraries() -> None:
    """Silence library chatter (loading bars, advice to install extras) that is not the user's business.

    Called where models are loaded, not at start: importing diffusers takes seconds, and a command that
    fails on its arguments should say so at once."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def release_memory() -> None:
    """Free a dropped model's memory now: collect the reference cycles its modules hold, then hand the allocator's
    free pages back to the system. Without the trim, glibc keeps a freed model's heap pages, and the next model's
    load adds its own beside them (measured: +1 model of peak memory per switch)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass
