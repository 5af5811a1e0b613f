"""Accuracy-aware quantization: try recipes from fastest to safest, ship the first within budget.

Post-training int8 breaks some models outright (transformers with activation outliers,
depthwise CNNs with per-tensor ranges). The policy search never trusts a recipe: every
candidate is built, run on held-out samples through the runtime's own code, timed, and
shipped only if it stays inside the user's accuracy budget and is really faster than fp32
on a CPU board. When the plain recipes fail, per-layer sensitivity picks the layers to keep
in float (mixed precision). If nothing fits, the search says so and lists what it tried.

:func:`qat` fine-tunes with fake quantization when post-training int8 cannot meet the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...converters.base import Layer, Recipe
from ...errors import ValidationError, VerificationError
from ..evaluate import Fidelity, Latency, measure_latency, paired_speedup
from ..progress import Step, silent_step

# Without labels, the budget is a per-sample cosine floor against the original.
DEFAULT_MIN_COSINE = 0.99
# With labels, it is a top-1 accuracy drop in points.
DEFAULT_MAX_DROP = 1.0
# A candidate more than this much slower than fp32 (measured) does not ship on a CPU board.
SLOWER_TOLERANCE = 1.05
# An int8 artifact above this share of the fp32 size quantized too little to be worth it.
MAX_INT8_SIZE_SHARE = 0.75
# Mixed-precision steps: how many of the most sensitive layers to keep in float.
MIXED_STEPS = (1, 2, 4, 8)
# SmoothQuant strength tried for dynamic int8 of transformer layers.
SMOOTHING = 0.7
# Held-out samples used per layer in a sensitivity analysis.
SENSITIVITY_SAMPLES = 64


@dataclass(frozen=True)
class Budget:
    """How much the shipped model may differ from the original.

    Attributes:
        max_drop: Top-1 accuracy drop allowed, in points (needs labels).
        min_cosine: Lowest per-sample cosine similarity allowed to the original's outputs.
    """

    max_drop: float | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ValidationError(f"--max-drop is in points of top-1 accuracy (0-100), got {self.max_drop}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValidationError(f"--min-cosine must be between -1 and 1, got {self.min_cosine}")

    @classmethod
    def resolve(cls, max_drop: float | None, min_cosine: float | None, labels: bool) -> Budget:
        """The budget asked for, or the default one for data with or without labels.

        Raises:
            ValidationError: ``max_drop`` without labels to measure accuracy with.
        """
        if max_drop is not None and not labels:
            raise ValidationError(
                "--max-drop needs labels: add a `labels` array to the --eval/--calib .npz, "
                "or set a fidelity floor with --min-cosine 0.99"
            )
        if max_drop is None and min_cosine is None:
            return cls(max_drop=DEFAULT_MAX_DROP) if labels else cls(min_cosine=DEFAULT_MIN_COSINE)
        return cls(max_drop=max_drop, min_cosine=min_cosine)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop ≤ {self.max_drop:g} pt")
        if self.min_cosine is not None:
            parts.append(f"cosine ≥ {self.min_cosine:g} on every held-out sample")
        return " and ".join(parts)

    def check(self, fid: Fidelity, reference_accuracy: float | None) -> tuple[bool, list[str]]:
        """Whether ``fid`` is inside the budget, with one line per measured criterion."""
        ok, lines = True, []
        if self.max_drop is not None:
            drop = drop_points(reference_accuracy, fid.accuracy)
            if drop is None:
                raise ValidationError("an accuracy budget needs labels on the held-out samples")
            good = drop <= self.max_drop + 1e-9
            lines.append(f"top-1 drop {drop:.2f} pt {'≤' if good else '>'} {self.max_drop:g}")
            ok = ok and good
        if self.min_cosine is not None:
            good = fid.cosine_min >= self.min_cosine
            lines.append(f"cosine min {fid.cosine_min:.4f} {'≥' if good else '<'} {self.min_cosine:g}")
            ok = ok and good
        return ok, lines


def drop_points(reference: float | None, candidate: float | None) -> float | None:
    if reference is None or candidate is None:
        return None
    return 100.0 * (reference - candidate)


@dataclass(frozen=True)
class Measured:
    """One artifact measured on the held-out samples.

    Attributes:
        fidelity: Its outputs against the original's.
        size_bytes: File size.
        run_one: Runs one held-out sample (for timing); ``None`` when not kept open.
        latency: Single-sample latency, once timed.
        speedup: Speed-up over fp32, timed in alternating rounds with it.
    """

    fidelity: Fidelity
    size_bytes: int
    run_one: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    latency: Latency | None = None
    speedup: float | None = None


@dataclass
class Candidate:
    """One recipe the search tried (or skipped), and what it found."""

    recipe: Recipe
    status: str = "skipped"  # shipped | within budget | over budget | slower | too large | failed | skipped
    reason: str = ""
    measured: Measured | None = None
    float_layers: tuple[str, ...] = ()
    seconds: float = 0.0
    done: dict[str, object] = field(default_factory=dict)

    def to_dict(self, fp32: Measured | None, reference_accuracy: float | None) -> dict[str, Any]:
        m = self.measured
        row: dict[str, Any] = {
            "label": self.recipe.label(), "precision": self.recipe.precision, "recipe": self.recipe.to_dict(),
            "float_layers": list(self.float_layers), "status": self.status, "reason": self.reason,
            "seconds": round(self.seconds, 2),
        }
        if m is not None:
            row.update(
                size_bytes=m.size_bytes,
                size_vs_fp32=m.size_bytes / fp32.size_bytes if fp32 else None,
                latency=m.latency.to_dict() if m.latency else None,
                speedup_vs_fp32=m.speedup,
                fidelity=m.fidelity.to_dict(),
                accuracy=m.fidelity.accuracy,
                drop_points=drop_points(reference_accuracy, m.fidelity.accuracy),
            )
        return row


@dataclass(frozen=True)
class LayerSensitivity:
    """The output error when one layer alone is quantized."""

    layer: Layer
    error: float  # 1 - mean cosine to the original's outputs
    cosine_min: float
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.layer.name, "display": self.layer.display, "op": self.layer.op,
                "params": self.layer.params, "error": self.error, "cosine_min": self.cosine_min,
                "accuracy": self.accuracy}


@dataclass
class SearchResult:
    """What the search shipped and everything it tried."""

    recipe: Recipe
    path: Path
    done: dict[str, object]
    candidates: list[Candidate]
    budget: Budget
    fp32: Measured
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    sensitivity_of: str | None = None

    def report(self, reference_accuracy: float | None) -> dict[str, Any]:
        return {
            "budget": self.budget.describe(),
            "shipped": self.recipe.label(),
            "candidates": [c.to_dict(self.fp32, reference_accuracy) for c in self.candidates],
            "sensitivity": {"recipe": self.sensitivity_of, "layers": [s.to_dict() for s in self.sensitivity]},
        }


MeasureFn = Callable[..., Measured]


def ladder(converter: Any, profile: Any, precisions: Sequence[str], has_data: bool,
           layers: Sequence[Layer]) -> list[Recipe | tuple[Recipe, str]]:
    """Recipes from fastest to safest for this profile; ``(recipe, why)`` marks one skipped up front."""
    out: list[Recipe | tuple[Recipe, str]] = []
    if "int8" in precisions:
        ops = {layer.op for layer in layers}
        matmuls = bool(ops & {"MatMul", "FULLY_CONNECTED", "BATCH_MATMUL"})
        for calibration in ("minmax", "percentile", "entropy"):
            recipe = Recipe("int8", "static", calibration)
            if calibration not in converter.calibrations:
                out.append((recipe, f"{converter.format} quantization has no {calibration} calibration"))
            elif not has_data:
                out.append((recipe, "needs calibration data: pass --calib"))
            else:
                out.append(recipe)
        if profile.int8_io:
            for mode in ("dynamic", "weight-only"):
                out.append((Recipe("int8", mode), f"{profile.name} runs full-integer models only"))
        elif "dynamic" in converter.modes:
            if converter.format == "onnx" and not (ops & {"MatMul", "Gather"}):
                out.append((Recipe("int8", "dynamic"), "no MatMul/Gather layers: onnxruntime's dynamic int8 "
                            "quantizes only those"))
            else:
                out.append(Recipe("int8", "dynamic"))
                if converter.format == "onnx" and matmuls and has_data:
                    out.append(Recipe("int8", "dynamic", smoothing=SMOOTHING))
        if not profile.int8_io and "weight-only" in converter.modes:
            out.append(Recipe("int8", "weight-only"))
    if "fp16" in precisions:
        out.append(Recipe("fp16"))
    if "fp32" in precisions:
        out.append(Recipe("fp32"))
    return out


def search(
    converter: Any,
    fp32: Path,
    work: Path,
    *,
    profile: Any,
    precisions: Sequence[str],
    source: Any,
    calib: Any,
    measure: MeasureFn,
    budget: Budget,
    reference_accuracy: float | None,
    threads: int = 1,
    latency_budget_s: float = 1.0,
    step: Step | None = None,
) -> SearchResult:
    """Find the fastest recipe within ``budget``; return it, its artifact in ``work`` and every candidate.

    Args:
        converter: The target format's converter.
        fp32: The fp32 artifact.
        work: A folder for candidate artifacts (all but the shipped one are deleted).
        profile: The device profile.
        precisions: Precisions the profile and format allow.
        source: The source model.
        calib: Calibration samples (``None``: only recipes that need none).
        measure: ``measure(path, precision, limit=None, weight_bits=None) -> Measured`` on held-out samples.
        budget: The accuracy budget.
        reference_accuracy: The original's held-out accuracy (with labels).
        threads: Threads the models run with while timed.
        latency_budget_s: Time spent timing each candidate against fp32.
        step: Progress hook.

    Raises:
        VerificationError: No candidate fits the budget; the message lists every one tried.
    """
    step = step or silent_step
    with step("Measuring fp32"):
        base = measure(fp32, "fp32")
        base = replace(base, latency=measure_latency(base.run_one, threads=threads, budget_s=latency_budget_s),
                       speedup=1.0)
    layers = converter.layers(fp32) if "int8" in precisions else []
    cpu = profile.accelerator == "none"
    candidates: list[Candidate] = []
    tried: dict[Recipe, Path] = {}
    slow_static = False

    def run(recipe: Recipe) -> Candidate:
        nonlocal slow_static
        cand = Candidate(recipe, float_layers=tuple(_display(layers, recipe.keep_float)))
        candidates.append(cand)
        if recipe.mode == "static" and recipe.precision == "int8" and slow_static and cpu:
            cand.reason = "static int8 already ran slower than fp32 on this host; other calibrations run just as slow"
            return cand
        started = time.perf_counter()
        if recipe.precision == "fp32":
            path = fp32
            done: dict[str, object] = {}
        else:
            path = work / f"candidate{len(candidates)}{fp32.suffix}"
            try:
                with step(f"Trying {recipe.label()}"):
                    done = converter.quantize(fp32, path, recipe=recipe, source=source, calib=calib, profile=profile)
            except Exception as exc:  # one recipe failing must not stop the search
                cand.status, cand.reason = "failed", str(exc).splitlines()[0][:300]
                cand.seconds = time.perf_counter() - started
                path.unlink(missing_ok=True)
                return cand
        with step(f"Measuring {recipe.label()}"):
            if recipe.precision == "fp32":
                m = base
            else:
                m = measure(path, recipe.precision, weight_bits=done.get("weight_bits"))
                speed, _, lat = paired_speedup(base.run_one, m.run_one, threads=threads, budget_s=latency_budget_s)
                m = replace(m, latency=lat, speedup=speed, run_one=None)
        cand.measured, cand.seconds = m, time.perf_counter() - started
        ok, lines = budget.check(m.fidelity, reference_accuracy)
        speed = m.speedup
        share = m.size_bytes / base.size_bytes
        if not ok:
            cand.status, cand.reason = "over budget", "; ".join(lines)
        elif cpu and speed is not None and speed * SLOWER_TOLERANCE < 1.0 and recipe.precision != "fp32" \
                and profile.allowed_precisions != ("int8",):
            cand.status = "slower"
            cand.reason = f"within budget but {1 / speed:.2f}x slower than fp32 on this host"
        elif recipe.precision == "int8" and share > MAX_INT8_SIZE_SHARE:
            cand.status = "too large"
            cand.reason = f"{share:.0%} of the fp32 size: too little of the model was quantized to be worth it"
        else:
            cand.status, cand.reason = "within budget", "; ".join(lines)
        if recipe.precision == "int8" and recipe.mode == "static" and speed is not None and speed * SLOWER_TOLERANCE < 1.0:
            slow_static = True
        if cand.status == "within budget":
            tried[recipe] = path
            cand.done = done
        elif path != fp32:
            path.unlink(missing_ok=True)
        return cand

    plan = ladder(converter, profile, precisions, calib is not None, layers)
    ints = [r for r in plan if not isinstance(r, tuple) and r.precision == "int8"]
    floats = [r for r in plan if not isinstance(r, tuple) and r.precision != "int8"]
    for item in plan:
        if isinstance(item, tuple):
            candidates.append(Candidate(item[0], reason=item[1]))
    chosen = _first_ok(run(r) for r in ints)
    sens: list[LayerSensitivity] = []
    sens_of: str | None = None
    # Mixed precision leaves float ops, which a full-integer board (Coral) cannot run.
    if chosen is None and ints and len(layers) > 1 and profile.allowed_precisions != ("int8",):
        over = [c for c in candidates if c.status == "over budget" and c.recipe.precision == "int8"]
        if over:
            # The closest miss by the budget's own measure is the best start for mixed precision.
            if budget.max_drop is not None:
                def closeness(c: Candidate) -> tuple[float, ...]:
                    return (c.measured.fidelity.accuracy or 0.0, c.measured.fidelity.cosine_mean)
            else:
                def closeness(c: Candidate) -> tuple[float, ...]:
                    return (c.measured.fidelity.cosine_min, c.measured.fidelity.cosine_mean)
            basis = max(over, key=closeness)
            sens_of = basis.recipe.label()
            with step(f"Per-layer sensitivity of {sens_of}"):
                sens = sensitivity(converter, fp32, work, basis.recipe, layers, source=source, calib=calib,
                                   profile=profile, measure=measure)
            ranked = [s.layer.name for s in sens]
            steps = [k for k in MIXED_STEPS if k < len(layers)]
            chosen = _first_ok(run(replace(basis.recipe, keep_float=tuple(ranked[:k]))) for k in steps)
    if chosen is None:
        chosen = _first_ok(run(r) for r in floats)
    if chosen is not None:
        seen = {c.recipe for c in candidates}
        for r in [*ints, *floats]:
            if r not in seen:
                candidates.append(Candidate(r, status="not needed", reason=f"{chosen.recipe.label()} fits the budget"))
    order = {(r[0] if isinstance(r, tuple) else r): i for i, r in enumerate(plan)}
    mixed_at = max((order[r] for r in ints), default=0) + 0.5
    candidates.sort(key=lambda c: order.get(c.recipe, mixed_at))
    if chosen is None:
        summary = "; ".join(f"{c.recipe.label()}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                            for c in candidates)
        raise VerificationError(
            f"no candidate fits the budget ({budget.describe()}) for {profile.name}. Tried: {summary}. "
            "Relax --max-drop/--min-cosine, give more representative --calib data, or fine-tune with "
            "edgec.sdk.quantize.qat"
        )
    chosen.status = "shipped"
    path = tried[chosen.recipe]
    for recipe, other in tried.items():
        if recipe != chosen.recipe and other != fp32:
            other.unlink(missing_ok=True)
    return SearchResult(chosen.recipe, path, chosen.done, candidates, budget, base, sens, sens_of)


def _first_ok(cands: Iterator[Candidate]) -> Candidate | None:
    for cand in cands:
        if cand.status == "within budget":
            return cand
    return None


def _display(layers: Sequence[Layer], names: Sequence[str]) -> list[str]:
    by_name = {layer.name: layer.display for layer in layers}
    return [by_name.get(n, n) for n in names]


def sensitivity(
    converter: Any,
    fp32: Path,
    work: Path,
    recipe: Recipe,
    layers: Sequence[Layer],
    *,
    source: Any,
    calib: Any,
    profile: Any,
    measure: MeasureFn,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerSensitivity]:
    """Quantize each layer alone with ``recipe`` and measure the output error; most harmful first."""
    found = []
    path = work / f"sensitivity{fp32.suffix}"
    for i, layer in enumerate(layers):
        try:
            done = converter.quantize(fp32, path, recipe=replace(recipe, keep_float=(), only=(layer.name,)),
                                      source=source, calib=calib, profile=profile)
            m = measure(path, recipe.precision, limit=SENSITIVITY_SAMPLES, weight_bits=done.get("weight_bits"))
            found.append(LayerSensitivity(layer, 1.0 - m.fidelity.cosine_mean, m.fidelity.cosine_min,
                                          m.fidelity.accuracy))
        finally:
            path.unlink(missing_ok=True)
        if progress:
            progress(i + 1, len(layers))
    return sorted(found, key=lambda s: s.error, reverse=True)


def qat(*args: Any, **kwargs: Any) -> Any:
    """Quantization-aware training (PT2E); see :func:`edgec.sdk.quantize._qat.qat`."""
    from ._qat import qat as _qat

    return _qat(*args, **kwargs)
