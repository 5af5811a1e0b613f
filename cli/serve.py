"""``edgec serve`` and ``edgec verify``: serving bundles on a board, and checking one before serving it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from ..errors import InputError
from .app import err_console, handles_errors, out

commands = typer.Typer()  # serve, verify


@commands.command()
@handles_errors
def serve(
    bundles: Optional[list[Path]] = typer.Argument(None, help="Bundle folders to serve, each under its folder's name (with or instead of --config)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="runtime.toml: models, memory budget, batcher limits, port, telemetry."),
    port: Optional[int] = typer.Option(None, "--port", help="Override the config's port \\[default: 8080]."),
    host: Optional[str] = typer.Option(None, "--host", help="Override the config's host \\[default: 127.0.0.1, loopback only]."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Start even when no model can be served (a board with a [fleet] table always may: its models come from the fleet)."),
) -> None:
    """Serve bundles over HTTP: a memory-bounded model cache and a dynamic batcher per model.

    \b
    edgec serve build/rpi4 serves one bundle as model "rpi4" on 127.0.0.1:8080; a runtime.toml
    (--config) sets memory budgets, batching, telemetry and the fleet for a board.

    \b
    Endpoints: GET /health, /ready, /v1/models, /v1/stats, /metrics (Prometheus);
    POST /v1/models/NAME/predict (JSON, .npy or .npz body); the Open Inference Protocol
    under /v2 (tritonclient, KServe clients); POST /v1/models/NAME/reload with
    Authorization: Bearer ADMIN_TOKEN once admin_token is set.
    Ctrl-C or SIGTERM stops taking connections and finishes queued requests.
    \b
    Example runtime.toml:
      port = 8080
      budget_mb = 512
      admin_token = "replace-with-secrets.token_urlsafe"
      \\[batcher]
      max_batch_size = 8
      max_queue_delay_ms = 0
      \\[\\[models]]
      name = "digits"
      path = "build/rpi4"
    """
    import dataclasses
    import logging
    import signal

    from ..runtime.config import ServeConfig
    from ..runtime.server import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if config is None and not bundles:
        raise InputError("nothing to serve: name bundle folders (edgec serve build/rpi4) or a --config runtime.toml")
    cfg = ServeConfig.from_toml(config) if config is not None else ServeConfig.from_dict({"models": []})
    given = [{"name": Path(b).resolve().name, "path": str(b)} for b in bundles or ()]
    overrides: dict[str, Any] = {k: v for k, v in (("port", port), ("host", host)) if v is not None}
    if given:
        overrides["models"] = cfg.models + ServeConfig.from_dict({"models": given}).models
    cfg = dataclasses.replace(cfg, **overrides)
    waits = allow_empty or cfg.fleet is not None  # a fleet board gets its models from its broker
    if not cfg.models and not waits:
        raise InputError(f"{config} lists no [[models]] to serve: add one, or pass --allow-empty to start without")
    try:
        server = Server(cfg)
    except OSError as exc:
        raise InputError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}; pick another --port") from None
    err = err_console()
    failed = server.runtime.failed
    if cfg.models and len(failed) == len(cfg.models) and not waits:
        server.stop(drain=False)
        raise InputError(f"no model can be served: {'; '.join(f'{n}: {why}' for n, why in failed.items())} "
                         "(fix the paths, or pass --allow-empty to start without them)")
    for name, why in failed.items():
        err.print(f"[yellow]warning:[/] model {name} is not served: {why}")
    err.print(f"edgec serving {len(server.runtime.batchers)} model(s) on {server.url} (Ctrl-C to stop)")
    if server.grpc_address is not None:
        host, port = server.grpc_address
        err.print(f"the Open Inference Protocol over gRPC on {host}:{port}")
    if cfg.telemetry is not None:
        t = cfg.telemetry
        where = f"MQTT {t.broker}:{t.port}" if t.broker else "the spool only (no broker configured)"
        err.print(f"telemetry every {t.interval_s:g}s to {where} as edgec/{t.fleet}/{t.device}/, spool {t.spool}")
    # SIGTERM (systemd, docker stop) and Ctrl-C ask serve_forever to return; raised as KeyboardInterrupt
    # inside a wait on the server's thread, they would make CPython think that thread had ended.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_stop())
    try:
        server.serve_forever()
        err.print("stopping: finishing queued requests")
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C while draining interrupts it
        server.stop(drain=True)


@commands.command()
@handles_errors
def verify(
    bundle: Path = typer.Argument(..., help="Bundle folder written by `edgec convert`."),
    no_run: bool = typer.Option(False, "--no-run", help="Check the manifest and files only; do not load the model."),
    key: Optional[list[Path]] = typer.Option(None, "--key", "-k", help="Trusted public key (repeatable): the bundle "
                                                                       "must be signed by one of them."),
) -> None:
    """Check a bundle before serving it: manifest, file hashes, a test run, signature.

    \b
    The model is loaded and run on its golden inputs in a child process, so a damaged model that
    would crash its backend fails this check instead. Exit code 1 when a check fails.
    \b
    Example:
      edgec verify build/rpi4
      edgec verify build/rpi4 --key fleet-key.pub
    """
    from ..runtime.bundle.signing import TrustedKeys
    from ..runtime.bundle.checks import verify_bundle

    checks = verify_bundle(bundle, run=not no_run, trusted=TrustedKeys.from_files(key) if key else None)
    marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]-[/]"}
    for check in checks:
        out.print(f"{marks[check.ok]} {check.what}: {escape(check.detail)}")
    if any(check.ok is False for check in checks):
        raise typer.Exit(1)


