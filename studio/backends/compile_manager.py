"""Compiled (static-shape) model variants, kept by signature in an LRU, with predictions and events.

A static-shape backend compiles one variant per signature: the model, device, mode, UNet batch (2
with CFG), image size, prompt length in 77-token chunks, and the task (text to image, image to image,
inpaint: each compiles another set of models, the VAE encoder beside the UNet and decoder for an input
image). A prompt that crosses 75·k tokens, a new resolution (an input image of another size) or another
task needs a new compile, and so does another LoRA set (its weights are fused into the exported model: another
IR, so other compiled models); a signature still in the LRU is a hit. `predict` says which,
and why, before anything runs; `activate` does it and reports events with measured seconds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from studio.plan import CompilePlan


TEXT_TO_IMAGE = "text to image"
# What a run compiles for (the words the recompile reasons use) → its tag in a signature's text. The task
# decides the compiled set: an input image adds the VAE encoder, and inpaint runs diffusers' inpaint pipeline
# (a 9-channel inpaint UNet is another model, so another signature anyway; the tag says why to the user).
TASKS = {TEXT_TO_IMAGE: "", "image to image": "img2img", "inpaint (latent blending)": "inpaint",
         "inpaint (9-channel UNet)": "inpaint9"}


@dataclass(frozen=True)
class Signature:
    device: str
    mode: str
    batch: int  # UNet batch: images per run (1) × 2 with classifier-free guidance
    width: int
    height: int
    chunks: int  # prompt length in 77-token chunks
    model: str = ""  # the model's short hash: variants of two models never stand in for each other
    task: str = TEXT_TO_IMAGE  # a key of TASKS
    # The prompt's own chunk count, before a pad:N policy raised it: said in reasons, not part of the key.
    prompt_chunks: Optional[int] = field(default=None, compare=False)
    # The LoRA set fused into the model, as (sha256 prefix, weight) in the order applied: () is the base model,
    # whose signatures read and compare as they always did. ``lora_label`` names them for reasons only.
    loras: tuple = ()
    lora_label: str = field(default="", compare=False)
    weights: str = "full"  # OpenVINO's int8-compressed weights are another model: another variant

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown compile task {self.task!r}; one of {', '.join(TASKS)}")

    def __str__(self) -> str:
        prefix = f"{self.model}:" if self.model else ""
        # The task is said only when it is not text to image: text-to-image signatures read as they always did.
        suffix = f":{TASKS[self.task]}" if self.task != TEXT_TO_IMAGE else ""
        lora = f":lora-{lora_set_hash(self.loras)[:8]}" if self.loras else ""
        weights = f":{self.weights}" if self.weights != "full" else ""
        return (f"{prefix}{self.device}:{self.mode}:b{self.batch}:{self.width}x{self.height}:{self.chunks * 77}tok"
                f"{suffix}{lora}{weights}")

    @property
    def image_input(self) -> bool:
        """Whether this variant encodes an input image (and so holds a VAE encoder)."""
        return self.task != TEXT_TO_IMAGE


def lora_set(loras) -> tuple[tuple, str]:
    """A plan's LoRAs as a signature holds them: (sha256 prefix, weight) in the order applied, and a label
    for reasons ("style 0.8, ink 1"); ((), "") without LoRAs."""
    loras = list(loras or [])
    key = tuple((lora.sha256[:16], float(lora.weight)) for lora in loras)
    return key, ", ".join(f"{lora.name} {lora.weight:g}" for lora in loras)


def make_signature(mode: str, batch: int, width: int, height: int, chunks: int, model: str, device: str,
                   prompt_chunks: Optional[int] = None, image_method: Optional[str] = None,
                   loras=None, weights: str = "full") -> Signature:
    """The signature of a run: ``image_method`` is the plan's ImagePlan.method (None: text to image), ``loras``
    its AppliedLora list."""
    from studio.engine.image_modes import METHODS

    task = {None: TEXT_TO_IMAGE, METHODS["img2img"]: "image to image", METHODS["blend"]: "inpaint (latent blending)",
            METHODS["inpaint_unet"]: "inpaint (9-channel UNet)"}[image_method]
    key, label = lora_set(loras)
    return Signature(device=device, mode=mode, batch=batch, width=width, height=height, chunks=chunks, model=model,
                     prompt_chunks=prompt_chunks, task=task, loras=key, lora_label=label, weights=weights)


def lora_set_hash(loras: tuple) -> str:
    """A short hash of a LoRA set ((sha256, weight) pairs in order): names its IR folder and its signatures."""
    import hashlib

    text = ";".join(f"{sha}:{float(weight)!r}" for sha, weight in loras)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_change(old: Optional[Signature], new: Signature) -> str:
    if old is None:
        return "first load"
    changes = []
    if old.model != new.model:
        changes.append(f"model {old.model}→{new.model}")
    if old.loras != new.loras:
        changes.append(f"LoRA set changed: {old.lora_label or 'none'} → {new.lora_label or 'none'}")
    if old.weights != new.weights:
        changes.append(f"weights {old.weights}→{new.weights}")
    if old.task != new.task:
        changes.append(f"mask mode {old.task}→{new.task}")
    if (old.width, old.height) != (new.width, new.height):
        # An input image's run size follows the image: say so, rather than a resolution the user never set.
        what = "input size" if new.image_input else "resolution"
        changes.append(f"{what} {old.width}×{old.height}→{new.width}×{new.height}")
    if old.chunks != new.chunks:
        own = new.prompt_chunks or new.chunks
        if own < new.chunks:
            changes.append(f"chunk policy pads the prompt ({own} chunk{'s' * (own > 1)}) to {new.chunks} chunks: "
                           f"chunks {old.chunks}→{new.chunks}")
        elif new.chunks > old.chunks:
            changes.append(f"prompt crossed {75 * old.chunks} tokens: chunks {old.chunks}→{new.chunks}")
        else:
            changes.append(f"prompt back within {75 * new.chunks} tokens: chunks {old.chunks}→{new.chunks}")
    if old.batch != new.batch:
        changes.append(f"batch {old.batch}→{new.batch}")
    if old.mode != new.mode:
        changes.append(f"mode {old.mode}→{new.mode}")
    if old.device != new.device:
        changes.append(f"device {old.device}→{new.device}")
    return ", ".join(changes) or "not compiled yet"


class CompileManager:
    """The LRU of compiled variants. `predict` and `info` only read (planning is pure); `activate`, `resize`
    and `drop` change it.

    The engine runs one job at a time, but plans are previewed while a job runs, so reads and changes
    each hold a short lock (never across a compile).
    """

    def __init__(self, capacity: int = 3, evict_all: bool = False):
        # evict_all: the backend cannot free one variant alone (torch.compile's graphs live in one process-wide
        # cache that is only reset whole), so making room drops every variant held but the new one.
        self.evict_all = evict_all
        self._lru: OrderedDict[Signature, Any] = OrderedDict()
        self._evicted: set[Signature] = set()
        self._dropped: dict[Signature, str] = {}  # signature → why it was dropped (said when it compiles again)
        self._last: Optional[Signature] = None
        self._last_compile: Optional[dict] = None
        self._lock = threading.Lock()
        self.capacity = capacity
        self.counters = {"compiles": 0, "hits": 0, "evictions": 0}

    @property
    def cached(self) -> list[str]:
        """Signatures held, oldest first."""
        with self._lock:
            return [str(s) for s in self._lru]

    def _reason(self, sig: Signature) -> str:
        if sig in self._dropped:
            return f"{self._dropped[sig]}: " + describe_change(self._last, sig)
        if sig in self._evicted:
            return f"evicted earlier (LRU holds {self.capacity}): " + describe_change(self._last, sig)
        return describe_change(self._last, sig)

    def predict(self, sig: Signature) -> CompilePlan:
        """What `activate(sig)` would do, without changing anything."""
        with self._lock:
            held = list(self._lru)
            if sig in held:
                reason = "cached: the variant the last run used" if sig == self._last else "cached"
                return CompilePlan(signature=str(sig), will_compile=False, reason=reason)
            # A compile adds one and then trims to capacity, oldest first.
            over = len(held) + 1 - self.capacity
            dropped = held if self.evict_all and over > 0 else held[:max(over, 0)]
            return CompilePlan(signature=str(sig), will_compile=True, reason=self._reason(sig),
                               evicts=", ".join(str(s) for s in dropped) or None)

    def info(self) -> dict:
        """What the compile-cache panel shows: the variants held (oldest first), the one in use, the size,
        the last compile and the counters."""
        with self._lock:
            return {"cached": [str(s) for s in self._lru], "in_use": str(self._last) if self._last in self._lru else None,
                    "capacity": self.capacity, "last_compile": dict(self._last_compile) if self._last_compile else None,
                    "counters": dict(self.counters)}

    def activate(self, sig: Signature, compile_fn: Callable[[Signature], Any]) -> tuple[Any, list[dict]]:
        """The compiled variant for ``sig`` (compiling it if needed) and the events that took place."""
        with self._lock:
            if sig in self._lru:
                self._lru.move_to_end(sig)
                self._last = sig
                self.counters["hits"] += 1
                return self._lru[sig], [{"kind": "hit", "signature": str(sig), "reason": "cached", "seconds": 0.0}]
            reason = self._reason(sig)
        start = time.perf_counter()
        compiled = compile_fn(sig)
        seconds = time.perf_counter() - start
        events = [{"kind": "compile", "signature": str(sig), "reason": reason, "seconds": round(seconds, 4)}]
        with self._lock:
            self._lru[sig] = compiled
            self._evicted.discard(sig)
            self._dropped.pop(sig, None)
            self._last = sig
            self._last_compile = {"signature": str(sig), "seconds": round(seconds, 4), "reason": reason}
            self.counters["compiles"] += 1
        return compiled, events + self.resize(self.capacity)

    def resize(self, capacity: int) -> list[dict]:
        """Set the LRU size; evicts the oldest variants beyond it (a compile also calls this). Never called
        by planning: the size is the app's setting (AppConfig.compile_cache_size), not a request's."""
        events = []
        with self._lock:
            self.capacity = capacity
            keep = 1 if self.evict_all and len(self._lru) > capacity else capacity
            while len(self._lru) > keep:
                old, _ = self._lru.popitem(last=False)
                self._evicted.add(old)
                self.counters["evictions"] += 1
                events.append({"kind": "evict", "signature": str(old), "reason": f"LRU holds {capacity}",
                               "seconds": 0.0})
        return events

    def drop(self, keep_model: Optional[str] = None, why: str = "the compile cache was dropped") -> list[str]:
        """Empty the LRU, or drop only the variants of models other than ``keep_model`` (a short hash); the compiled
        models are released once no run holds them. The signatures dropped."""
        with self._lock:
            dropped = [s for s in self._lru if keep_model is None or s.model != keep_model]
            for sig in dropped:
                del self._lru[sig]
                self._dropped[sig] = why
            return [str(s) for s in dropped]
