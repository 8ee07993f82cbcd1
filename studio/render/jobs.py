"""A render's jobs: the base settings × seeds × prompts, one image each, and the file each one becomes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from studio.errors import StudioError
from studio.settings import MAX_SEED, GenerationRequest

MAX_RENDER_JOBS = 1_000_000  # images in one render (a manifest line each)
MAX_SEED_LIST_BYTES = 16 << 20  # a --seed-list file: a million seeds of ten digits and a newline


@dataclass(frozen=True)
class RenderJob:
    """One image of a render: the request to run alone (batch 1, a fixed seed) and where it goes."""

    key: str  # stable across reruns and reorderings: the seed and the prompt's hash
    seed: int
    prompt: str
    request: GenerationRequest

    @property
    def file(self) -> str:
        return f"{self.key}.png"


def job_key(seed: int, prompt: str) -> str:
    return f"{seed:010d}-{hashlib.sha256(prompt.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """``"0-1999"``, ``"7"`` or ``"0-9,100,200-204"`` as a list of seeds in that order, without repeats."""
    seeds: list[int] = []
    for part in str(text).split(","):
        match = _RANGE.match(part)
        if not match:
            raise StudioError(f"{what} {text!r}: give seeds as FIRST-LAST, a seed, or a comma list of them "
                              "(e.g. 0-1999 or 1,5,10-20)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise StudioError(f"{what} {part.strip()!r}: the range goes down; write it as {last}-{first}")
        if last > MAX_SEED:
            raise StudioError(f"{what} {part.strip()!r}: seeds go from 0 to {MAX_SEED}")
        if len(seeds) + last - first + 1 > MAX_RENDER_JOBS:
            raise StudioError(f"{what} {text!r}: more than {MAX_RENDER_JOBS} seeds in one render; split it")
        seeds.extend(range(first, last + 1))
    return list(dict.fromkeys(seeds))


def read_seed_list(path: Path) -> list[int]:
    """A file of seeds, one a line (blank lines and lines starting with # are skipped)."""
    from studio.untrusted import read_text_bounded

    text = read_text_bounded(path, MAX_SEED_LIST_BYTES, f"seed list {path}")
    seeds = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.isdigit() or int(line) > MAX_SEED:
            raise StudioError(f"seed list {path}, line {number}: {line[:40]!r} is not a seed (0 to {MAX_SEED})")
        seeds.append(int(line))
    if not seeds:
        raise StudioError(f"seed list {path} has no seeds: put one seed a line")
    if len(seeds) > MAX_RENDER_JOBS:
        raise StudioError(f"seed list {path} has {len(seeds)} seeds; the most in one render is {MAX_RENDER_JOBS}")
    return list(dict.fromkeys(seeds))


def make_jobs(base: GenerationRequest, seeds: Sequence[int], prompts: Optional[Sequence[str]] = None
              ) -> list[RenderJob]:
    """Every prompt × every seed, prompt by prompt, each as ``studio generate --seed S`` with that prompt
    would run it alone: batch 1, seed mode fixed. A prompt other than the base's drops its stored expanded
    text (it belongs to the base prompt), as generate's --prompt does."""
    prompts = list(prompts) if prompts else [base.prompt]
    if len(prompts) * len(seeds) > MAX_RENDER_JOBS:
        raise StudioError(f"{len(prompts)} prompts × {len(seeds)} seeds is more than {MAX_RENDER_JOBS} images in "
                          "one render; split it")
    if not seeds:
        raise StudioError("a render needs at least one seed (--seeds FIRST-LAST or --seed-list FILE)")
    jobs, seen = [], set()
    data = base.model_dump()
    for prompt in dict.fromkeys(prompts):
        values = {**data, "prompt": prompt, "batch": 1, "seed_mode": "fixed"}
        if prompt != base.prompt:
            values["expanded_prompt"] = None
        for seed in seeds:
            key = job_key(seed, prompt)
            if key in seen:
                continue
            seen.add(key)
            jobs.append(RenderJob(key=key, seed=seed, prompt=prompt,
                                  request=GenerationRequest.model_validate({**values, "seed": seed})))
    return jobs
