"""PNG text chunks: `parameters` (A1111 infotext) and `studio` (the full Plan as JSON)."""

from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.plan import Plan
from studio.metadata.a1111 import infotext

STUDIO_CHUNK = "studio"
A1111_CHUNK = "parameters"


def studio_record(plan: Plan, index: int, fingerprint: str, notes: list[str]) -> dict:
    return {"plan": plan.to_json_dict(),
            "image": {"index": index, "seed": plan.seeds[index], "noise_fingerprint": fingerprint},
            "run": {"notes": notes}}


def encode_png(image: Image.Image, plan: Plan, index: int, fingerprint: str, notes: list[str] = ()) -> bytes:
    info = PngInfo()
    info.add_text(A1111_CHUNK, infotext(plan, index, fingerprint))
    # iTXt (UTF-8) so non-Latin prompts survive; compressed since a Plan is a few kB of JSON.
    record = studio_record(plan, index, fingerprint, list(notes))
    info.add_itxt(STUDIO_CHUNK, json.dumps(record, ensure_ascii=False), zip=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_text_chunks(path) -> dict[str, str]:
    with Image.open(path) as im:
        im.load()
        return {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}
