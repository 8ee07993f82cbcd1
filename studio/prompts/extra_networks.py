"""A1111's extra-network tags in a prompt: ``<lora:name:weight>``. They are taken out of the text before it is
counted, chunked or encoded (they are instructions, not words), and become the plan's LoRAs."""

from __future__ import annotations

import math
import re

from studio.errors import StudioError
from studio.untrusted import check_name

TAG = re.compile(r"<\s*(lora|lyco|hypernet)\s*:([^<>]*)>", re.IGNORECASE)
MAX_LORA_WEIGHT = 10.0


def take_lora_tags(text: str) -> tuple[str, list[tuple[str, float]]]:
    """``text`` without its tags, and each ``<lora:name[:weight]>`` as (name, weight) in order.

    A1111's ``<lyco:…>`` is a LoRA tag too. A weight that is not a number, a hypernetwork tag or a name that
    is a path is a StudioError that quotes the tag."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        kind, body = match.group(1).lower(), match.group(2)
        tag = match.group(0)[:80]
        if kind == "hypernet":
            raise StudioError(f"{tag}: studio does not run hypernetworks; remove the tag (LoRAs work: "
                              "<lora:name:0.8>)")
        parts = [p.strip() for p in body.split(":")]
        name = parts[0]
        if not name:
            raise StudioError(f"{tag}: the LoRA's name is missing; write <lora:name:0.8>")
        if len(parts) > 2:
            raise StudioError(f"{tag}: give one weight, <lora:{name}:0.8> (separate text-encoder and UNet "
                              "weights are not supported)")
        weight = 1.0
        if len(parts) == 2:
            try:
                weight = float(parts[1])
            except ValueError:
                raise StudioError(f"{tag}: the weight {parts[1][:20]!r} is not a number; write "
                                  f"<lora:{name}:0.8>") from None
            if not math.isfinite(weight) or abs(weight) > MAX_LORA_WEIGHT:
                raise StudioError(f"{tag}: a LoRA weight is between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}")
        check_name(name, "LoRA")
        found.append((name, weight))
        return ""

    return TAG.sub(take, text), found


def strip_tags(text: str) -> str:
    """``text`` as it is encoded: its extra-network tags removed (an invalid tag is removed too; the plan
    reports it)."""
    return TAG.sub("", text)
