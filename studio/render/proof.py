"""Proof before work: whether a worker's images would be the driver's, from what its probe returned.

A worker's verdict is the worst of three checks, each `identical`, `drift` or `different`:
- its cross-machine report: the render's settings, saved as a preset on the driver, opened on the worker
  (another model or LoRA file, another precision, other library versions or processor);
- its initial-noise fingerprint of seed 0 against the driver's plan (another noise means another image);
- its latents after seed 0's first step against the reference worker's: the same bytes are `identical`,
  within LATENT_DRIFT of the latents' range `drift`, else `different`.
The reference is the first worker whose fingerprint matches the driver's and whose report is `identical`
(or `drift`, when drift is allowed).
A worker is admitted when its verdict is `identical`, or `drift` with allow_drift; never when `different`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from studio.repro.diff import EFFECT_ORDER, VERDICT

LATENT_DRIFT = 1e-3  # the first step's latents: largest difference / largest magnitude, still only drift


@dataclass
class Verdict:
    worker: str
    host: str
    pid: Optional[int]
    verdict: str  # identical | drift | different
    admitted: bool
    reasons: list[str] = field(default_factory=list)
    fingerprint: Optional[str] = None
    latents_sha256: Optional[str] = None
    latents_max_diff: Optional[float] = None
    made_on: Optional[dict] = None
    report: Optional[dict] = None
    seconds: Optional[float] = None

    def line(self) -> str:
        said = "admitted" if self.admitted else "refused"
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.worker} on {self.host} (pid {self.pid}): {self.verdict}, {said}{why}"

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


_EFFECT_OF = {"identical": "none", "drift": "drift", "different": "different"}  # a verdict as an effect


def _worst(*effects: str) -> str:
    """The verdict of the worst effect (a verdict given is taken as its effect; anything unknown is different)."""
    return VERDICT[max((EFFECT_ORDER.get(_EFFECT_OF.get(e, e), 2) for e in effects), default=0)]


def is_reference(probe: dict, fingerprint: str, allow_drift: bool = False) -> bool:
    """Whether this probe can be the one the others' first step is compared with: its noise is the driver's
    and its report says identical (or drift, when drift is allowed)."""
    return ("error" not in probe and probe["fingerprint"] == fingerprint
            and probe["report"].get("expected") in (("identical", "drift") if allow_drift else ("identical",)))


def judge(probe: dict, fingerprint: str, reference: Optional[dict], allow_drift: bool) -> Verdict:
    """The verdict on one worker's probe; ``reference`` is the reference worker's probe (None: none yet)."""
    import numpy as np

    base = dict(worker=probe.get("worker", "?"), host=probe.get("host", "?"), pid=probe.get("pid"),
                seconds=probe.get("seconds"))
    if "error" in probe:
        return Verdict(**base, verdict="different", admitted=False,
                       reasons=[f"it cannot run these settings: {probe['error']}"])
    report = probe["report"]
    effects, reasons = [report.get("expected", "different")], []
    for difference in report.get("differences", []):
        if difference.get("effect") != "none":
            reasons.append(f"{difference['field']}: {difference['preset']!r} on the driver, {difference['here']!r} "
                           f"there ({difference['effect']}; {difference['fix']})")
    if probe["fingerprint"] != fingerprint:
        effects.append("different")
        reasons.append(f"its initial noise differs (fingerprint {probe['fingerprint']}, the driver's {fingerprint})")
    max_diff = None
    if reference is None:
        effects.append("different")
        reasons.append("no worker matches the driver to compare its first step with")
    elif probe["latents_sha256"] != reference["latents_sha256"]:
        a = np.asarray(probe["latents"], dtype=np.float64)
        b = np.asarray(reference["latents"], dtype=np.float64)
        if a.shape != b.shape:
            effects.append("different")
            reasons.append(f"its first step's latents have shape {a.shape}, the reference's {b.shape}")
        else:
            max_diff = float(np.abs(a - b).max()) if np.isfinite(a).all() else float("inf")
            scale = max(float(np.abs(b).max()), 1e-12)
            effect = "drift" if max_diff <= LATENT_DRIFT * scale else "different"
            effects.append(effect)
            reasons.append(f"its first step's latents differ from {reference['worker']}'s by up to {max_diff:.3g} "
                           f"({effect}: the limit for drift is {LATENT_DRIFT * scale:.3g})")
    else:
        max_diff = 0.0
    verdict = _worst(*effects)
    admitted = verdict == "identical" or (verdict == "drift" and allow_drift)
    if verdict == "drift" and not allow_drift:
        reasons.append("its images would drift from the driver's: --allow-drift lets such a worker render")
    return Verdict(**base, verdict=verdict, admitted=admitted, reasons=reasons, fingerprint=probe["fingerprint"],
                   latents_sha256=probe["latents_sha256"], latents_max_diff=max_diff, made_on=probe.get("made_on"),
                   report=report)
