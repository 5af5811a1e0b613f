"""The ``edgec`` command line: thin commands that each call one SDK or runtime verb.

Every ``EdgecError`` becomes one line on stderr and exit code 1. Heavy frameworks load
only inside the commands that need them, so ``edgec --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ._version import __version__
from .errors import EdgecError, InputError, first_line

app = typer.Typer(
    name="edgec",
    help="Compress, convert and verify models for edge boards, and serve them there.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
devices_app = typer.Typer(help="List device profiles, or show one with `edgec devices show NAME`.", invoke_without_command=True)
app.add_typer(devices_app, name="devices")

F = TypeVar("F", bound=Callable[..., Any])
# Piped output is read by people too: do not squeeze tables into 80 columns there.
out = Console() if sys.stdout.isatty() else Console(width=120)


def _err_console() -> Console:
    """stderr for progress, on a duplicate of fd 2 so converter-output capture leaves it alone."""
    try:
        return Console(file=os.fdopen(os.dup(sys.stderr.fileno()), "w"), stderr=False)
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return Console(stderr=True)


def handles_errors(fn: F) -> F:
    """Turn EdgecError into one line and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgecError as exc:
            typer.echo(f"error: {first_line(exc, 2000)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was written", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _stepper(console: Console, quiet: bool) -> Callable[[str], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        if quiet:
            yield
            return
        start = time.perf_counter()
        try:
            with console.status(f"{name}..."):
                yield
        except BaseException:
            console.print(f"[red]✗[/] {name}")
            raise
        console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - start:.1f}s)[/]")

    return step


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgec {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """edgec: take a trained model to an edge board and keep it running there.

    \b
    Typical use:
      edgec devices                                   # which boards edgec knows
      edgec convert model.pt2 --device rpi4 --calib calib.npz --out build/rpi4
      edgec run build/rpi4 --input sample.npz --output out.npz
      edgec quickstart                                # the whole path on real digits data
    """


@devices_app.callback()
@handles_errors
def devices(ctx: typer.Context) -> None:
    """Show a table of the built-in device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    from .devices import builtin_profiles

    table = Table(title="Device profiles (--device takes a name or an alias)")
    for col in ("name", "also", "format", "precision", "int8 fast", "threads", "model RAM", "accel"):
        table.add_column(col, no_wrap=col == "name")
    for p in builtin_profiles().values():
        table.add_row(
            p.name, ", ".join(p.aliases[:2]), p.format, p.precision, "yes" if p.int8_speedup else "no",
            str(p.threads), f"{p.model_ram_mb} MB", p.accelerator,
        )
    out.print(table)
    out.print("Your own board: copy a profile from `edgec devices show NAME --toml` and pass it with --profile board.toml")


@devices_app.command("show")
@handles_errors
def devices_show(
    name: str = typer.Argument(..., help="Device name, alias, or path to a .toml profile."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON."),
    as_toml: bool = typer.Option(False, "--toml", help="Print the profile file, to copy and edit for your board."),
) -> None:
    """Show every field of one device profile."""
    from .devices import get_profile

    profile = get_profile(name)
    data = profile.to_dict()
    if as_toml:
        typer.echo(Path(profile.source).read_text(encoding="utf-8"), nl=False)
        return
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"{profile.name}: {profile.description}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    table.add_row("file", profile.source)
    out.print(table)


def _floats(text: Optional[str], what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} {text!r} must be comma-separated numbers, e.g. 0.485,0.456,0.406") from None


@app.command()
@handles_errors
def convert(
    model: str = typer.Argument(..., help="model.pt2 (torch.export), model.onnx, or pkg.module:factory."),
    device: str = typer.Option("x86-64", "--device", "-d", help="Target device or alias (see `edgec devices`)."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Your own device profile (.toml); overrides --device."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto (the device's choice), onnx or tflite."),
    precision: str = typer.Option("auto", "--precision", "-p", help="auto: try int8 recipes, then fp16, fp32, and ship the fastest within the budget. fp32, fp16 or int8: that precision, plain."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Sample inputs: .npz keyed by input name (+ optional 'labels'), or an image folder. Needed for static int8; without --eval part is held out to verify."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Held-out inputs (.npz, same layout as --calib, optional 'labels') to measure candidates on; never used to calibrate."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Budget for --precision auto: top-1 accuracy drop allowed, in points (needs labels) [default: 1.0 with labels]."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle folder to write [default: build/<device>]."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory model."),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="Input shape for factory models without --calib: 1x3x224x224 or name=1x3x224x224."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="HxW to resize calibration images to [default: the model's]."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean for images scaled to [0,1], e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std for images, e.g. 0.229,0.224,0.225."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="Budget for --precision auto: lowest per-sample output cosine to the original [default: 0.99 without labels]; a sanity floor otherwise."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Fail if classifier top-1 agreement with the original is lower (0-1) [default by precision]."),
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
      edgec convert model.pt2 --device jetson --out build/jetson
      edgec convert model.onnx --device x86 --precision int8 --calib calib.npz
      edgec convert mypkg.nets:build --weights w.safetensors --device coral --calib images/ --image-size 96x96
    """
    from .sdk.calibration import ImageOptions
    from .sdk.pipeline import ConvertConfig, convert as run_convert

    size = None
    if image_size is not None:
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
            size = (h, w)
        except ValueError:
            raise InputError(f"--image-size {image_size!r} must look like 224x224") from None
    image = ImageOptions(size=size, mean=_floats(mean, "--mean") or (0.0,), std=_floats(std, "--std") or (1.0,))
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
    )
    err = _err_console()
    result = run_convert(model, config, calib=calib, eval_data=eval_data, step=_stepper(err, quiet=False))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    if as_json:
        typer.echo(json.dumps(result.report, indent=2))
        return
    _print_summary(result)


