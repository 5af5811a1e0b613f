"""``edgec.convert``: model + sample data + device profile -> a verified bundle.

The one data path (DESIGN.md): load the model, check the data, export an fp32 artifact,
quantize it to the precision the device wants, verify it against the original on held-out
samples, measure size and latency, and write the bundle atomically.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..converters import FORMATS, check_precision, get_format
from ..converters.base import Recipe
from ..devices import DeviceProfile, get_profile
from ..errors import CalibrationError, ValidationError, VerificationError
from ..runtime.backends import open_backend
from ..runtime.manifest import MANIFEST_NAME, Manifest, TensorSpec, sha256_file
from ..runtime.model import LoadedModel, load
from .bundle import check_out_dir, publish, staging, versions
from .calibration import ImageOptions, SampleSet, load_samples
from .doctor import diagnose, raise_errors
from ..runtime.cache import rss_bytes
from .evaluate import Fidelity, accuracy, compare, measure_latency, paired_speedup, run_batched
from .models import SourceModel, example_from_shapes, load_model, precheck
from .progress import Step, silent_step
from .quantize import Budget, Measured, search
from .report import to_markdown

# Sanity floors per precision. They catch broken conversions; accuracy budgets for
# choosing a precision belong to the quantization policy search.
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
DEFAULT_MIN_TOP1 = {"fp32": 0.99, "fp16": 0.98, "int8": 0.95}
SYNTHETIC_SAMPLES = 64
# Held-out samples used to measure each candidate.
MAX_EVAL_SAMPLES = 500


@dataclass(frozen=True)
class ConvertConfig:
    """What to build.

    Attributes:
        device: Device name, alias or ``.toml`` profile path.
        format: ``auto`` (the profile's), ``onnx`` or ``tflite``.
        precision: ``auto`` (search recipes from fastest to safest under the accuracy budget),
            ``fp32``, ``fp16`` or ``int8`` (plain static int8, checked only against sanity floors).
        out: Bundle folder; default ``build/<device>``.
        force: Replace ``out`` if it exists.
        weights: Weights for a ``pkg.module:factory`` model.
        input_shapes: ``1x3x224x224`` or ``name=1x3x224x224`` for models traced from code.
        image: How to read an image folder given as sample data.
        holdout: Share of the samples held out from calibration for verification.
        max_drop: With ``precision="auto"`` and labels: top-1 accuracy drop allowed, in points
            (default 1.0).
        min_cosine: Per-sample cosine floor against the original. With ``precision="auto"`` it
            is the budget (default 0.99 without labels); otherwise a sanity floor by precision.
        min_top1: Top-1 agreement floor for classifiers; default by precision.
        seed: Seed of the calibration/held-out split and synthetic inputs.
        latency_budget_s: Time spent timing each model.

    Example:
        >>> ConvertConfig(device="rpi4", precision="int8", out=Path("build/rpi4"))
    """

    device: str = "x86-64"
    format: str = "auto"
    precision: str = "auto"
    out: Path | None = None
    force: bool = False
    weights: Path | None = None
    input_shapes: tuple[str, ...] = ()
    image: ImageOptions = field(default_factory=ImageOptions)
    holdout: float = 0.2
    max_drop: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    seed: int = 0
    latency_budget_s: float = 1.0

    def __post_init__(self) -> None:
        if self.format != "auto":
            get_format(self.format)
        if self.precision != "auto":
            check_precision(self.precision)
        if not 0.0 < self.holdout < 1.0:
            raise ValidationError(f"holdout must be between 0 and 1, got {self.holdout}")
        Budget(self.max_drop, self.min_cosine)  # range checks
        if self.max_drop is not None and self.precision != "auto":
            raise ValidationError("--max-drop is the budget of --precision auto; drop --precision or --max-drop")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise ValidationError(f"min_top1 must be between 0 and 1, got {self.min_top1}")
        if self.latency_budget_s <= 0:
            raise ValidationError("latency_budget_s must be positive")


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


def resolve_target(profile: DeviceProfile, fmt: str, precision: str) -> tuple[str, str, str]:
    """Pick format and precision for ``profile``; return them with the reason for the precision.

    Raises:
        ValidationError: The device cannot run that precision, or the format cannot make it.
    """
    fmt = profile.format if fmt == "auto" else get_format(fmt).name
    if precision == "auto":
        choices = [p for p in ("int8", "fp16", "fp32") if p in profile.allowed_precisions and p in FORMATS[fmt].precisions]
        return fmt, "auto", f"the fastest candidate within the accuracy budget among {', '.join(choices)}"
    else:
        precision = check_precision(precision)
        reason = "asked for with --precision"
    if precision not in profile.allowed_precisions:
        raise ValidationError(
            f"{profile.name} cannot run {precision} models (it runs {', '.join(profile.allowed_precisions)}): "
            f"use --precision {profile.precision}"
        )
    if precision not in FORMATS[fmt].precisions:
        raise ValidationError(f"format {fmt} cannot produce {precision}")
    return fmt, precision, reason


def convert(
    model: Any,
    config: ConvertConfig | None = None,
    *,
    calib: Any = None,
    eval_data: Any = None,
    profile: DeviceProfile | None = None,
    step: Step | None = None,
    **options: Any,
) -> ConvertResult:
    """Convert ``model`` for one device and write a verified bundle.

    Args:
        model: ``.pt2`` / ``.onnx`` path, ``pkg.module:factory``, ``nn.Module`` or ``ExportedProgram``.
        config: What to build; ``options`` (any :class:`ConvertConfig` field) override it.
        calib: Sample data: ``.npz`` keyed by input name (optionally with ``labels``), an image
            folder, a dict of arrays, an array, or an iterable of samples. Required for static
            int8; without ``eval_data`` part of it is held out to verify the artifact.
        eval_data: Held-out samples (same forms as ``calib``, optionally with ``labels``) to
            measure candidates and verify the artifact on; never used for calibration.
        profile: A :class:`DeviceProfile` object, instead of ``config.device``.
        step: Progress hook: called with a step name, returns a context manager.

    Returns:
        The bundle's path, manifest and report.

    Raises:
        ValidationError, DeviceNotFoundError: Bad options or device.
        ModelLoadError, CalibrationError: Bad model or sample data.
        ConversionError: An exporter or quantizer failed.
        VerificationError: The artifact disagrees with the original beyond tolerance.
        BundleError: The output folder is in the way.

    Example:
        >>> result = convert("model.pt2", device="rpi4", calib="calib.npz", out="build/rpi4")
        >>> result.report["summary"]["size_vs_fp32"]
        0.27
    """
    known = {f.name for f in fields(ConvertConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValidationError(f"unknown option(s) {', '.join(unknown)}; ConvertConfig takes {', '.join(sorted(known))}")
    if "out" in options and options["out"] is not None:
        options["out"] = Path(options["out"])
    if "weights" in options and options["weights"] is not None:
        options["weights"] = Path(options["weights"])
    if "input_shapes" in options:
        options["input_shapes"] = tuple(options["input_shapes"])
    cfg = replace(config or ConvertConfig(), **options)
    step = step or silent_step
    started = time.perf_counter()

    precheck(model)
    profile = profile or get_profile(cfg.device)
    fmt, precision, reason = resolve_target(profile, cfg.format, cfg.precision)
    out = Path(cfg.out or Path("build") / profile.name)
    check_out_dir(out, force=cfg.force)
    converter = FORMATS[fmt].converter()

    with step("Loading model"):
        example = example_inputs(calib, cfg)
        source = load_model(model, weights=cfg.weights, example=example)
    if precision == "int8" and calib is None:
        raise CalibrationError(
            f"{fmt} int8 for {profile.name} needs calibration data: pass --calib data.npz "
            "(100-500 representative inputs), or choose --precision fp16/fp32"
        )
    warnings: list[str] = []
    with step("Checking sample data"):
        calib_set, holdout, data_info = split_samples(calib, eval_data, source, precision, cfg, warnings)
        if calib_set is not None:
            findings = diagnose(calib_set, holdout, eval_given=eval_data is not None)
            data_info["doctor"] = [f.to_dict() for f in findings]
            raise_errors(findings)
            warnings.extend(f.message for f in findings if f.level == "warning")
    budget = None
    if precision == "auto":
        budget = Budget.resolve(cfg.max_drop, cfg.min_cosine, holdout.labels is not None and not data_info["synthetic"])

    timings: dict[str, float] = {}
    with staging(out) as stage:
        suffix = FORMATS[fmt].suffix
        fp32_path = stage / f"model.fp32{suffix}"
        final_path = stage / f"model{suffix}"
        t = time.perf_counter()
        with step(f"Exporting {fmt} fp32"):
            converter.export(source, fp32_path)
        timings["export"] = time.perf_counter() - t
        recipe: dict[str, object] = {}
        threads = max(1, min(profile.threads, os.cpu_count() or 1))
        with step("Running the original on held-out samples"):
            ref_out = reference_outputs(source, holdout)
        ref_acc = accuracy(ref_out, holdout.labels)
        one = next(holdout.samples())
        outcome = None
        t = time.perf_counter()
        if precision == "auto":
            measure = make_measure(fmt, converter, source, profile, threads, holdout, ref_out)
            precisions = [p for p in ("int8", "fp16", "fp32")
                          if p in profile.allowed_precisions and p in FORMATS[fmt].precisions]
            if "int8" in precisions and not profile.int8_speedup and precisions != ["int8"]:
                precisions.remove("int8")
                warnings.append(f"int8 was not tried: {profile.name} has no fast int8 kernels, so int8 would only "
                                "shrink the file; ask for it with --precision int8")
            if data_info["synthetic"] and "int8" in precisions:
                precisions.remove("int8")
                if not precisions:
                    raise CalibrationError(f"{profile.name} runs int8 models only, and int8 needs sample data to "
                                           "calibrate and check it: pass --calib data.npz")
                warnings.append("int8 was not tried: without --calib or --eval data its accuracy cannot be "
                                "measured; pass --calib data.npz (100-500 real inputs)")
            outcome = search(converter, fp32_path, stage, profile=profile, precisions=precisions, source=source,
                             calib=calib_set, measure=measure, budget=budget, reference_accuracy=ref_acc,
                             threads=threads, latency_budget_s=cfg.latency_budget_s, step=step)
            precision, recipe = outcome.recipe.precision, outcome.done
            tried_int8 = [c for c in outcome.candidates if c.recipe.precision == "int8" and c.measured is not None]
            if precision != "int8" and tried_int8:
                warnings.append(f"no int8 recipe met the budget ({budget.describe()}) after {len(tried_int8)} "
                                f"tries; shipping {outcome.recipe.label()} instead (report.md lists each candidate)")
            reason = f"{outcome.recipe.label()}: {reason}"
            if precision != "fp32":
                outcome.path.rename(final_path)
            timings["search"] = time.perf_counter() - t
        elif precision != "fp32":
            with step(f"Quantizing to {precision}"):
                recipe = converter.quantize(fp32_path, final_path, recipe=Recipe(precision), source=source,
                                            calib=calib_set, profile=profile)
            timings["quantize"] = time.perf_counter() - t

        with step("Verifying against the original"):
            t = time.perf_counter()
            fp32_model = open_artifact(fp32_path, fmt, "fp32", converter, source, profile, threads)
            fp32_fid = compare(ref_out, run_batched(_as_list(fp32_model), holdout.batches(64)), holdout.labels)
            if precision == "fp32":
                fp32_model = None
                fp32_path.rename(final_path)
            weight_bits = recipe.get("weight_bits") if precision == "int8" else None
            final_pre = open_artifact(final_path, fmt, precision, converter, source, profile, threads,
                                      weight_bits=weight_bits)
            inputs, outputs = final_pre.inputs, final_pre.outputs
            final_fid = compare(ref_out, run_batched(_as_list(final_pre), holdout.batches(64)), holdout.labels)
            if budget is not None:
                passed, checks = budget.check(final_fid, ref_acc)
            else:
                checks, passed = _verify(final_fid, precision, cfg)
            if not passed:
                raise VerificationError(
                    f"the {fmt} {precision} artifact does not match the original: {'; '.join(checks)} "
                    f"on {len(holdout)} held-out samples. Try --precision fp16/fp32, more or more "
                    "representative --calib data, or relax --min-cosine/--min-top1 if this is expected"
                )
            timings["verify"] = time.perf_counter() - t

        with step("Measuring latency"):
            lat_source = _measure_source(source, one, threads, cfg.latency_budget_s)
            if fp32_model is not None:
                speedup, lat_fp32, lat_final = paired_speedup(
                    lambda: fp32_model.predict(one), lambda: final_pre.predict(one),
                    threads=threads, budget_s=2 * cfg.latency_budget_s)
            else:
                lat_fp32, speedup = None, 1.0
                lat_final = measure_latency(lambda: final_pre.predict(one), threads=threads, budget_s=cfg.latency_budget_s)
            fp32_size = fp32_path.stat().st_size if fp32_path.exists() else final_path.stat().st_size
            fp32_model = final_pre = None  # release both backends before the memory probe below
            fp32_path.unlink(missing_ok=True)

        with step("Writing bundle"):
            rss_before = rss_bytes()
            probe = open_artifact(final_path, fmt, precision, converter, source, profile, threads,
                                  specs=(inputs, outputs), weight_bits=weight_bits)
            probe.predict(one)
            rss_after = rss_bytes()
            del probe
            ram_delta = (rss_after - rss_before) if rss_before is not None and rss_after is not None else None
            size = final_path.stat().st_size
            fit_problems = _fit(profile, size, ram_delta)
            warnings.extend(fit_problems)
            rows = [
                {"name": f"original ({source.kind})", "size_bytes": source.size_bytes,
                 "latency": lat_source.to_dict(), "fidelity": None, "accuracy": ref_acc},
            ]
            if precision != "fp32":
                rows.append({"name": f"{fmt} fp32", "size_bytes": fp32_size, "latency": lat_fp32.to_dict(),
                             "fidelity": fp32_fid.to_dict(), "accuracy": fp32_fid.accuracy})
            rows.append({"name": f"{fmt} {precision}", "size_bytes": size, "latency": lat_final.to_dict(),
                         "fidelity": final_fid.to_dict(), "accuracy": final_fid.accuracy, "shipped": True})
            report = {
                "edgec_version": versions()["edgec"],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": {"source": source.label, "kind": source.kind,
                          "inputs": [t.to_dict() for t in source.inputs],
                          "outputs": [t.to_dict() for t in source.outputs]},
                "device": {"name": profile.name, "description": profile.description, "threads": profile.threads},
                "target": {"format": fmt, "precision": precision, "precision_reason": reason, "recipe": recipe},
                "data": {**data_info, "warnings": [w for w in warnings if w not in fit_problems]},
                "results": rows,
                "summary": {
                    "size_bytes": size,
                    "size_vs_fp32": size / fp32_size,
                    "size_vs_original": size / source.size_bytes if source.size_bytes else None,
                    "speedup_vs_fp32": speedup,
                    "speedup_vs_original": lat_source.p50_ms / lat_final.p50_ms,
                    "accuracy_drop_points": (100 * (ref_acc - final_fid.accuracy)
                                             if ref_acc is not None and final_fid.accuracy is not None else None),
                },
                "verification": {"passed": True, "checks": checks,
                                 "budget": budget.describe() if budget else "sanity floors for an explicit precision"},
                "search": outcome.report(ref_acc) if outcome else None,
                "fit": {"size_bytes": size, "storage_mb": profile.storage_mb, "ram_delta_bytes": ram_delta,
                        "model_ram_mb": profile.model_ram_mb, "fits": not fit_problems, "problems": fit_problems},
                "notes": _notes(profile, fmt, precision),
                "host": {"machine": platform.machine(), "threads": threads, "cpu_count": os.cpu_count()},
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
                "versions": versions(),
            }
            report["timings_s"]["total"] = round(time.perf_counter() - started, 3)
            (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            (stage / "report.md").write_text(to_markdown(report), encoding="utf-8")
            manifest = Manifest(
                format=fmt,
                precision=precision,
                model_file=final_path.name,
                inputs=inputs,
                outputs=outputs,
                device=profile.to_dict(),
                files={p.name: sha256_file(p) for p in sorted(stage.iterdir()) if p.name != MANIFEST_NAME},
                versions=versions(),
                metrics={"size_bytes": size, "fidelity": final_fid.to_dict(),
                         "latency_host_p50_ms": lat_final.p50_ms},
                weight_bits=weight_bits,
            )
            manifest.write(stage)
            load(stage).predict(one)  # the runtime's own path: hashes, manifest, backend
        bundle = publish(stage, out, force=cfg.force)
    return ConvertResult(bundle=bundle, manifest=manifest, report=report, warnings=warnings)


def make_measure(
    fmt: str, converter: Any, source: SourceModel, profile: DeviceProfile, threads: int,
    holdout: SampleSet, ref_out: list[np.ndarray],
) -> Callable[..., Measured]:
    """``measure(path, precision, limit=None, weight_bits=None)``: an artifact's fidelity on the held-out samples,
    through the runtime's own feeding code, with a hook to time it on one sample."""
    one = next(holdout.samples())

    def measure(path: Path, precision: str, limit: int | None = None, weight_bits: int | None = None) -> Measured:
        model = open_artifact(path, fmt, precision, converter, source, profile, threads, weight_bits=weight_bits)
        part = holdout if limit is None else holdout.take(slice(0, limit))
        ref = ref_out if limit is None else [r[: len(part)] for r in ref_out]
        fid = compare(ref, run_batched(_as_list(model), part.batches(64)), part.labels)
        return Measured(fid, path.stat().st_size, run_one=lambda: model.predict(one))

    return measure


def reference_outputs(source: SourceModel, holdout: SampleSet) -> list[np.ndarray]:
    """The original model's outputs on the held-out samples."""
    # A source traced with a fixed batch of 1 takes one sample at a time.
    ref_batch = 1 if any(t.shape[:1] == (1,) for t in source.inputs) else 64
    return run_batched(source.run, holdout.batches(ref_batch))


def example_inputs(calib: Any, cfg: ConvertConfig) -> dict[str, np.ndarray] | None:
    """Example inputs for tracing a module: --input-shape, else the first calibration sample."""
    if cfg.input_shapes:
        return example_from_shapes(cfg.input_shapes)
    if isinstance(calib, (str, Path)) and Path(calib).suffix.lower() == ".npz" and Path(calib).is_file():
        try:
            with np.load(calib, allow_pickle=False) as npz:
                return {k: npz[k][:1] for k in npz.files if k != "labels"}
        except Exception:
            return None  # load_samples reports the problem with the file precisely
    if isinstance(calib, np.ndarray):
        return {"input": calib[:1]}
    if isinstance(calib, dict):
        return {k: np.asarray(v)[:1] for k, v in calib.items() if k != "labels"}
    return None


def split_samples(
    calib: Any, eval_data: Any, source: SourceModel, precision: str, cfg: ConvertConfig, warnings: list[str]
) -> tuple[SampleSet | None, SampleSet, dict[str, Any]]:
    quantized = precision in ("int8", "auto")
    if eval_data is not None:
        held, found = load_samples(eval_data, source.inputs, image=cfg.image, what="--eval data")
        held = held.take(slice(0, MAX_EVAL_SAMPLES))
        calib_set = None
        if calib is not None and quantized:
            calib_set, more = load_samples(calib, source.inputs, image=cfg.image)
            found = found + more
        warnings.extend(found)
        return calib_set, held, {
            "source": held.source, "calibration": calib_set.source if calib_set else None, "synthetic": False,
            "labels": held.labels is not None, "calibration_samples": len(calib_set) if calib_set else 0,
            "holdout_samples": len(held),
        }
    if calib is None:
        rng = np.random.default_rng(cfg.seed)
        arrays = {}
        for t in source.inputs:
            shape = (SYNTHETIC_SAMPLES, *(1 if d is None else d for d in t.shape[1:]))
            floats = t.dtype.startswith("float")
            arrays[t.name] = rng.standard_normal(shape).astype(t.dtype) if floats else np.zeros(shape, t.dtype)
        holdout = SampleSet(arrays, None, "synthetic")
        return None, holdout, {"source": "synthetic (no --calib)", "synthetic": True, "labels": False,
                               "calibration_samples": 0, "holdout_samples": len(holdout)}
    samples, found = load_samples(calib, source.inputs, image=cfg.image)
    if quantized:
        if len(samples) < 2:
            raise CalibrationError(
                f"int8 needs at least 2 samples (some to calibrate, some held out to verify); {samples.source} has {len(samples)}"
            )
        calib_set, holdout = samples.split(cfg.holdout, seed=cfg.seed)
        found = found if len(calib_set) >= 32 else [
            f"only {len(calib_set)} samples left for calibration after holding out {len(holdout)} for "
            "verification: int8 ranges from so few samples often clip real inputs; 100-500 are typical"
        ]
    else:
        calib_set, holdout = None, samples.take(slice(0, MAX_EVAL_SAMPLES))
        found = []  # float precisions use the samples only to verify
    warnings.extend(found)
    return calib_set, holdout, {
        "source": samples.source, "synthetic": False, "labels": samples.labels is not None,
        "calibration_samples": len(calib_set) if calib_set is not None else 0, "holdout_samples": len(holdout),
    }


def open_artifact(
    path: Path, fmt: str, precision: str, converter: Any, source: SourceModel, profile: DeviceProfile, threads: int,
    *, specs: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | None = None, weight_bits: int | None = None,
) -> LoadedModel:
    """Open an artifact through the runtime's own feeding code, before it has a manifest."""
    inputs, outputs = specs or converter.io_specs(path, source)
    manifest = Manifest(format=fmt, precision=precision, model_file=path.name, inputs=inputs, outputs=outputs,
                        device=profile.to_dict(), files={}, weight_bits=weight_bits)
    backend = open_backend(fmt, path, threads=threads, providers=profile.execution_providers,
                           exact_int8=weight_bits != 7)
    return LoadedModel(path.parent, manifest, backend, 0.0)


def _as_list(model: LoadedModel) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    return lambda feeds: list(model.predict(feeds).values())


def _verify(fid: Fidelity, precision: str, cfg: ConvertConfig) -> tuple[list[str], bool]:
    min_cos = cfg.min_cosine if cfg.min_cosine is not None else DEFAULT_MIN_COSINE[precision]
    min_top1 = cfg.min_top1 if cfg.min_top1 is not None else DEFAULT_MIN_TOP1[precision]
    checks = [f"cosine min {fid.cosine_min:.4f} {'≥' if fid.cosine_min >= min_cos else '<'} {min_cos}"]
    passed = fid.cosine_min >= min_cos
    if fid.top1_agreement is not None:
        ok = fid.top1_agreement >= min_top1
        checks.append(f"top-1 agreement {100 * fid.top1_agreement:.1f}% {'≥' if ok else '<'} {100 * min_top1:.0f}%")
        passed = passed and ok
    return checks, passed


def _measure_source(source: SourceModel, one: dict[str, np.ndarray], threads: int, budget: float) -> Any:
    if source.kind == "torch":
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure_latency(lambda: source.run(one), threads=threads, budget_s=budget)
        finally:
            torch.set_num_threads(saved)
    return measure_latency(lambda: source.run(one), threads=threads, budget_s=budget)


def _fit(profile: DeviceProfile, size: int, ram_delta: int | None) -> list[str]:
    problems = []
    if size > profile.storage_mb * 2**20:
        problems.append(f"the model file is {size / 2**20:.1f} MB, over {profile.name}'s {profile.storage_mb} MB storage budget")
    if ram_delta is not None and ram_delta > profile.model_ram_mb * 2**20:
        problems.append(f"loading the model added {ram_delta / 2**20:.0f} MB of RAM, over {profile.name}'s "
                        f"{profile.model_ram_mb} MB model budget")
    return problems


def _notes(profile: DeviceProfile, fmt: str, precision: str) -> list[str]:
    notes = []
    if profile.accelerator == "edgetpu":
        notes.append("this full-integer model runs on the CPU as is; run `edgetpu_compiler model.tflite` "
                     "to map its ops to the Edge TPU")
    if precision == "fp16" and not profile.fp16_speedup:
        notes.append(f"{profile.name} has no fast fp16 arithmetic: fp16 halves the file but does not speed it up")
    if precision == "int8" and not profile.int8_speedup:
        notes.append(f"{profile.name} has no fast int8 kernels: int8 shrinks the file but may not speed it up")
    if fmt == "tflite":
        notes.append("the TFLite model takes a batch of 1; the edgec runtime serves larger batches sample by sample")
    return notes
