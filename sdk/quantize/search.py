"""Accuracy-aware quantization: try recipes from fastest to safest, ship the first within budget.

Post-training int8 breaks some models outright (transformers with activation outliers,
depthwise CNNs with per-tensor ranges). The policy search never trusts a recipe: every
candidate is built, run on held-out samples through the runtime's own code, timed, and
shipped only if it stays inside the user's accuracy budget and is not slower than fp32.

Speed is judged by one stated rule. Where this host's timings stand for the board's (a CPU
board of this host's architecture, :meth:`~edgec.devices.DeviceProfile.timed_here`), a
candidate measured more than 5% slower than fp32 in alternating rounds does not ship (the
5% is timing noise, not a gain). Elsewhere (an A72 or a Jetson's GPU timed on an x86 host)
host timings are reported only, and the profile's declared ``int8_speedup``/``fp16_speedup``
decide, so the shipped precision never flips with the host's load. With a board to measure on
(``--measure-on``, :mod:`..verify.board`), every candidate within budget is timed there and the
board's numbers decide instead. When the plain recipes fail, per-layer sensitivity picks the layers to keep
in float (mixed precision). If nothing fits, the search says so and lists what it tried.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...converters.base import Converter, Layer, Recipe, Samples, Source
from ...devices import DeviceProfile
from ...errors import VerificationError, first_line
from ...formats import CALIBRATIONS, Format, get_format
from ...runtime.system import host_arch
from ..progress import SILENT, Step
from ..verify.artifact import Measured, MeasureFn
from ..verify.board import BoardMeter, BoardTiming, CandidateRefused
from ...runtime.timing import measure_latency, paired_speedup
from .budget import Budget
from .results import Candidate, LayerSensitivity, SearchResult
from .sensitivity import one_run, sensitivity

# A candidate measured more than this much slower than fp32 does not ship (timed-here boards only).
SLOWER_TOLERANCE = 1.05
# An int8 artifact above this share of the fp32 size quantized too little to be worth it.
MAX_INT8_SIZE_SHARE = 0.75
# Mixed-precision steps: how many of the most sensitive layers to keep in float.
MIXED_STEPS = (1, 2, 4, 8)
# SmoothQuant strength tried for dynamic int8 of transformer layers.
SMOOTHING = 0.7
MATMUL_OPS = {"MatMul", "FULLY_CONNECTED", "BATCH_MATMUL"}

Plan = list[Recipe | tuple[Recipe, str]]


def ladder(fmt: Format, profile: DeviceProfile, precisions: Sequence[str], has_data: bool,
           layers: Sequence[Layer]) -> Plan:
    """Recipes from fastest to safest for this board; ``(recipe, why)`` marks one skipped up front."""
    out: Plan = []
    if "int8" in precisions:
        ops = {layer.op for layer in layers}
        for calibration in CALIBRATIONS:
            recipe = Recipe("int8", "static", calibration)
            if calibration not in fmt.calibrations:
                out.append((recipe, f"{fmt.name} quantization has no {calibration} calibration"))
            elif not has_data:
                out.append((recipe, "needs calibration data: pass --calib"))
            else:
                out.append(recipe)
        # On a CPU, try the other layouts the format's runtime has fast kernels for (TensorRT
        # takes QDQ only): one verdict on one layout is too narrow to call int8 slow here.
        if profile.accelerator == "none" and "TensorrtExecutionProvider" not in profile.execution_providers:
            for layout in fmt.layouts[1:]:
                recipe = Recipe("int8", "static", "minmax", layout=layout)
                out.append(recipe if has_data else (recipe, "needs calibration data: pass --calib"))
        if profile.int8_io:
            for mode in ("dynamic", "weight-only"):
                out.append((Recipe("int8", mode), f"{profile.name} runs full-integer models only"))
        elif "dynamic" in fmt.modes:
            if fmt.dynamic_ops is not None and not ops & set(fmt.dynamic_ops):
                out.append((Recipe("int8", "dynamic"), f"no {'/'.join(fmt.dynamic_ops)} layers: {fmt.name}'s "
                            "dynamic int8 quantizes only those"))
            else:
                out.append(Recipe("int8", "dynamic"))
                if fmt.smoothing and ops & MATMUL_OPS and has_data:
                    out.append(Recipe("int8", "dynamic", smoothing=SMOOTHING))
        if not profile.int8_io and "weight-only" in fmt.modes:
            out.append(Recipe("int8", "weight-only"))
    out += [Recipe(p) for p in ("fp16", "fp32") if p in precisions]
    return out


class Search:
    """One policy search: what it was given, what it has tried, and its stages.

    Args: as for :func:`search`.
    """

    def __init__(self, converter: Converter, fp32: Path, work: Path, *, profile: DeviceProfile,
                 precisions: Sequence[str], source: Source, calib: Samples | None, measure: MeasureFn,
                 budget: Budget, reference_accuracy: float | None, threads: int, latency_budget_s: float,
                 step: Step, time_budget_s: float | None = None, board: BoardMeter | None = None) -> None:
        self.converter, self.fp32, self.work = converter, fp32, work
        self.format = get_format(converter.format)
        self.profile, self.precisions, self.source, self.calib = profile, precisions, source, calib
        self.measure, self.budget, self.reference_accuracy = measure, budget, reference_accuracy
        self.threads, self.latency_budget_s, self.step = threads, latency_budget_s, step
        self.board = board  # with a board, its timings decide (and each candidate runs there first)
        self.board_base: BoardTiming | None = None
        self.timed_here = profile.timed_here() or board is not None
        self.where = "on the board" if board is not None else "on this host"
        self.int8_only = profile.allowed_precisions == ("int8",)
        self.candidates: list[Candidate] = []
        self.kept: dict[Recipe, Path] = {}  # artifacts within budget, by recipe
        self.slow_layouts: set[str] = set()  # static int8 layouts that already ran slower than fp32 here
        self.base: Measured | None = None
        self.layers: list[Layer] = []
        self.sensitivity: list[LayerSensitivity] = []
        self.sensitivity_of: str | None = None
        self.time_budget_s = time_budget_s
        self.deadline = time.monotonic() + time_budget_s if time_budget_s else None
        self.untried: list[str] = []  # what the time budget cut

    def run(self) -> SearchResult:
        """Measure fp32, walk the ladder, fall back to mixed precision and floats; ship the first fit."""
        with self.step("Measuring fp32"):
            base = self.measure(self.fp32, "fp32")
            self.base = replace(base, speedup=1.0, latency=measure_latency(
                base.run_one, threads=self.threads, budget_s=self.latency_budget_s))
        if self.board is not None:
            with self.step(f"Measuring fp32 on the board at {self.board.url}"):
                try:
                    self.board_base = self.board.measure(self.fp32, base.model)
                except CandidateRefused as exc:
                    raise VerificationError(f"the fp32 artifact fails on the board at {self.board.url}: {exc}. Every "
                                            "candidate is measured against it there: fix the board or drop "
                                            "--measure-on") from None
        self.layers = self.converter.layers(self.fp32) if "int8" in self.precisions else []
        plan = ladder(self.format, self.profile, self.precisions, self.calib is not None, self.layers)
        self.candidates += [Candidate(item[0], reason=item[1]) for item in plan if isinstance(item, tuple)]
        runnable = [r for r in plan if not isinstance(r, tuple)]
        ints = [r for r in runnable if r.precision == "int8"]
        floats = [r for r in runnable if r.precision != "int8"]
        chosen = self._first_within(ints) or self._mixed_precision(ints) or self._first_within(floats)
        if chosen is not None:
            tried = {c.recipe for c in self.candidates}
            self.candidates += [Candidate(r, status="not needed", reason=f"{chosen.recipe.label()} fits the budget")
                                for r in runnable if r not in tried]
        self._in_plan_order(plan, ints)
        if chosen is None:
            raise self._nothing_fits()
        return self._ship(chosen)

    # -- stages ------------------------------------------------------------------------------
    def _first_within(self, recipes: Iterable[Recipe]) -> Candidate | None:
        for recipe in recipes:
            cand = self._try(recipe)
            if cand.status == "within budget":
                return cand
        return None

    def _mixed_precision(self, ints: Sequence[Recipe]) -> Candidate | None:
        """Keep the 1, 2, 4, 8 most sensitive layers of the closest int8 miss in float."""
        # Mixed precision leaves float ops, which a full-integer board (Coral) cannot run.
        if not ints or len(self.layers) < 2 or self.int8_only:
            return None
        over = [c for c in self.candidates if c.status == "over budget" and c.recipe.precision == "int8"]
        if not over:
            return None
        # The closest miss by the budget's own measure is the best start.
        if self.budget.max_drop is not None:
            basis = max(over, key=lambda c: (c.measured.fidelity.accuracy or 0.0, c.measured.fidelity.cosine_mean))
        else:
            basis = min(over, key=lambda c: (c.measured.fidelity.error, -c.measured.fidelity.cosine_min))
        if self.timed_here and basis.recipe.layout in self.slow_layouts and basis.recipe.mode == "static" \
                and not self.int8_only:
            # Decided before paying for the per-layer run: keeping layers in float only adds
            # conversions to an int8 graph that already runs slower than fp32 here.
            self.candidates.append(Candidate(replace(basis.recipe, keep_float=("most sensitive layers",)),
                                             reason=f"not tried: static int8 already ran slower than fp32 "
                                             f"{self.where}, and mixed precision only adds float layers to it"))
            return None
        if self._out_of_time():
            self.untried.append("mixed precision")
            return None
        self.sensitivity_of = basis.recipe.label()
        with self.step(f"Per-layer sensitivity of {self.sensitivity_of} ({len(self.layers)} layers, one run)"):
            ranked_once = one_run(self.converter, self.fp32, self.work, basis.recipe, self.layers, source=self.source,
                                  calib=self.calib, profile=self.profile, threads=self.threads)
        if ranked_once is not None:
            self.sensitivity = ranked_once
        else:  # each layer alone, for as long as the time budget lasts
            n, shown = len(self.layers), [0]

            def progress(done: int, total: int) -> None:
                if done * 10 // total > shown[0]:  # a line every tenth of the layers
                    shown[0] = done * 10 // total
                    with self.step(f"  {done}/{total} layers measured"):
                        pass

            with self.step(f"Per-layer sensitivity of {self.sensitivity_of}, each of {n} layers alone"):
                self.sensitivity = sensitivity(self.converter, self.fp32, self.work, basis.recipe, self.layers,
                                               source=self.source, calib=self.calib, profile=self.profile,
                                               measure=self.measure, progress=progress, deadline=self.deadline)
            if len(self.sensitivity) < n:
                self.untried.append(f"the sensitivity of {n - len(self.sensitivity)} of {n} layers")
        ranked = [s.layer.name for s in self.sensitivity]
        steps = [k for k in MIXED_STEPS if k < len(self.layers)]
        return self._first_within(replace(basis.recipe, keep_float=tuple(ranked[:k])) for k in steps)

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _try(self, recipe: Recipe) -> Candidate:
        """Build one candidate, measure it on the held-out samples, and judge it."""
        names = {layer.name: layer.display for layer in self.layers}
        cand = Candidate(recipe, float_layers=tuple(names.get(n, n) for n in recipe.keep_float))
        self.candidates.append(cand)
        if recipe.precision != "fp32" and self._out_of_time():  # fp32 is measured already: always there
            cand.reason = f"not tried: the search's time budget ({self.time_budget_s:g} s, --time-budget) ran out"
            self.untried.append(recipe.label())
            return cand
        static_int8 = recipe.precision == "int8" and recipe.mode == "static"
        if static_int8 and recipe.layout in self.slow_layouts and self.timed_here:
            cand.reason = f"static int8 already ran slower than fp32 {self.where}; other calibrations run just as slow"
            return cand
        started = time.perf_counter()
        path, done = self.fp32, {}
        if recipe.precision != "fp32":
            path = self.work / f"candidate{len(self.candidates)}{self.fp32.suffix}"
            try:
                with self.step(f"Trying {recipe.label()}"):
                    done = self.converter.quantize(self.fp32, path, recipe=recipe, source=self.source,
                                                   calib=self.calib, profile=self.profile)
            except Exception as exc:  # one recipe failing must not stop the search
                cand.status, cand.reason = "failed", first_line(exc)
                cand.seconds = time.perf_counter() - started
                path.unlink(missing_ok=True)
                return cand
        try:
            with self.step(f"Measuring {recipe.label()}"):
                cand.measured = self.base if recipe.precision == "fp32" else self._measure(path, recipe, done)
        except Exception as exc:  # built, but the runtime cannot load or run it: report it, go on
            cand.status, cand.reason = "failed", f"built, but it does not run: {first_line(exc)}"
            cand.seconds = time.perf_counter() - started
            path.unlink(missing_ok=True)
            return cand
        if self.board is not None and self.budget.check(cand.measured.fidelity, self.reference_accuracy)[0]:
            refused = self._on_board(cand, path)
            if refused:
                cand.status, cand.reason = "failed", refused
                cand.seconds = time.perf_counter() - started
                if path != self.fp32:
                    path.unlink(missing_ok=True)
                return cand
        cand.seconds = time.perf_counter() - started
        self._judge(cand)
        if static_int8 and cand.measured.speedup is not None and cand.measured.speedup * SLOWER_TOLERANCE < 1.0:
            self.slow_layouts.add(recipe.layout)
        if cand.status == "within budget":
            self.kept[recipe] = path
            cand.done = done
        elif path != self.fp32:
            path.unlink(missing_ok=True)
        return cand

    def _on_board(self, cand: Candidate, path: Path) -> str | None:
        """Time a candidate within the accuracy budget on the board; its speed-up becomes the board's.
        Returns why the board refused it (None: measured)."""
        if cand.recipe.precision == "fp32":
            cand.board = self.board_base
            return None
        try:
            with self.step(f"Measuring {cand.recipe.label()} on the board"):
                cand.board = self.board.measure(path, cand.measured.model, reference=(self.fp32, self.base.model))
        except CandidateRefused as exc:
            return f"on the board: {exc}"
        cand.measured = replace(cand.measured, speedup=cand.board.speedup_over(self.board_base))
        return None

    def _measure(self, path: Path, recipe: Recipe, done: dict[str, Any]) -> Measured:
        m = self.measure(path, recipe.precision, weight_bits=done.get("weight_bits"))
        speed, _, lat = paired_speedup(self.base.run_one, m.run_one, threads=self.threads,
                                       budget_s=self.latency_budget_s)
        return replace(m, latency=lat, speedup=speed, run_one=None)

    def _judge(self, cand: Candidate) -> None:
        """Within budget, over budget, slower than fp32, or too little quantized to be worth it."""
        m, recipe = cand.measured, cand.recipe
        ok, lines = self.budget.check(m.fidelity, self.reference_accuracy)
        share = m.size_bytes / self.base.size_bytes
        slower = m.speedup is not None and m.speedup * SLOWER_TOLERANCE < 1.0
        if not ok:
            cand.status, cand.reason = "over budget", "; ".join(lines)
        elif self.timed_here and slower and recipe.precision != "fp32" and not self.int8_only:
            cand.status = "slower"
            cand.reason = (f"within budget but {1 / m.speedup:.2f}x slower than fp32 {self.where} (more than "
                           f"{SLOWER_TOLERANCE - 1:.0%} slower does not ship)")
        elif recipe.precision == "int8" and share > MAX_INT8_SIZE_SHARE:
            cand.status = "too large"
            cand.reason = f"{share:.0%} of the fp32 size: too little of the model was quantized to be worth it"
        else:
            cand.status, cand.reason = "within budget", "; ".join(lines)

    def _in_plan_order(self, plan: Plan, ints: Sequence[Recipe]) -> None:
        order = {(r[0] if isinstance(r, tuple) else r): i for i, r in enumerate(plan)}
        mixed_at = max((order[r] for r in ints), default=0) + 0.5  # mixed precision after plain int8
        self.candidates.sort(key=lambda c: order.get(c.recipe, mixed_at))

    def _nothing_fits(self) -> VerificationError:
        summary = "; ".join(f"{c.recipe.label()}: {c.status}" + (f" ({c.reason})" if c.reason else "")
                            for c in self.candidates)
        return VerificationError(
            f"no candidate fits the budget ({self.budget.describe()}) for {self.profile.name}. Tried: {summary}. "
            "Relax --max-drop/--min-cosine, give more representative --calib data, or fine-tune with "
            "edgec.sdk.quantize.qat")

    def _ship(self, chosen: Candidate) -> SearchResult:
        chosen.status = "shipped"
        for recipe, other in self.kept.items():
            if recipe != chosen.recipe and other != self.fp32:
                other.unlink(missing_ok=True)
        cut = (f"the time budget ({self.time_budget_s:g} s, --time-budget) ran out before "
               f"{', '.join(self.untried)}" if self.untried else None)
        return SearchResult(chosen.recipe, self.kept[chosen.recipe], chosen.done, self.candidates, self.budget,
                            self.base, self.sensitivity, self.sensitivity_of, speed_rule(self.profile, self.board),
                            cut, self.board.to_dict() if self.board is not None else None)


def speed_rule(profile: DeviceProfile, board: BoardMeter | None = None) -> str:
    """The rule speed was judged by for ``profile`` (timed on ``board``, if given), in words (for the report)."""
    if board is not None:
        info = board.board or {}
        what = ", ".join(str(v) for v in (info.get("board"), info.get("cpu"), info.get("arch")) if v)
        return (f"timed on the board at {board.url} ({what or 'as it reported itself'}): a candidate within the "
                f"budget timed there more than {SLOWER_TOLERANCE - 1:.0%} slower than fp32 (alternating rounds, "
                "batch 1) does not ship")
    if profile.timed_here():
        return (f"{profile.name} is a {profile.arch} CPU board like this host: a candidate timed more than "
                f"{SLOWER_TOLERANCE - 1:.0%} slower than fp32 (alternating rounds, batch 1) does not ship")
    declared = [p for p, fast in (("int8", profile.int8_speedup), ("fp16", profile.fp16_speedup)) if fast]
    board = f"{profile.accelerator} accelerator" if profile.accelerator != "none" else f"{profile.arch} CPU"
    return (f"{profile.name} ({board}) does not run like this host ({host_arch()}): speed-ups are "
            f"measured here and reported only; the choice rests on the profile's fast kernels "
            f"({', '.join(declared) or 'none declared'}) and the size")


def search(converter: Converter, fp32: Path, work: Path, *, profile: DeviceProfile, precisions: Sequence[str],
           source: Source, calib: Samples | None, measure: MeasureFn, budget: Budget,
           reference_accuracy: float | None, threads: int = 1, latency_budget_s: float = 1.0,
           step: Step | None = None, time_budget_s: float | None = None,
           board: BoardMeter | None = None) -> SearchResult:
    """Find the fastest recipe within ``budget``; return it, its artifact in ``work`` and every candidate.

    Args:
        converter: The target format's converter.
        fp32: The fp32 artifact.
        work: A folder for candidate artifacts (all but the shipped one are deleted).
        profile: The device profile.
        precisions: Precisions the profile and format allow.
        source: The source model.
        calib: Calibration samples (``None``: only recipes that need none).
        measure: ``measure(path, precision, *, limit=None, weight_bits=None) -> Measured`` on held-out samples.
        budget: The accuracy budget.
        reference_accuracy: The original's held-out accuracy (with labels).
        threads: Threads the models run with while timed.
        latency_budget_s: Time spent timing each candidate against fp32.
        step: Progress hook.
        time_budget_s: Past this many seconds no new candidate is built (fp32 stays); the result's
            ``cut_short`` says what was left untried. ``None``: no limit.
        board: Time fp32 and every candidate within the budget on this board, and judge speed by its numbers.

    Raises:
        VerificationError: No candidate fits the budget; the message lists every one tried.
    """
    return Search(converter, fp32, work, profile=profile, precisions=precisions, source=source, calib=calib,
                  measure=measure, budget=budget, reference_accuracy=reference_accuracy, threads=threads,
                  latency_budget_s=latency_budget_s, step=step or SILENT.stage, time_budget_s=time_budget_s,
                  board=board).run()
