"""A1111 infotext: the `parameters` text other tools read (A1111, Forge, civitai, SD.Next)."""

from __future__ import annotations

import json

from studio.engine.plan import Plan
from studio.engine.samplers import SAMPLERS


def _quote(value) -> str:
    """A1111 quotes a value that holds a comma, a colon or a newline, as JSON."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def infotext(plan: Plan, index: int, fingerprint: str) -> str:
    """A1111's layout and field order: Steps, Sampler, CFG scale, Seed, Size, Model hash, Model, ..., RNG, Version."""
    request = plan.request
    fields: list[tuple[str, object]] = [
        ("Steps", request.steps),
        ("Sampler", SAMPLERS[plan.sampler].a1111_name),
        ("CFG scale", request.cfg),
        ("Seed", plan.seeds[index]),
        ("Size", f"{plan.width}x{plan.height}"),
        ("Model hash", plan.model.short_hash),
        ("Model", plan.model.name),
    ]
    if request.clip_skip != 1:
        fields.append(("Clip skip", request.clip_skip))
    if plan.backend.precision.get("vae") != "fp32":
        fields.append(("VAE precision", plan.backend.precision["vae"]))
    fields += [
        ("RNG", "CPU" if plan.noise.generator_device == "cpu" else "GPU"),
        ("Noise fingerprint", fingerprint),
        ("Backend", plan.backend.name + (f" {plan.backend.mode}" if plan.backend.mode else "")),
        ("Version", f"studio {plan.studio_version}"),
    ]
    lines = [plan.prompt.prompt_final]
    if plan.prompt.negative:
        lines.append(f"Negative prompt: {plan.prompt.negative}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)
