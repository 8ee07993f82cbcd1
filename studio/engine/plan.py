"""The Plan: everything that decides the pixels, resolved before anything runs.

A Plan is plain data. The UI shows it before Generate, the image metadata records it, a preset
stores it, and two Plans made on two machines can be compared field by field.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from studio.settings import GenerationRequest


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Frozen):
    name: str
    kind: str
    family: str
    sha256: str
    short_hash: str
    untrained: bool


class ResolvedBackend(_Frozen):
    name: str
    device: str
    mode: Optional[str] = None
    precision: dict[str, str]


class PromptPlan(_Frozen):
    prompt: str
    prompt_final: str  # what is encoded: the prompt after expansion
    negative: str
    tokens: int
    chunks: int
    negative_tokens: int
    negative_chunks: int
    chunk_count: int  # chunks both are encoded as (77 tokens each): the larger, or pad:N's N
    expansion: Optional[dict] = None  # expander, seed, added words, and whether the text was replayed


class NoisePlan(_Frozen):
    source: str  # "cpu" or "device": what will run (a sampler's -gpu alias means "device")
    generator_device: str  # where the generators really live
    latent_shape: list[int]  # per image: channels, height, width
    from_sampler_alias: bool = False  # the source came from a -gpu sampler name


class Risk(_Frozen):
    code: str
    why: str
    fix: str


class CompilePlan(_Frozen):
    signature: str
    will_compile: bool
    reason: str
    evicts: Optional[str] = None  # the variant the LRU will drop to make room


class Plan(_Frozen):
    studio_version: str
    request: GenerationRequest  # as asked, with the seed resolved
    seeds: list[int]
    width: int
    height: int
    sampler: str
    scheduler: str
    stochastic_sampler: bool
    noise: NoisePlan
    model: ModelInfo
    backend: ResolvedBackend
    prompt: PromptPlan
    determinism: dict
    risks: list[Risk]
    compile: Optional[CompilePlan] = None

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")
