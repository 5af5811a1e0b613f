"""``edgec.convert``: model + sample data + device profile -> a verified bundle.

The one data path (see ``docs/architecture.md``), one named stage each:

1. :func:`plan` — the board, format, precision and output folder;
2. load the model and :func:`prepare_data` (calibration and held-out samples, the doctor, the budget);
3. export the fp32 artifact and run the original on the held-out samples;
4. :func:`choose_precision` — the policy search, or the precision asked for;
5. :func:`verify` — the artifact against the original, through the runtime's own code;
6. :func:`measure` — size, speed and memory on this host;
7. write the report and the manifest, and publish the bundle atomically.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..converters.base import Recipe, Source
from ..devices import DeviceProfile
from ..errors import CalibrationError, VerificationError
from ..runtime.bundle.manifest import MANIFEST_NAME, Manifest, sha256_file
from ..runtime.bundle.model import load
from ..runtime.bundle.golden import GOLDEN_NAME, GOLDEN_SAMPLES, write_golden
from ..runtime.system import rss_bytes
from .bundle.driftref import detection_heads, write_drift_reference
from .bundle.writer import output, versions, write_report
from .load.data import Split, split_samples
from .load.doctor import diagnose, raise_errors
from .load.models import example_inputs, load_model, model_kind, precheck
from .plan import ConvertConfig, Target, plan
from .progress import SILENT, Progress, Step
from .quantize.budget import Budget
from .quantize.search import search
from .report.build import Measurements, build_report
from .report.markdown import convert_page
from .verify.artifact import MeasureFn, Specs, make_measure, open_artifact, reference_outputs, source_latency
from .verify.board import BoardMeter, CandidateRefused
from .quantize.budget import cosine_checks, task_checks
from .verify.fidelity import Fidelity
from ..runtime.timing import measure_latency, paired_speedup

# Sanity floors per precision. They catch broken conversions; accuracy budgets for
# choosing a precision belong to the quantization policy search.
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
DEFAULT_MIN_TOP1 = {"fp32": 0.99, "fp16": 0.98, "int8": 0.95}


@dataclass(frozen=True)
class ConvertResult:
    """A written bundle.

    Attributes:
        bundle: The bundle folder.
        manifest: Its manifest.
        report: The report (as in ``report.json``).
        warnings: Things the user should know (few samples, fit problems).
    """

    bundle: Path
    manifest: Manifest
    report: dict[str, Any]
    warnings: list[str]


@dataclass
class Choice:
    """The precision and recipe that ship, and how they were chosen."""

    precision: str
    recipe: dict[str, Any]
    reason: str
    search: dict[str, Any] | None = None
    weight_bits: int | None = None


@dataclass
class Verified:
    """The artifact held against the original on the held-out samples."""

    fp32: Fidelity
    final: Fidelity
    checks: list[str]
    specs: Specs  # the shipped artifact's inputs and outputs
    model: Any  # the shipped artifact, opened through the runtime (released once measured)
    fp32_model: Any  # the fp32 artifact (None when fp32 ships)


def convert(model: Any, config: ConvertConfig | None = None, *, calib: Any = None, eval_data: Any = None,
            out: str | Path | None = None, profile: DeviceProfile | None = None, progress: Progress | None = None,
            **options: Any) -> ConvertResult:
    """Convert ``model`` for one device and write a verified bundle.

    Args:
        model: ``.pt2`` / ``.onnx`` path, ``pkg.module:factory``, ``nn.Module`` or ``ExportedProgram``.
        config: What to build; ``options`` (any :class:`ConvertConfig` field) override it.
        calib: Sample data: ``.npz`` keyed by input name (optionally with ``labels``), an image
            folder, a dict of arrays, an array, or an iterable of samples. Required for static
            int8; without ``eval_data`` part of it is held out to verify the artifact.
        eval_data: Held-out samples (same forms as ``calib``, optionally with ``labels``) to
            measure candidates and verify the artifact on; never used for calibration.
        out: The bundle folder (``config.out``); default ``build/<device>``.
        profile: A :class:`DeviceProfile` object, instead of ``config.device``.
        progress: Where stages are reported (:class:`~edgec.sdk.progress.Progress`); default silent.

    Returns:
        The bundle's path, manifest and report.

    Raises:
        ValidationError, DeviceNotFoundError: Bad options or device.
        ModelLoadError, CalibrationError: Bad model or sample data.
        ConversionError: An exporter or quantizer failed.
        VerificationError: The artifact disagrees with the original beyond tolerance.
        BundleError: The output folder is in the way.

    Example:
        >>> result = convert("model.pt2", ConvertConfig(device="rpi4"), calib="calib.npz", out="build/rpi4")
        >>> result.report["summary"]["size_vs_fp32"]
        0.27
    """
    cfg = (config or ConvertConfig()).with_options({**options, **({"out": out} if out is not None else {})})
    progress = progress or SILENT
    step = progress.stage
    started = time.perf_counter()
    timings: dict[str, float] = {}
    precheck(model)
    target = plan(cfg, profile, model_kind(model))
    with step(f"Building {target.format.name} for {target.profile.name}: {target.format_reason}"):
        pass  # said before any slow step
    board = None
    if cfg.measure_on:
        board = BoardMeter(cfg.measure_on, cfg.measure_token or "", batch=target.profile.batch,
                           budget_s=cfg.latency_budget_s)
        with step(f"Asking the board at {board.url} to measure"):
            board.check()  # a wrong address or token fails now, not after the export
    with _timed(timings, "load"), step("Loading model"):
        source = load_model(model, weights=cfg.weights, example=lambda: example_inputs(calib, cfg.input_shapes))
    for warning in getattr(source, "warnings", ()):  # said now: a later step may fail because of it
        progress.note(f"warning: {warning}")
    if target.precision == "int8" and calib is None:
        raise CalibrationError(
            f"{target.format.name} int8 for {target.profile.name} needs calibration data: pass --calib data.npz "
            "(100-500 representative inputs), or choose --precision fp16/fp32")
    with _timed(timings, "data"), step("Checking sample data"):
        data = prepare_data(calib, eval_data, source, target, cfg)
    data.warnings[:0] = getattr(source, "warnings", ())  # about the model file itself (an oversized .pt2)
    if board is not None:
        board.golden = next(data.holdout.batches(GOLDEN_SAMPLES))
        arch = (board.board or {}).get("arch")
        if arch != target.profile.arch:
            data.warnings.append(f"the board at {board.url} is {arch}, but {target.profile.name} is "
                                 f"{target.profile.arch}: its timings are those of another kind of board")
    budget = None
    if target.precision == "auto":
        budget = Budget.resolve(cfg.max_drop, cfg.min_cosine, labels=data.info["labels"])  # real labels held out
    with output(target.out, force=cfg.force) as stage:
        fp32_path = stage / f"model.fp32{target.format.suffix}"
        final_path = stage / f"model{target.format.suffix}"
        with _timed(timings, "export"), step(f"Exporting {target.format.name} fp32"):
            prepared = target.converter.export(source, fp32_path)
        if prepared:
            data.info["graph"] = prepared
        with step("Running the original on held-out samples"):
            reference = reference_outputs(source, data.holdout, cfg.task)
        data.info["task"] = reference.task.describe(reference.names)
        ref_acc = reference.accuracy()
        measure_fn = make_measure(target.format.name, source, target.profile, target.threads, data.holdout, reference)
        with _timed(timings, "search" if budget else "quantize"):
            choice = choose_precision(target, source, data, budget, measure_fn, ref_acc, fp32_path, final_path, cfg,
                                      step, board)
        with _timed(timings, "verify"), step("Verifying against the original"):
            verified = verify(target, data, budget, measure_fn, ref_acc, choice, fp32_path, final_path, cfg)
        data.warnings.extend(getattr(verified.model.backend, "notes", ()))  # runtime options dropped for this model
        with step("Measuring latency"):
            measured = measure(target, source, data, verified, fp32_path, final_path, cfg, board)
        with step("Writing bundle"):
            data.warnings.extend(target.profile.fit_problems(measured.size, measured.ram_delta))
            timings["total"] = time.perf_counter() - started
            report = build_report(
                source=source, profile=target.profile, fmt=target.format.name, format_reason=target.format_reason,
                precision=choice.precision,
                reason=choice.reason, recipe=choice.recipe, data=data.info, warnings=data.warnings,
                fp32=verified.fp32 if choice.precision != "fp32" else None, final=verified.final,
                reference_accuracy=ref_acc, checks=verified.checks,
                budget=budget.describe() if budget else "sanity floors for an explicit precision",
                search=choice.search, measured=measured, timings=timings, versions=versions())
            manifest = write_bundle(stage, target, choice, verified, measured, report, data,
                                    detectors=detection_heads(reference, cfg.task))
    return ConvertResult(bundle=target.out.resolve(), manifest=manifest, report=report, warnings=data.warnings)


# -- stages ------------------------------------------------------------------------------------
def prepare_data(calib: Any, eval_data: Any, source: Source, target: Target, cfg: ConvertConfig) -> Split:
    """Calibration and held-out samples, checked by the calibration doctor.

    Raises:
        CalibrationError: Data that does not fit the model, or that would make int8 meaningless.
    """
    data = split_samples(calib, eval_data, source.inputs, quantized=target.precision in ("int8", "auto"),
                         holdout=cfg.holdout, seed=cfg.seed, image=cfg.image)
    if data.calib is not None:
        findings = diagnose(data.calib, data.holdout, eval_given=eval_data is not None)
        data.info["doctor"] = [f.to_dict() for f in findings]
        raise_errors(findings)
        data.warnings.extend(f.message for f in findings if f.level == "warning")
    return data


def choose_precision(target: Target, source: Source, data: Split, budget: Budget | None, measure_fn: MeasureFn,
                     ref_acc: float | None, fp32_path: Path, final_path: Path, cfg: ConvertConfig,
                     step: Step, board: BoardMeter | None = None) -> Choice:
    """The policy search under ``budget`` (``--precision auto``), or the precision asked for, plainly."""
    profile = target.profile
    if budget is None:
        if target.precision == "fp32":
            return Choice("fp32", {}, target.reason)
        # fp16 calibrates nothing; it checks itself against its fp32 graph on whatever samples there are.
        samples = data.calib if data.calib is not None or target.precision != "fp16" else data.holdout
        with step(f"Quantizing to {target.precision}"):
            done = target.converter.quantize(fp32_path, final_path, recipe=Recipe(target.precision), source=source,
                                             calib=samples, profile=profile)
        return Choice(target.precision, done, target.reason, weight_bits=_weight_bits(target.precision, done))
    precisions = target.precisions()
    if "int8" in precisions and not profile.int8_speedup and precisions != ["int8"] and board is None:
        precisions.remove("int8")
        data.warnings.append(f"int8 was not tried: {profile.name} has no fast int8 kernels, so int8 would only "
                             "shrink the file; ask for it with --precision int8")
    if data.synthetic and "int8" in precisions:
        precisions.remove("int8")
        if not precisions:
            raise CalibrationError(f"{profile.name} runs int8 models only, and int8 needs sample data to calibrate "
                                   "and check it: pass --calib data.npz")
        data.warnings.append("int8 was not tried: without --calib or --eval data its accuracy cannot be measured; "
                             "pass --calib data.npz (100-500 real inputs)")
    outcome = search(target.converter, fp32_path, fp32_path.parent, profile=profile, precisions=precisions,
                     source=source, calib=data.calib, measure=measure_fn, budget=budget, reference_accuracy=ref_acc,
                     threads=target.threads, latency_budget_s=cfg.latency_budget_s, step=step,
                     time_budget_s=cfg.time_budget_s or None, board=board)
    if outcome.cut_short:
        data.warnings.append(f"the precision search was cut short: {outcome.cut_short} (raise --time-budget to try them)")
    precision = outcome.recipe.precision
    tried_int8 = [c for c in outcome.candidates if c.recipe.precision == "int8" and c.measured is not None]
    fitting = [c for c in tried_int8 if c.status in ("slower", "too large")]
    if precision != "int8" and fitting:
        why = "; ".join(f"{c.recipe.label()}: {c.status} ({c.reason})" for c in fitting)
        data.warnings.append(f"int8 met the accuracy budget but did not ship: {why}; shipping "
                             f"{outcome.recipe.label()} instead (report.md lists each candidate)")
    elif precision != "int8" and tried_int8:
        data.warnings.append(f"no int8 recipe met the budget ({budget.describe()}) after {len(tried_int8)} tries; "
                             f"shipping {outcome.recipe.label()} instead (report.md lists each candidate)")
    if precision != "fp32":
        outcome.path.rename(final_path)
    return Choice(precision, outcome.done, f"{outcome.recipe.label()}: {target.reason}", outcome.report(ref_acc),
                  _weight_bits(precision, outcome.done))


def verify(target: Target, data: Split, budget: Budget | None, measure_fn: MeasureFn, ref_acc: float | None,
           choice: Choice, fp32_path: Path, final_path: Path, cfg: ConvertConfig) -> Verified:
    """Run the fp32 and the shipped artifacts through the runtime on the held-out samples and check them.

    Raises:
        VerificationError: The shipped artifact misses the budget (or the sanity floors).
    """
    if choice.precision == "fp32":  # the fp32 artifact ships: measured once, as the bundle's model
        fp32_path.rename(final_path)
        fp32 = final = measure_fn(final_path, "fp32")
    else:
        fp32 = measure_fn(fp32_path, "fp32")
        final = measure_fn(final_path, choice.precision, weight_bits=choice.weight_bits)
    if budget is not None:
        passed, checks = budget.check(final.fidelity, ref_acc)
    else:
        checks, passed = _sanity_checks(final.fidelity, choice.precision, cfg)
    if not passed:
        raise VerificationError(
            f"the {target.format.name} {choice.precision} artifact does not match the original: {'; '.join(checks)} "
            f"on {len(data.holdout)} held-out samples. Try --precision fp16/fp32, more or more representative --calib "
            "data, or relax --min-cosine/--min-top1 if this is expected")
    model = final.model
    return Verified(fp32.fidelity, final.fidelity, checks, (model.inputs, model.outputs), model,
                    fp32.model if choice.precision != "fp32" else None)


def measure(target: Target, source: Source, data: Split, verified: Verified, fp32_path: Path, final_path: Path,
            cfg: ConvertConfig, board: BoardMeter | None = None) -> Measurements:
    """Latency of the original, the fp32 and the shipped artifacts; sizes; the RAM loading adds; and, with a
    ``board``, both artifacts as the board measured them (the search's measurements, when it ran)."""
    one = next(data.holdout.samples())
    threads = target.threads
    final, fp32 = verified.model, verified.fp32_model
    # An ONNX original and its fp32 artifact are one graph: timing both apart would report
    # noise as a speed-up, so the original is the fp32 artifact's (or the shipped fp32's) time.
    lat_source = None if source.kind == "onnx" else source_latency(source, one, threads, cfg.latency_budget_s)
    if fp32 is not None:
        speedup, lat_fp32, lat_final = paired_speedup(lambda: fp32.predict(one), lambda: final.predict(one),
                                                      threads=threads, budget_s=2 * cfg.latency_budget_s)
    else:
        lat_fp32, speedup = None, 1.0
        lat_final = measure_latency(lambda: final.predict(one), threads=threads, budget_s=cfg.latency_budget_s)
    lat_source = lat_source or lat_fp32 or lat_final
    fp32_size = fp32_path.stat().st_size if fp32_path.exists() else final_path.stat().st_size
    on_board = _on_board(board, final_path, final, fp32_path if fp32 is not None else None, fp32)
    verified.model = verified.fp32_model = None  # release both backends before the memory probe below
    fp32_path.unlink(missing_ok=True)
    return Measurements(lat_source, lat_fp32, lat_final, speedup, fp32_size, final_path.stat().st_size,
                        _ram_delta(target, source, final_path, final.manifest, one), threads, on_board)


def write_bundle(stage: Path, target: Target, choice: Choice, verified: Verified, measured: Measurements,
                 report: dict[str, Any], data: Split, detectors: dict[str, dict[str, Any]] | None = None) -> Manifest:
    """Write ``report.json``, ``report.md`` and the manifest into ``stage``, load it as a board would, and
    store the golden samples (held-out inputs and this runtime's answers) that boards check theirs against,
    and the held-out data's statistics that boards watch their served data's drift from."""
    holdout = data.holdout
    one = next(holdout.samples())
    write_report(stage, "report", convert_page(report))
    manifest = Manifest(
        format=target.format.name, precision=choice.precision, model_file=f"model{target.format.suffix}",
        inputs=verified.specs[0], outputs=verified.specs[1], device=target.profile.to_dict(),
        files={p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.name != MANIFEST_NAME},
        versions=versions(), weight_bits=choice.weight_bits,
        metrics={"size_bytes": measured.size, "fidelity": verified.final.to_dict(),
                 "latency_host_p50_ms": measured.final.p50_ms},
    )
    manifest.write(stage)
    model = load(stage)  # the runtime's own path: hashes, manifest, backend
    model.predict(one)
    golden = next(holdout.batches(GOLDEN_SAMPLES))  # what boards check their own answers against
    write_golden(stage, golden, model.predict(golden), [s.name for s in manifest.inputs],
                 [s.name for s in manifest.outputs])
    # drift.json: the statistics boards compare their served data with
    written = [stage / GOLDEN_NAME, write_drift_reference(stage, model, data, manifest, detectors)]
    manifest = dataclasses.replace(manifest, files={
        **manifest.files, **{p.name: sha256_file(p) for p in written if p is not None}})
    manifest.write(stage)
    return manifest


# -- helpers -----------------------------------------------------------------------------------
@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


def _weight_bits(precision: str, done: dict[str, Any]) -> int | None:
    return done.get("weight_bits") if precision == "int8" else None


def _sanity_checks(fid: Fidelity, precision: str, cfg: ConvertConfig) -> tuple[list[str], bool]:
    min_cos = cfg.min_cosine if cfg.min_cosine is not None else DEFAULT_MIN_COSINE[precision]
    min_top1 = cfg.min_top1 if cfg.min_top1 is not None else DEFAULT_MIN_TOP1[precision]
    passed, checks = cosine_checks(fid, min_cos)
    if fid.top1_agreement is not None:
        ok = fid.top1_agreement >= min_top1
        checks.append(f"top-1 agreement {100 * fid.top1_agreement:.1f}% {'≥' if ok else '<'} {100 * min_top1:.0f}%")
        passed = passed and ok
    ok, lines = task_checks(fid)
    return checks + lines, passed and ok


def _on_board(board: BoardMeter | None, final_path: Path, final: Any, fp32_path: Path | None,
              fp32: Any) -> dict[str, Any] | None:
    """The shipped and fp32 artifacts as ``board`` measured them (measured now if the search did not)."""
    if board is None:
        return None
    try:
        base = board.measure(fp32_path or final_path, fp32 or final)
        shipped = board.measure(final_path, final, reference=(fp32_path, fp32) if fp32_path is not None else None)
    except CandidateRefused as exc:
        raise VerificationError(f"the shipped artifact fails on the board at {board.url}: {exc}") from None
    return {**board.to_dict(), "fp32": base.to_dict(), "shipped": shipped.to_dict(),
            "speedup_vs_fp32": shipped.speedup_over(base)}


def _ram_delta(target: Target, source: Source, path: Path, manifest: Manifest, one: dict[str, np.ndarray]) -> int | None:
    """RSS that opening the shipped artifact and running one sample adds, in this process."""
    before = rss_bytes()
    probe = open_artifact(path, fmt=target.format.name, precision=manifest.precision, source=source,
                          profile=target.profile, threads=target.threads, specs=(manifest.inputs, manifest.outputs),
                          weight_bits=manifest.weight_bits)
    probe.predict(one)
    after = rss_bytes()
    del probe
    return after - before if before is not None and after is not None else None