def _print_summary(result: Any) -> None:
    from .sdk.report import human_bytes

    report = result.report
    table = Table(title=f"{report['model']['source']} → {report['device']['name']} "
                        f"({report['target']['format']} {report['target']['precision']})")
    for col in ("model", "size", "latency p50", "cosine min", "top-1 agree", "accuracy"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in report["results"]:
        fid = row.get("fidelity") or {}
        lat = row.get("latency") or {}
        table.add_row(
            row["name"] + (" ★" if row.get("shipped") else ""),
            human_bytes(row["size_bytes"]),
            f"{lat['p50_ms']:.3f} ms" if lat else "—",
            f"{fid['cosine_min']:.4f}" if fid else "—",
            f"{100 * fid['top1_agreement']:.1f}%" if fid.get("top1_agreement") is not None else "—",
            f"{100 * row['accuracy']:.1f}%" if row.get("accuracy") is not None else "—",
        )
    out.print(table)
    if report.get("search"):
        _print_candidates(report["search"])
    s = report["summary"]
    out.print(f"Shipped ★: {100 * s['size_vs_fp32']:.0f}% of fp32 size, {s['speedup_vs_fp32']:.2f}x fp32 speed "
              f"(host-measured); verification passed: {'; '.join(report['verification']['checks'])}")
    out.print(f"Bundle: {result.bundle}  (report.md has the details)")


@app.command()
@handles_errors
def analyze(
    model: str = typer.Argument(..., help="model.pt2, model.onnx, or pkg.module:factory."),
    device: str = typer.Option("x86-64", "--device", "-d", help="Target device or alias (see `edgec devices`)."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto (the device's choice), onnx or tflite."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration inputs (.npz keyed by input name, optional 'labels')."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Held-out inputs to measure on [default: a share of --calib]."),
    mode: str = typer.Option("static", "--mode", help="int8 mode to quantize each layer with: static, dynamic or weight-only."),
    calibration: str = typer.Option("minmax", "--calibration", help="Static int8 calibration: minmax, percentile or entropy."),
    smoothing: Optional[float] = typer.Option(None, "--smoothing", help="SmoothQuant strength (0-1) before quantizing (ONNX)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (.safetensors) for a pkg.module:factory model."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write [default: build/analyze-<device>]."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .converters.base import Recipe
    from .sdk.analyze import analyze as run_analyze

    recipe = Recipe("int8", mode, calibration, smoothing)
    err = _err_console()
    with Progress(TextColumn("Layers"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("layers", total=None)
        result = run_analyze(model, device=device, format=fmt, calib=calib, eval_data=eval_data, recipe=recipe,
                             out=out_dir, force=force, weights=weights, step=_stepper(err, quiet=False),
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    table = Table(title=f"Per-layer sensitivity ({result.recipe.label()}), most harmful first")
    for col in ("#", "layer", "op", "weights", "error", "cosine min"):
        table.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for i, layer in enumerate(result.layers[:top], start=1):
        table.add_row(str(i), layer.layer.display, layer.layer.op, f"{layer.layer.params:,}",
                      f"{layer.error:.2e}", f"{layer.cosine_min:.4f}")
    out.print(table)
    total = sum(x.layer.params for x in result.layers)
    out.print(f"{len(result.layers)} layers, {total:,} weights. "
              f"Written: {result.out}/sensitivity.md, sensitivity.png, sensitivity.json")


@app.command()
@handles_errors
def compress(
    model: str = typer.Argument(..., help="pkg.module:factory (with --weights), or model.pt2 (unstructured/distillation only)."),
    data: Path = typer.Option(..., "--data", help="Training data: .npz with inputs keyed by input name (or one array) and 'labels'."),
    out_path: Path = typer.Option(..., "--out", "-o", help="The compressed model (.pt2); the report goes beside it."),
    prune: float = typer.Option(0.5, "--prune", help="Share of channels (--structured) or weights to remove, in [0, 1)."),
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
    """
    from .sdk.compress import CompressConfig, compress as run_compress

    pairs = {}
    for item in feature or []:
        student_layer, sep, teacher_layer = item.partition("=")
        if not sep or not student_layer or not teacher_layer:
            raise InputError(f"--feature {item!r} must look like student_layer=teacher_layer")
        pairs[student_layer] = teacher_layer
    config = CompressConfig(prune=prune, structured=structured, scope=scope, steps=steps, epochs=epochs, lr=lr,
                            optimizer=optimizer, skip=tuple(skip or ()), target_macs=target_macs,
                            target_latency_ms=target_latency, temperature=temperature, alpha=alpha, features=pairs,
                            progressive_distill=progressive_distill, threads=threads)
    err = _err_console()
    result = run_compress(model, data=data, out=out_path, eval_data=eval_data, teachers=tuple(distill_from or ()),
                          config=config, weights=weights, teacher_weights=teacher_weights, force=force,
                          progress=lambda line: err.print(f"• {line}"))
    from .sdk.report import human_bytes

    table = Table(title=f"{model} → {out_path} (measured on the exported ONNX, this host)")
    for col in ("step", "change", "params", "MACs", "ONNX size", "speed-up b1", "speed-up b64", "accuracy"):
        table.add_column(col, justify="left" if col == "change" else "right")
    for s in result.steps:
        table.add_row(str(s.step), s.label, f"{s.params:,}", f"{s.macs:,}", human_bytes(s.onnx_bytes),
                      f"{s.speedup_b1:.2f}x", f"{s.speedup_b64:.2f}x",
                      f"{100 * s.accuracy:.2f}%" if s.accuracy is not None else "—")
    out.print(table)
    for note in result.report["notes"]:
        err.print(f"[yellow]note:[/] {note}")
    out.print(f"Wrote {result.model} and {result.model.stem}.report.md / .report.json / .png")


telemetry_app = typer.Typer(help="Watch the telemetry edgec devices publish over MQTT.", no_args_is_help=True)
app.add_typer(telemetry_app, name="telemetry")


@telemetry_app.command("watch")
@handles_errors
def telemetry_watch(
    broker: str = typer.Option(..., "--broker", "-b", help="MQTT broker host."),
    port: int = typer.Option(1883, "--port", help="Broker port (8883 is usual with TLS)."),
    fleet: str = typer.Option("+", "--fleet", help="Only this fleet (+: every fleet)."),
    username: Optional[str] = typer.Option(None, "--username", help="Broker user."),
    password: Optional[str] = typer.Option(None, "--password", help="Broker password (or EDGEC_MQTT_PASSWORD).",
                                           envvar="EDGEC_MQTT_PASSWORD"),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="CA certificate: connect with TLS and verify the broker."),
    duration: float = typer.Option(0, "--duration", help="Stop after this many seconds and print the table (0: run until Ctrl-C)."),
) -> None:
    """A live table of every device and model publishing under edgec/<fleet>/<device>/.

    Example: edgec telemetry watch --broker localhost
    """
    import threading
    import time

    from rich.live import Live

    from .runtime.telemetry import FleetView, paho_client

    mqtt = paho_client()
    view = FleetView()
    lock = threading.Lock()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe(f"edgec/{fleet}/+/+", qos=1)

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        with lock:
            view.update(message.topic, message.payload)

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(broker, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot reach MQTT broker {broker}:{port}: {exc}; check --broker and --port") from None
    client.loop_start()
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze 18 columns into 80
        console = Console(width=220)
    stop = time.monotonic() + duration if duration > 0 else None
    try:
        with Live(_fleet_table(view, broker, port), console=console, refresh_per_second=2,
                  transient=False) as live:
            while stop is None or time.monotonic() < stop:
                time.sleep(0.5)
                with lock:
                    live.update(_fleet_table(view, broker, port))
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    if not view.devices:
        _err_console().print(f"no edgec device published on {broker}:{port} under edgec/{fleet}/ in that time")


def _fleet_table(view: Any, broker: str, port: int) -> Table:
    def num(v: Any, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    table = Table(title=f"edgec devices on {broker}:{port}")
    for col in ("fleet", "device", "state", "model", "version", "p50 ms", "p95 ms", "p99 ms", "req/s", "err/s",
                "queue", "RSS MB", "CPU %", "temp °C", "spooled", "dropped", "seen", "last event"):
        table.add_column(col, justify="left" if col in ("fleet", "device", "state", "model", "version", "last event")
                         else "right")
    for r in view.rows():
        state = {"online": "[green]online[/]", "offline": "[red]offline[/]"}.get(r["state"], r["state"])
        table.add_row(r["fleet"], r["device"], state, r["model"] or "-", r.get("version") or "-",
                      num(r.get("p50"), "{:.2f}"), num(r.get("p95"), "{:.2f}"), num(r.get("p99"), "{:.2f}"),
                      num(r.get("requests_per_s")), num(r.get("errors_per_s")), num(r.get("queue_depth"), "{}"),
                      num(r["rss_mb"]), num(r["cpu_percent"]), num(r["cpu_temp_c"]), num(r["spool"], "{}"),
                      num(r["dropped"], "{}"), f"{r['seen_s_ago']:.0f}s ago", (r["last_event"] or "")[:40])
    return table


@app.command()
@handles_errors
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="runtime.toml: models, memory budget, batcher limits, port."),
    port: Optional[int] = typer.Option(None, "--port", help="Override the config's port."),
    host: Optional[str] = typer.Option(None, "--host", help="Override the config's host (default 127.0.0.1: loopback only)."),
) -> None:
    """Serve bundles over HTTP: a memory-bounded model cache and a dynamic batcher per model.

    \b
    Endpoints: GET /health, /ready, /v1/models, /v1/stats, /metrics (Prometheus);
    POST /v1/models/NAME/predict (JSON, .npy or .npz body), POST /v1/models/NAME/reload.
    Ctrl-C or SIGTERM stops taking connections and finishes queued requests.
    \b
    Example runtime.toml:
      port = 8080
      budget_mb = 512
      [batcher]
      max_batch_size = 8
      max_queue_delay_ms = 2
      [[models]]
      name = "digits"
      path = "build/rpi4"
    """
    import dataclasses
    import logging
    import signal

    from .runtime.server import ServeConfig, Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = ServeConfig.from_toml(config)
    overrides = {k: v for k, v in (("port", port), ("host", host)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    if not cfg.models:
        raise InputError(f"{config} lists no [[models]] to serve")
    try:
        server = Server(cfg)
    except OSError as exc:
        raise InputError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}; pick another --port") from None
    err = _err_console()
    for name, why in server.runtime.failed.items():
        err.print(f"[yellow]warning:[/] model {name} is not served: {why}")
    err.print(f"edgec serving {len(server.runtime.batchers)} model(s) on {server.url} (Ctrl-C to stop)")
    if cfg.telemetry is not None:
        t = cfg.telemetry
        where = f"MQTT {t.broker}:{t.port}" if t.broker else "the spool only (no broker configured)"
        err.print(f"telemetry every {t.interval_s:g}s to {where} as edgec/{t.fleet}/{t.device}/, spool {t.spool}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err.print("stopping: finishing queued requests")
    finally:
        server.stop(drain=True)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _print_candidates(search: dict[str, Any]) -> None:
    from .sdk.report import human_bytes

    table = Table(title=f"Candidates (budget: {search['budget']})")
    for col in ("candidate", "size", "speed-up", "cosine min", "top-1 drop", "result"):
        table.add_column(col, justify="left" if col in ("candidate", "result") else "right")
    for c in search["candidates"]:
        fid = c.get("fidelity") or {}
        drop = c.get("drop_points")
        table.add_row(
            c["label"] + (" ★" if c["status"] == "shipped" else ""),
            human_bytes(c["size_bytes"]) if c.get("size_bytes") else "—",
            f"{c['speedup_vs_fp32']:.2f}x" if c.get("speedup_vs_fp32") else "—",
            f"{fid['cosine_min']:.4f}" if fid else "—",
            f"{drop:.2f} pt" if drop is not None else "—",
            c["status"] + (f": {c['reason']}" if c["reason"] and c["status"] not in ("shipped", "within budget") else ""),
        )
    out.print(table)


@app.command()
@handles_errors
def run(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgec convert`."),
    input_path: Path = typer.Option(..., "--input", "-i", help=".npz with arrays keyed by input name (or one array)."),
    output_path: Optional[Path] = typer.Option(None, "--output", "-o", help="Write outputs to this .npz, keyed by output name."),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
) -> None:
    """Run a bundle on inputs from an .npz with the edgec runtime (no torch needed).

    \b
    Example:
      edgec run build/rpi4 --input sample.npz --output out.npz
    """
    import numpy as np

    from .runtime import load

    if output_path is not None and output_path.exists() and not force:
        raise InputError(f"{output_path} already exists: pass --force to replace it")
    model = load(bundle)
    if not input_path.is_file():
        raise InputError(f"input file {input_path} does not exist")
    try:
        with np.load(input_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "labels"}
    except Exception as exc:
        raise InputError(f"cannot read {input_path} as .npz ({first_line(exc, 200)})") from None
    if len(model.inputs) == 1 and len(arrays) == 1:
        arrays = {model.inputs[0].name: next(iter(arrays.values()))}
    start = time.perf_counter()
    outputs = model.predict(arrays)
    elapsed = time.perf_counter() - start
    if output_path is not None:
        tmp = output_path.with_name(f".{output_path.name}.tmp")
        output_path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
        os.replace(tmp, output_path)
    batch = next(iter(arrays.values())).shape[0]
    out.print(f"{model}: {batch} samples in {1e3 * elapsed:.1f} ms")
    for name, value in outputs.items():
        line = f"  {name}: {value.dtype}{list(value.shape)}"
        if value.ndim == 2 and value.shape[1] > 1:
            line += f"  top-1 of the first samples: {value.argmax(1)[:10].tolist()}"
        out.print(line)
    if output_path is not None:
        out.print(f"Wrote {output_path}")


@app.command()
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
    from .sdk.quickstart import rows_table, run_quickstart

    err = _err_console()
    summary = run_quickstart(workdir, force=force, step=_stepper(err, quiet=False))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out.print(rows_table(summary["rows"], f"Digits CNN on {summary['test_samples']} held-out test digits "
                                          f"(PyTorch accuracy {100 * summary['torch_test_accuracy']:.2f}%)"))
    out.print("Latency: p50 per call at batch 1 and batch 64, measured on this host (× = speed-up over fp32).")
    out.print(f"Bundles, data and reports: {workdir}/")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
