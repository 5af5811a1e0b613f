"""Commands on models: quickstart, convert, analyze, compress, qat, run. Each calls one SDK or runtime verb."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from .app import ConsoleProgress, err_console, floats, handles_errors, out

commands = typer.Typer()  # quickstart, convert, analyze, compress, qat, run


@commands.command()
@handles_errors
def convert(
    model: str = typer.Argument(..., help="model.pt2 (torch.export), model.onnx, model.keras / model.h5, a TensorFlow SavedModel folder, or pkg.module:factory."),
    device: str = typer.Option("x86-64", "--device", "-d", help="Target device or alias (see `edgec devices`)."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Your own device profile (.toml); overrides --device."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto (the device's choice), onnx or tflite. Keras models go to TFLite through TFLiteConverter, to ONNX through tf2onnx."),
    precision: str = typer.Option("auto", "--precision", "-p", help="auto: try int8 recipes, then fp16, fp32, and ship the fastest within the budget. fp32, fp16 or int8: that precision, plain."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Sample inputs: .npz keyed by input name (+ optional 'labels'), or an image folder. Needed for static int8; without --eval part is held out to verify."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Held-out inputs (.npz, same layout as --calib, optional 'labels') to measure candidates on; never used to calibrate."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Budget for --precision auto: top-1 accuracy drop allowed, in points (needs labels) \\[default: 1.0 with labels]."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle folder to write \\[default: build/<device>]."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory model."),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="Input shape for factory models without --calib: 1x3x224x224 or name=1x3x224x224."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="HxW to resize calibration images to \\[default: the model's]."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean for images scaled to \\[0,1], e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std for images, e.g. 0.229,0.224,0.225."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Budget for --precision auto: lowest per-sample output cosine to the original \\[default: 0.99 without labels]; a sanity floor otherwise."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Fail if classifier top-1 agreement with the original is lower (0-1) \\[default by precision]."),
    task: str = typer.Option("auto", "--task", help="What the model does, to verify it on that task: auto (guessed from the outputs, and said), classify, detect (YOLO-style heads), segment, embed or raw (tensor fidelity only)."),
    task_output: Optional[str] = typer.Option(None, "--task-output", help="The output holding class scores or the detection head \\[default: guessed]."),
    channel_axis: Optional[list[str]] = typer.Option(None, "--channel-axis", help="Feature axis per output for per-channel fidelity: AXIS (every output) or OUTPUT=AXIS \\[default: from each output's shape]."),
    min_task: Optional[float] = typer.Option(None, "--min-task", help="Floor of the task metric, 0-1 \\[default: detect recall 0.95, segment pixel agreement 0.95; classify and embed: none, their budget is accuracy or cosine]."),
    score_threshold: float = typer.Option(0.25, "--score-threshold", help="detect: detections below this score are dropped before matching."),
    nms_iou: float = typer.Option(0.45, "--nms-iou", help="detect: IoU above which NMS drops the lower-scored box."),
    time_budget: float = typer.Option(600, "--time-budget", min=0, help="Seconds --precision auto may search; past them no new candidate is built (fp32 stays) and the report says what was left untried. 0: no limit."),
    measure_on: Optional[str] = typer.Option(None, "--measure-on", help="An edgec serve board (http://pi-lab:8080, with [measure] enabled = true) to time fp32 and each candidate within budget on: the search ships by the board's numbers, and the report says which board measured what."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGEC_ADMIN_TOKEN", help="The --measure-on board's admin_token (or EDGEC_ADMIN_TOKEN)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout (progress stays on stderr)."),
) -> None:
    """Convert a model for one device and write a verified bundle.

    \b
    The bundle holds the model file, manifest.json (the runtime's contract), report.json
    and report.md. It is written atomically: on any error nothing is left behind.
    \b
    Examples:
      edgec convert model.pt2 --device rpi4 --calib calib.npz --out build/rpi4
      edgec convert model.pt2 --device x86 --calib calib.npz --eval test.npz --max-drop 0.5
      edgec convert encoder.pt2 --device rpi5 --calib sentences.npz --min-cosine 0.99
      edgec convert yolo.onnx --device x86 --calib images.npz --task detect --min-task 0.95
      edgec convert model.pt2 --device jetson --out build/jetson
      edgec convert model.onnx --device x86 --precision int8 --calib calib.npz
      edgec convert model.keras --device coral --calib calib.npz --eval test.npz
      edgec convert model.onnx --device rpi4 --calib calib.npz --measure-on http://pi-lab:8080 --token $TOKEN
      edgec convert saved_model_dir/ --device rpi5 --precision fp16
      edgec convert mypkg.nets:build --weights w.safetensors --device coral --calib images/ --image-size 96x96
    """
    from ..sdk.load.data import ImageOptions
    from ..sdk.pipeline import convert as run_convert
    from ..sdk.plan import ConvertConfig
    from ..sdk.verify.task import TaskOptions
    from ..sdk.report.terminal import candidates_table, conversion_summary, conversion_table

    size = None
    if image_size is not None:
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
            size = (h, w)
        except ValueError:
            raise InputError(f"--image-size {image_size!r} must look like 224x224") from None
    image = ImageOptions(size=size, mean=floats(mean, "--mean") or (0.0,), std=floats(std, "--std") or (1.0,))
    config = ConvertConfig(
        device=str(profile) if profile else device,
        format=fmt,
        precision=precision,
        out=out_dir,
        force=force,
        weights=weights,
        input_shapes=tuple(input_shape or ()),
        image=image,
        max_drop=max_drop,
        min_cosine=min_cosine,
        min_top1=min_top1,
        task=TaskOptions(task=task, output=task_output, channel_axes=tuple(channel_axis or ()), min_task=min_task,
                         score_threshold=score_threshold, iou=nms_iou),
        time_budget_s=time_budget,
        measure_on=measure_on,
        measure_token=token,
    )
    err = err_console()
    result = run_convert(model, config, calib=calib, eval_data=eval_data, progress=ConsoleProgress(err))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    if as_json:
        typer.echo(json.dumps(result.report, indent=2))
        return
    report = result.report
    out.print(conversion_table(report))
    if report.get("search"):
        out.print(candidates_table(report["search"]))
    out.print(conversion_summary(report))
    out.print(f"Bundle: {result.bundle}  (report.md has the details)")


@commands.command()
@handles_errors
def analyze(
    model: str = typer.Argument(..., help="model.pt2, model.onnx, or pkg.module:factory."),
    device: str = typer.Option("x86-64", "--device", "-d", help="Target device or alias (see `edgec devices`)."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto (the device's choice), onnx or tflite."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration inputs (.npz keyed by input name, optional 'labels')."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Held-out inputs to measure on \\[default: a share of --calib]."),
    mode: str = typer.Option("static", "--mode", help="int8 mode to quantize each layer with: static, dynamic or weight-only."),
    calibration: str = typer.Option("minmax", "--calibration", help="Static int8 calibration: minmax, percentile or entropy."),
    smoothing: Optional[float] = typer.Option(None, "--smoothing", help="SmoothQuant strength (0-1) before quantizing (ONNX)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory model."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write \\[default: build/analyze-<device>]."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    model_task: str = typer.Option("auto", "--task", help="What the model does (auto, classify, detect, segment, embed, raw): layers are ranked by the worst of output, channel and task error."),
    task_output: Optional[str] = typer.Option(None, "--task-output", help="The output holding class scores or the detection head \\[default: guessed]."),
    top: int = typer.Option(15, "--top", help="Rows to print."),
) -> None:
    """Rank layers by the output error int8 adds when each alone is quantized.

    \b
    Writes sensitivity.json, sensitivity.md and sensitivity.png. The layers at the top are
    the ones `edgec convert --precision auto` keeps in float when plain int8 misses the budget.
    \b
    Examples:
      edgec analyze model.pt2 --device rpi4 --calib calib.npz
      edgec analyze encoder.pt2 --device x86 --calib sentences.npz --mode dynamic --out build/sens
    """
    from ..converters.base import Recipe
    from ..sdk.analyze import AnalyzeConfig, analyze as run_analyze
    from ..sdk.verify.task import TaskOptions
    from ..sdk.report.terminal import sensitivity_table

    config = AnalyzeConfig(device=device, format=fmt, recipe=Recipe("int8", mode, calibration, smoothing), force=force,
                           weights=weights, task=TaskOptions(task=model_task, output=task_output))
    err = err_console()
    result = run_analyze(model, config, calib=calib, eval_data=eval_data, out=out_dir, progress=ConsoleProgress(err))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    out.print(sensitivity_table(result.layers, result.recipe.label(), top))
    total = sum(x.layer.params for x in result.layers)
    out.print(f"{len(result.layers)} layers, {total:,} weights. "
              f"Written: {result.out}/sensitivity.md, sensitivity.png, sensitivity.json")


@commands.command()
@handles_errors
def compress(
    model: str = typer.Argument(..., help="pkg.module:factory (with --weights), or model.pt2 (unstructured/distillation only)."),
    data: Path = typer.Option(..., "--data", help="Training data: .npz with inputs keyed by input name (or one array) and 'labels'."),
    out_path: Path = typer.Option(..., "--out", "-o", help="The compressed model (.pt2); the report goes beside it."),
    prune: float = typer.Option(0.5, "--prune", help="Share of channels (--structured) or weights to remove, in \\[0, 1)."),
    structured: bool = typer.Option(True, "--structured/--unstructured", help="Remove whole channels (smaller and faster once exported) or zero single weights."),
    scope: str = typer.Option("global", "--scope", help="Unstructured: rank weights globally or per layer."),
    steps: int = typer.Option(1, "--steps", help="Progressive pruning: reach the target in this many steps, fine-tuning between."),
    epochs: int = typer.Option(3, "--epochs", help="Fine-tuning epochs after each step."),
    lr: float = typer.Option(3e-3, "--lr", help="Fine-tuning learning rate (cosine-annealed)."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam, adamw or sgd."),
    skip: Optional[list[str]] = typer.Option(None, "--skip", help="A layer never to prune (module path, e.g. features.0); repeatable."),
    target_macs: Optional[float] = typer.Option(None, "--target-macs", help="Structured: keep at most this share of the MACs (0-1), instead of --prune."),
    target_latency: Optional[float] = typer.Option(None, "--target-latency-ms", help="Structured: prune until the exported ONNX takes at most this (ms, batch 1, this host)."),
    distill_from: Optional[list[str]] = typer.Option(None, "--distill-from", help="A teacher model (same forms as MODEL); repeatable for several teachers."),
    teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="Weights for a pkg.module:factory teacher (the first)."),
    temperature: float = typer.Option(4.0, "--temperature", help="Distillation temperature."),
    alpha: float = typer.Option(0.7, "--alpha", help="Weight of the distillation loss against the label loss (0-1)."),
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="Feature distillation pair student_layer=teacher_layer; repeatable."),
    progressive_distill: bool = typer.Option(False, "--progressive-distill", help="Also distill each step from the previous step's model."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory MODEL."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled held-out data: accuracy at every step."),
    threads: int = typer.Option(2, "--threads", help="Threads for the latency measurements."),
    train_device: str = typer.Option("auto", "--train-device", help="Where to train: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N. The model comes back to the CPU to be measured and exported."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
) -> None:
    """Prune and distill a PyTorch model, fine-tune it, and measure the exported result.

    \b
    Writes OUT (.pt2, ready for `edgec convert`) and beside it OUT.report.md, .report.json
    and .png (accuracy vs sparsity and vs latency). Speed-ups are measured on the exported
    ONNX with onnxruntime against the unpruned export, never estimated from MACs.
    \b
    Examples:
      edgec compress mypkg.nets:cnn --weights cnn.safetensors --data train.npz --eval test.npz \\
          --prune 0.5 --structured --distill-from mypkg.nets:cnn --teacher-weights cnn.safetensors --out small.pt2
      edgec compress model.pt2 --unstructured --prune 0.8 --steps 4 --data train.npz --out sparse.pt2
      edgec compress mypkg.nets:cnn --weights cnn.safetensors --data train.npz --out small.pt2 --train-device cuda
    """
    from ..sdk.compress import CompressConfig, compress as run_compress
    from ..sdk.report.terminal import compression_table

    pairs = {}
    for item in feature or []:
        student_layer, sep, teacher_layer = item.partition("=")
        if not sep or not student_layer or not teacher_layer:
            raise InputError(f"--feature {item!r} must look like student_layer=teacher_layer")
        pairs[student_layer] = teacher_layer
    config = CompressConfig(prune=prune, structured=structured, scope=scope, steps=steps, epochs=epochs, lr=lr,
                            optimizer=optimizer, skip=tuple(skip or ()), target_macs=target_macs,
                            target_latency_ms=target_latency, temperature=temperature, alpha=alpha, features=pairs,
                            progressive_distill=progressive_distill, threads=threads, weights=weights,
                            teacher_weights=teacher_weights, force=force, train_device=train_device)
    err = err_console()
    result = run_compress(model, config, data=data, out=out_path, eval_data=eval_data,
                          teachers=tuple(distill_from or ()), progress=ConsoleProgress(err))
    out.print(compression_table(result.steps, f"{model} → {out_path} (measured on the exported ONNX, this host)"))
    for note in result.report["notes"]:
        err.print(f"[yellow]note:[/] {note}")
    out.print(f"Wrote {result.model} and {result.model.stem}.report.md / .report.json / .png")


@commands.command()
@handles_errors
def qat(
    model: str = typer.Argument(..., help="A trained float model: pkg.module:factory (with --weights) or model.pt2."),
    data: Path = typer.Option(..., "--data", help="Training data: .npz with inputs keyed by input name (or one array) and 'labels'."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Labelled held-out data: accuracy before and after, and of each artifact through the edgec runtime."),
    out_dir: Path = typer.Option(Path("build/qat"), "--out", "-o", help="Folder for the int8 artifacts and qat.md / qat.json."),
    fmt: str = typer.Option("onnx,tflite", "--format", "-f", help="Artifacts to write: onnx (QDQ), tflite (full int8), or both."),
    epochs: int = typer.Option(3, "--epochs", help="Training epochs with fake quantization."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate (cosine-annealed)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="adam, adamw or sgd."),
    batch_size: int = typer.Option(64, "--batch-size", help="Training batch size."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory MODEL."),
    train_device: str = typer.Option("auto", "--train-device", help="Where to train: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N. The model comes back to the CPU to be measured and exported."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Train a model with int8 fake quantization, and export the int8 models it learned.

    \b
    When post-training int8 misses the accuracy budget, quantization-aware training lets the
    weights adapt to int8 and learns each activation's range. Writes model.qat.onnx (QDQ:
    onnxruntime and TensorRT run it as int8) and model.qat.tflite (full int8), both from the
    same learned scales, and qat.md / qat.json with the accuracy of each, measured.
    \b
    Example:
      edgec qat mypkg.nets:cnn --weights cnn.safetensors --data train.npz --eval test.npz --epochs 2
      edgec qat mypkg.nets:cnn --weights cnn.safetensors --data train.npz --train-device cuda
    """
    from ..sdk.quantize.aware import QATConfig, qat as run_qat

    config = QATConfig(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weights=weights, force=force,
                       formats=tuple(f.strip() for f in fmt.split(",") if f.strip()), train_device=train_device)
    result = run_qat(model, config, data=data, eval_data=eval_data, out=out_dir, progress=ConsoleProgress(err_console()))
    names = {"before": "fake-quantized, before training", "after": "fake-quantized, after training"}
    for key, value in result.accuracy.items():
        out.print(f"{names.get(key, f'{key} artifact (edgec runtime)'):<40} {100 * value:6.2f}% accuracy")
    out.print(f"Wrote {', '.join(str(p) for p in result.artifacts.values())}; report: {result.out}/qat.md")


@commands.command()
@handles_errors
def run(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgec convert`."),
    input_path: Path = typer.Option(..., "--input", "-i", help=".npz with arrays keyed by input name (or one array): the input's rank (first axis the batch) or one axis more (first axis listing whole inputs, e.g. RNN states)."),
    output_path: Optional[Path] = typer.Option(None, "--output", "-o", help="Write outputs to this .npz, keyed by output name."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
) -> None:
    """Run a bundle on inputs from an .npz with the edgec runtime (no torch needed).

    \b
    Example:
      edgec run build/rpi4 --input sample.npz --output out.npz
    """
    from ..runtime.bundle.arrays import read_npz, write_npz
    from ..runtime.bundle.model import load
    from ..runtime.bundle.probe import probe

    if output_path is not None and output_path.exists() and not force:
        raise InputError(f"{output_path} already exists: pass --force to replace it")
    probe(bundle)  # a model file that crashes or hangs its backend does so in a child process
    model = load(bundle)
    arrays = {k: v for k, v in read_npz(input_path, what=f"input file {input_path}").items() if k != "labels"}
    if len(model.inputs) == 1 and len(arrays) == 1:
        arrays = {model.inputs[0].name: next(iter(arrays.values()))}
    start = time.perf_counter()
    outputs, batch = model.predict_listed(arrays)  # a batch, or whole inputs listed along a first axis
    elapsed = time.perf_counter() - start
    if output_path is not None:
        write_npz(output_path, outputs)
    out.print(f"{model}: {batch} samples in {1e3 * elapsed:.1f} ms")
    for name, value in outputs.items():
        line = f"  {name}: {value.dtype}{list(value.shape)}"
        if value.ndim == 2 and value.shape[1] > 1:
            line += f"  top-1 of the first samples: {value.argmax(1)[:10].tolist()}"
        out.print(line)
    if output_path is not None:
        out.print(f"Wrote {output_path}")


@commands.command()
@handles_errors
def quickstart(
    workdir: Path = typer.Option(Path("edgec-quickstart"), "--workdir", help="Folder for the model, data and bundles."),
    force: bool = typer.Option(False, "--force", help="Redo the quick start in an existing --workdir."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Train a CNN on real digits, convert it for rpi4 and x86-64, and compare fp32 vs int8.

    \b
    Trains on scikit-learn's handwritten digits (shipped with the package, nothing is
    downloaded), converts the model at fp32 and int8 for both boards, runs every bundle
    through the edgec runtime on held-out test digits, and prints accuracy, size and latency.
    """
    from ..sdk.examples.quickstart import run_quickstart
    from ..sdk.report.terminal import bundles_table

    err = err_console()
    summary = run_quickstart(workdir, force=force, progress=ConsoleProgress(err))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out.print(bundles_table(summary["rows"], f"Digits CNN on {summary['test_samples']} held-out test digits "
                                          f"(PyTorch accuracy {100 * summary['torch_test_accuracy']:.2f}%)"))
    out.print("Latency: p50 per call at batch 1 and batch 64, measured on this host (× = speed-up over fp32).")
    out.print(f"Bundles, data and reports: {workdir}/")
    out.print("\nNext (in another terminal for curl):")
    for command in summary["next"]:
        out.print(f"  {_runnable(command)}", highlight=False)


def _runnable(command: str) -> str:
    """``command`` as it runs from here: ``edgec`` by the path of this one when it is not on PATH
    (``./scripts/quickstart.sh`` runs ``.venv/bin/edgec`` without activating the venv)."""
    import os
    import shutil
    import sys

    if not command.startswith("edgec ") or shutil.which("edgec"):
        return command
    here = Path(sys.executable).parent / "edgec"
    try:
        here = Path(os.path.relpath(here))
    except ValueError:  # another drive
        pass
    return f"{here} {command[len('edgec '):]}"
